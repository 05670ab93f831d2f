"""Benchmark of ability evaluation: items/s for each ability, and the wall time of a whole bits sweep.

    python benchmarks/bench_abilities.py [--model smollm2-135m] [--limit 16] [--batch-size 16]
                                         [--max-gen-toks 128] [--sweep]

For each ability it scores the default suite (`workbench.abilities.SUITES`; ICL at 5 shots) on
`--limit` items per task through lm-eval with the model object, nothing cached, and prints
items/s. With --sweep it also times `ability_sweep` over the bits sweep of notebook 04 (base,
RTN and GPTQ at 8/4/3/2 bits, ICL at 0 and 5 shots) into an empty temporary results cache.
Not a test.
"""

import argparse
import os
import tempfile
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-gen-toks", type=int, default=128)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    os.environ["WORKBENCH_RESULTS"] = tempfile.mkdtemp(prefix="bench-abilities-")

    import pandas as pd

    from workbench.abilities import SUITES, ability_sweep, bits_sweep_specs, evaluate_tasks, task_manager
    from workbench.models import load_model

    model, tok, record = load_model(args.model)
    task_manager()  # index the tasks once, outside the timings
    rows = []
    for ability, tasks in SUITES.items():
        kw = {"num_fewshot": 5} if ability == "icl" else {}
        if ability == "if":
            kw["apply_chat_template"] = bool(getattr(tok, "chat_template", None))
        t0 = time.perf_counter()
        res = evaluate_tasks(model, tok, tasks, limit=args.limit, batch_size=args.batch_size,
                             max_gen_toks=args.max_gen_toks, cache=False, **kw)
        dt = time.perf_counter() - t0
        n = res.scores[res.scores.primary]["n"].sum()
        rows.append({"ability": ability, "tasks": len(tasks), "items": int(n), "seconds": dt,
                     "items_per_s": n / dt})
        print(rows[-1], flush=True)
    print(f"{record.name}, limit {args.limit}, batch {args.batch_size}, max_gen_toks {args.max_gen_toks}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.sweep:
        t0 = time.perf_counter()
        ability_sweep(model, tok, record, bits_sweep_specs(), shots=(0, 5), limit=args.limit,
                      calibration={"corpus": "lee", "n_samples": 8, "seqlen": 256, "seed": 0},
                      batch_size=args.batch_size, max_gen_toks=args.max_gen_toks, progress=False)
        print(f"whole sweep (9 models x 3 abilities): {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
