"""GPTQ beside the reference implementation (IST-DASLab/gptq), in one run: wall time, peak memory, perplexity.

    git clone https://github.com/IST-DASLab/gptq /path/to/gptq      # the reference, read-only here
    python benchmarks/bench_gptq_reference.py --reference /path/to/gptq [--sides reference workbench ...]

Each side runs in its own process (so that its peak memory is its own), loads smollm2-135m,
draws the same 64 x 512 calibration tokens from the news corpus's calibration split (seed 0),
quantizes every linear layer but the LM head in place at W4, group 128, asymmetric,
act-order with static groups, times the quantization alone, and scores perplexity over the
whole held-out split. Sides:

- reference: the reference's `GPTQ` and `Quantizer` classes (imported from --reference, not
  copied), driven by the loop of its `llama_sequential` rewritten for transformers 5 (a block
  takes position embeddings now): every block's inputs captured one sample at a time, hooks
  that call `add_batch` per linear, a forward per sample, `fasterquant` per linear, a second
  forward per sample for the next block's inputs. Its `torch.cuda.synchronize()` is a no-op on CPU.
- workbench: `gptq.gptq_quantize_model` with the same settings, scales in float32 as the
  reference's (the workbench's default is float16, what its checkpoints store), Hessians from
  the full-precision block, as the reference's default. Part of the difference in time is the
  workbench's column loop on one thread, which the reference could also be given.
- workbench-true-sequential: the same with `true_sequential=True` (each linear's Hessian from
  the already-quantized linears before it, one forward per block; GPTQModel's default). It is
  compared with the reference's default order: the reference's own --true-sequential runs five
  forwards per block.

With --repeats N each side runs N times (fresh processes): the table gives the fastest time and
the smallest peak memory with the largest beside them (timings on 2 shared cores move by about
10% from run to run). Prints a pandas table and writes benchmarks/results/gptq_reference.csv.
Not a test.
"""

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from workbench.data import calibration_batch, evaluation_text
from workbench.evaluate import perplexity
from workbench.models import load_model
from workbench.quant import resolve_spec
from workbench.quant import gptq

SIDES = ("reference", "workbench", "workbench-true-sequential")


@torch.no_grad()
def reference_quantize(model: nn.Module, calib: torch.Tensor, reference: Path, bits: int, group_size: int) -> None:
    """The reference's per-layer GPTQ, in its llama_sequential order, on the model's blocks (in place)."""
    sys.path.insert(0, str(reference))
    torch.cuda.synchronize = lambda *args, **kwargs: None   # fasterquant syncs CUDA; there is none here
    from gptq import GPTQ          # noqa: E402  (the reference's modules)
    from quant import Quantizer    # noqa: E402

    blocks = model.model.layers
    hidden, extras = gptq._capture_block_inputs(model, blocks, calib, batch_size=1)   # one sample per forward
    for i, layer in enumerate(blocks):
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        workers = {}
        for name, m in linears.items():
            workers[name] = GPTQ(m)
            workers[name].quantizer = Quantizer()
            workers[name].quantizer.configure(bits, perchannel=True, sym=False, mse=False)
        handles = [m.register_forward_hook(lambda mod, inp, out, name=name: workers[name].add_batch(inp[0].data,
                                                                                                  out.data))
                   for name, m in linears.items()]
        for x, (args, kwargs) in zip(hidden, extras[i]):
            layer(x, *args, **kwargs)
        for h in handles:
            h.remove()
        with contextlib.redirect_stdout(io.StringIO()):       # it prints a time and an error per layer
            for name in linears:
                workers[name].fasterquant(percdamp=0.01, groupsize=group_size, actorder=True, static_groups=True)
                workers[name].free()
        hidden = [gptq._block_output(layer(x, *args, **kwargs)) for x, (args, kwargs) in zip(hidden, extras[i])]


def run_side(side: str, reference: Path | None, n_calib: int, bits: int, group_size: int, score: bool) -> dict:
    model, tok, record = load_model("smollm2-135m")
    calib = calibration_batch(tok, "lee", n_samples=n_calib, seqlen=512, seed=0)
    t = time.perf_counter()
    if side == "reference":
        reference_quantize(model, calib, reference, bits, group_size)
    else:
        cfg = gptq.GPTQConfig(bits=bits, group_size=group_size, act_order=True, static_groups=True,
                              scale_dtype="float32",                  # the reference keeps its scales in float32
                              true_sequential=side == "workbench-true-sequential")
        gptq.gptq_quantize_model(model, resolve_spec(model, cfg), calib, progress=False)
    quantize_s = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6      # before scoring adds its own
    ppl = perplexity(model, tok, evaluation_text("lee"), progress=False) if score else float("nan")
    return dict(side=side, quantize_s=quantize_s, peak_rss_gb=peak_gb, perplexity=ppl)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, help="a checkout of github.com/IST-DASLab/gptq (its gptq.py, quant.py)")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--calib", type=int, default=64, help="calibration windows of 512 tokens")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="processes per side; perplexity from the first")
    ap.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)   # a child process: run this side, print JSON
    ap.add_argument("--no-score", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_side(args.one, args.reference, args.calib, args.bits, args.group_size,
                                  score=not args.no_score)))
        return
    if "reference" in args.sides and not (args.reference and (args.reference / "gptq.py").is_file()
                                          and (args.reference / "quant.py").is_file()):
        sys.exit("--reference must name a checkout of github.com/IST-DASLab/gptq (a folder with gptq.py and "
                 "quant.py); or leave 'reference' out of --sides")
    rows = []
    for side in args.sides:
        runs = []
        for r in range(args.repeats):
            cmd = [sys.executable, __file__, "--one", side, "--calib", str(args.calib), "--bits", str(args.bits),
                   "--group-size", str(args.group_size)] + (["--reference", str(args.reference)] if args.reference
                                                            else []) + (["--no-score"] if r else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"side {side} failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
        times, peaks = [r["quantize_s"] for r in runs], [r["peak_rss_gb"] for r in runs]
        rows.append(dict(side=side, runs=len(runs), quantize_s=min(times), quantize_s_max=max(times),
                         peak_rss_gb=min(peaks), peak_rss_gb_max=max(peaks), perplexity=runs[0]["perplexity"],
                         threads=torch.get_num_threads()))
    df = pd.DataFrame(rows)
    if "reference" in set(df.side):
        ref = df.set_index("side").loc["reference"]
        df["time_vs_reference"] = df.quantize_s / ref.quantize_s
        df["perplexity_vs_reference"] = df.perplexity / ref.perplexity
    print(f"\nsmollm2-135m, W{args.bits} g{args.group_size} asymmetric, act-order + static groups, {args.calib} x 512 "
          f"calibration tokens, perplexity over the whole lee split, torch {torch.__version__}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    out = Path(__file__).parent / "results" / "gptq_reference.csv"
    out.parent.mkdir(exist_ok=True)
    df.to_csv(out, index=False)


if __name__ == "__main__":
    main()
