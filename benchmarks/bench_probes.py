"""Benchmark of the whole-model probes: wall time of each on the default model (and the encoder).

    python benchmarks/bench_probes.py [--model smollm2-135m] [--calib 8] [--seqlen 512]

Times weight_stats (kurtosis, tails, grid levels, RTN error and outlier share of every matrix),
weight_channel_max, spectra (SVD of every matrix, incl. the 49152 x 576 embedding) and
activation_stats (hooks on every linear input over `--calib` x `--seqlen` calibration tokens).
Not a test; nothing is cached.
"""

import argparse
import time

import torch

from workbench.data import calibration_batch
from workbench.models import load_model
from workbench.probes import probe_time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    args = ap.parse_args()
    t = time.perf_counter()
    model, tok, record = load_model(args.model)
    print(f"load {time.perf_counter() - t:.1f} s")
    calib = calibration_batch(tok, "lee", n_samples=args.calib, seqlen=args.seqlen, seed=0)
    df = probe_time(model, calib)
    print(f"{record.name}, {args.calib} x {args.seqlen} calibration tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"total {df.seconds.sum():.1f} s")


if __name__ == "__main__":
    main()
