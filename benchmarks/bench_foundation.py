"""Benchmark of the foundation: model load time (cold and warm) and perplexity throughput.

    python benchmarks/bench_foundation.py [--model smollm2-135m] [--windows 8] [--repeats 3]

Cold load converts the GGUF checkpoint to a safetensors folder in a temporary WORKBENCH_HOME
(the downloaded assets are linked in, so no download is timed); warm load reads that folder.
Throughput compares `workbench.evaluate.perplexity` (batched windows, inference mode, no KV
cache) with a plain Hugging Face loop over the same windows (`model(ids, labels=ids)` one
window at a time under `torch.no_grad`), and checks that both give the same perplexity.
Prints a pandas table; not a test.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from workbench.cache import workbench_home
from workbench.data import evaluation_text
from workbench.evaluate import perplexity, token_windows
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "assets").symlink_to(workbench_home() / "assets")
        (home / "downloads").symlink_to(workbench_home() / "downloads")
        rows.append({"measure": "load, cold (GGUF -> fp32 safetensors)", "value": timed_load(args.model, home), "unit": "s"})
        warm = [timed_load(args.model, home) for _ in range(args.repeats)]
        rows.append({"measure": "load, warm (safetensors folder)", "value": min(warm), "unit": "s"})

    model, tok, _ = load_model(args.model)
    windows = token_windows(tok, evaluation_text("lee"), args.seqlen, args.windows)
    n_tokens = windows.numel()
    text = evaluation_text("lee")
    perplexity(model, tok, text, args.seqlen, args.batch_size, 1, progress=False)  # warm-up
    t_wb, t_hf = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ppl_wb = perplexity(model, tok, text, args.seqlen, args.batch_size, args.windows, progress=False)
        t_wb.append(time.perf_counter() - t)
        t = time.perf_counter()
        ppl_hf = hf_loop_perplexity(model, windows)
        t_hf.append(time.perf_counter() - t)
    assert math.isclose(ppl_wb, ppl_hf, rel_tol=1e-3), (ppl_wb, ppl_hf)  # HF averages in float32
    tps_wb, tps_hf = n_tokens / min(t_wb), n_tokens / min(t_hf)
    rows += [
        {"measure": f"perplexity, workbench (batch {args.batch_size})", "value": tps_wb, "unit": "tokens/s"},
        {"measure": "perplexity, plain HF loop (batch 1)", "value": tps_hf, "unit": "tokens/s"},
        {"measure": "throughput ratio workbench / HF loop", "value": tps_wb / tps_hf, "unit": "x"},
        {"measure": f"perplexity (both; {args.windows} x {args.seqlen} tokens of lee)", "value": ppl_wb, "unit": ""},
    ]
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
