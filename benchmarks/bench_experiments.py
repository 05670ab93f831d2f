"""Wall time of one small perplexity sweep through workbench.experiments: in-process against a local
Ray (and local processes), from an empty store each time. Not a test; prints a table.

    .venv/bin/python benchmarks/bench_experiments.py [--windows 8] [--workers 2]
"""

import argparse
import sys
import tempfile
import time

from workbench import evaluate
from workbench.experiments import run_sweep


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows per point")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backends", default="inprocess,processes,ray")
    args = ap.parse_args(argv)
    points = [{"model": args.model, "spec": None if b == 16 else {"bits": b, "group_size": 128},
               "max_windows": args.windows} for b in (16, 8, 4, 3, 2)]
    rows, reference = [], None
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as store:
            t0 = time.perf_counter()
            records = run_sweep(points, evaluate.perplexity_point, "bench", defaults=evaluate.PERPLEXITY_DEFAULTS,
                                backend=backend, workers=args.workers, root=store, progress=False)
            wall = time.perf_counter() - t0
        ppl = [r["summary"]["perplexity"] for r in records]
        reference = reference or ppl
        same = max(abs(a / b - 1) for a, b in zip(ppl, reference))
        rows.append((backend, wall, sum(r["wall_s"] for r in records), same))
        if backend == "ray":
            import ray

            ray.shutdown()
    print(f"{len(points)} points x {args.windows} windows of 512 tokens, {args.model}, {args.workers} workers")
    print(f"{'backend':<11} {'wall s':>7} {'sum of point s':>15} {'max rel diff vs first':>22}")
    for b, w, s, d in rows:
        print(f"{b:<11} {w:7.1f} {s:15.1f} {d:22.1e}")


if __name__ == "__main__":
    sys.exit(main())
