"""Benchmark of the foundation: model load time (cold and warm) and perplexity throughput.

    python benchmarks/bench_foundation.py [--model smollm2-135m] [--windows 8] [--repeats 3]

Cold load converts the GGUF checkpoint to a safetensors folder in a temporary WORKBENCH_HOME
(the downloaded assets are linked in, so no download is timed); warm load reads that folder.
Throughput compares, each in its own process (so that peak memory is its own), `workbench.evaluate.perplexity` (batched windows, inference mode, no KV
cache) with a plain Hugging Face loop over the same windows (`model(ids, labels=ids)` one
window at a time under `torch.no_grad`), and checks that both give the same perplexity.
Prints a pandas table; not a test.
"""

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from workbench.cache import workbench_home
from workbench.data import evaluation_text
from workbench.evaluate import auto_batch_sizes, perplexity, token_windows
from workbench.models import load_model


def timed_load(model: str, home: Path) -> float:
    """Seconds for load_model in a fresh process (imports excluded; nothing is warm in memory)."""
    code = ("import time, torch, transformers; from workbench.models import load_model; "
            f"t = time.perf_counter(); load_model({model!r}); print(time.perf_counter() - t)")
    env = {**os.environ, "WORKBENCH_HOME": str(home), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def hf_loop_perplexity(model, windows: torch.Tensor) -> float:
    total = 0.0
    with torch.no_grad():
        for w in windows:
            ids = w.unsqueeze(0)
            total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One way of scoring (`--child workbench|hf`) in its own process, so that its peak memory is its own:
    prints best seconds, perplexity and the peak resident memory added by scoring (MB)."""
    model, tok, _ = load_model(args.model)
    windows = token_windows(tok, evaluation_text("lee"), args.seqlen, args.windows)
    if args.child == "workbench":
        run = lambda: perplexity(model, tok, evaluation_text("lee"), args.seqlen, args.batch_size,  # noqa: E731
                                 args.windows, progress=False)
    else:
        run = lambda: hf_loop_perplexity(model, windows)  # noqa: E731
    base = _peak_rss_mb()
    times = []
    for _ in range(args.repeats + 1):                       # the first is a warm-up
        t = time.perf_counter()
        ppl = run()
        times.append(time.perf_counter() - t)
    chosen = auto_batch_sizes()
    print(min(times[1:]), ppl, _peak_rss_mb() - base, next(iter(chosen.values())) if chosen else 0)


def scored(args, how: str) -> tuple[float, float, float, float]:
    cmd = [sys.executable, __file__, "--child", how, "--model", args.model, "--windows", str(args.windows),
           "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True, check=True)
    return tuple(float(v) for v in out.stdout.strip().splitlines()[-1].split())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="windows per batch, or 'auto' (measured: workbench.evaluate.window_nll)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-load", action="store_true", help="time only the perplexity throughput")
    ap.add_argument("--child", choices=["workbench", "hf"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = []

    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            (home / "assets").symlink_to(workbench_home() / "assets")
            (home / "downloads").symlink_to(workbench_home() / "downloads")
            rows.append({"measure": "load, cold (GGUF -> fp32 safetensors)", "value": timed_load(args.model, home),
                         "unit": "s"})
            warm = [timed_load(args.model, home) for _ in range(args.repeats)]
            rows.append({"measure": "load, warm (safetensors folder)", "value": min(warm), "unit": "s"})

    n_tokens = args.windows * args.seqlen
    t_wb, ppl_wb, mem_wb, chosen = scored(args, "workbench")
    t_hf, ppl_hf, mem_hf, _ = scored(args, "hf")
    if args.batch_size == "auto":
        rows.append({"measure": "batch size measured fastest ('auto'; 0: too few windows to decide)",
                     "value": chosen, "unit": "windows"})
    assert math.isclose(ppl_wb, ppl_hf, rel_tol=1e-3), (ppl_wb, ppl_hf)  # HF averages in float32
    rows += [
        {"measure": f"perplexity, workbench (batch {args.batch_size})", "value": n_tokens / t_wb, "unit": "tokens/s"},
        {"measure": "perplexity, plain HF loop (batch 1)", "value": n_tokens / t_hf, "unit": "tokens/s"},
        {"measure": "throughput ratio workbench / HF loop", "value": t_hf / t_wb, "unit": "x"},
        {"measure": f"peak memory added, workbench (batch {args.batch_size})", "value": mem_wb, "unit": "MB"},
        {"measure": "peak memory added, plain HF loop (batch 1)", "value": mem_hf, "unit": "MB"},
        {"measure": f"perplexity (both; {args.windows} x {args.seqlen} tokens of lee)", "value": ppl_wb, "unit": ""},
    ]
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
