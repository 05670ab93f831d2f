"""Benchmark of the quantizer suite on the default model: wall time and perplexity per method and bits.

    python benchmarks/bench_quantizers.py [--bits 8 4 3 2] [--windows 8] [--calib 32] [--methods rtn gptq ...]

Quantizes every linear layer but the LM head of smollm2-135m at group 128 with each method,
timing the quantization alone (GPTQ includes its calibration forward passes), then measures
perplexity on the first `--windows` 512-token windows of the lee evaluation split. Prints a
pandas table and writes it to benchmarks/results/quantizers.csv. Not a test; nothing is cached.
AWQ, AWQ + GPTQ and GPTQ take 2 to 7 minutes a bit width at --calib 64 on 2 cores, SignRound about 13.
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from workbench.data import calibration_batch, evaluation_text
from workbench.evaluate import perplexity
from workbench.models import load_model
from workbench.quant import QuantConfig, quantize_model

METHODS = {
    "rtn": {},
    "rtn-mse": dict(mse_clip=True),
    "rtn-outliers-1%": dict(outlier_fraction=0.01),
    "bcq": dict(method="bcq", bcq_iters=3),
    "bcq-greedy": dict(method="bcq", bcq_iters=3, bcq_init="greedy"),
    "gptq": dict(method="gptq"),
    "gptq-act-order": dict(method="gptq", act_order=True),
    "gptq-act-order-static": dict(method="gptq", act_order=True, static_groups=True),   # what a GPTQ checkpoint stores
    "gptq-true-sequential": dict(method="gptq", act_order=True, static_groups=True, true_sequential=True),
    "awq": dict(method="awq"),
    "awq-gptq": dict(method="awq_gptq", act_order=True, static_groups=True),
    "signround": dict(method="signround", iters=100, batch_size=2),                   # notebook 01's 2-core budget
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--calib", type=int, default=32, help="calibration windows of 512 tokens (GPTQ)")
    args = ap.parse_args()

    model, tok, record = load_model(args.model)
    text = evaluation_text("lee")
    calib = calibration_batch(tok, "lee", n_samples=args.calib, seqlen=512, seed=0)
    t = time.perf_counter()
    base = perplexity(model, tok, text, max_windows=args.windows, progress=False)
    rows = [dict(method="unquantized", bits=None, quantize_s=0.0, eval_s=time.perf_counter() - t, perplexity=base)]
    for method in args.methods:
        for bits in args.bits:
            cfg = QuantConfig(bits=bits, group_size=args.group_size, **METHODS[method])
            t = time.perf_counter()
            qmodel, report = quantize_model(model, cfg, calibration=calib if cfg.needs_calibration else None,
                                            progress=False)
            tq = time.perf_counter() - t
            t = time.perf_counter()
            ppl = perplexity(qmodel, tok, text, max_windows=args.windows, progress=False)
            rows.append(dict(method=method, bits=bits, quantize_s=tq, eval_s=time.perf_counter() - t,
                             perplexity=ppl, rel_weight_error=report.rel_weight_error.mean()))
            print(rows[-1], flush=True)
            del qmodel
    df = pd.DataFrame(rows)
    print(f"\n{record.name}, group {args.group_size}, {args.windows} x 512 eval tokens, {args.calib} x 512 "
          f"calibration tokens, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    out = Path(__file__).parent / "results" / "quantizers.csv"
    out.parent.mkdir(exist_ok=True)
    df.to_csv(out, index=False)


if __name__ == "__main__":
    main()
