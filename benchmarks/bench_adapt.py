"""Benchmark of the quantize-then-adapt methods: wall time per method on the encoder task.

    python benchmarks/bench_adapt.py [--model minilm-l6] [--dataset polarity] [--steps 100]
                                     [--batch-size 16] [--threads 2] [--only mpo,opf,earlybert,ticket]
                                                                            (or: make benchmark-adapt)

Each method of workbench.adapt (default settings: 4-bit QLoRA/PreQuant, 3-bit AlphaTuning,
rank 8 LoRA; EarlyBERT's search and ticket training each --steps; the MPO methods at their
defaults) fine-tunes the classifier on the fixed split of --dataset (a set of
workbench.data.CLASSIFICATION_SETS) for --steps steps; the table
gives wall time (quantization and the held-out accuracy included), steps/s, trainable
parameters and held-out accuracy. Not a test.
"""

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--dataset", default="polarity")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings: run only the methods whose label has one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pandas as pd

    from workbench import adapt
    from workbench.finetune import classification_task, load_classifier

    model, tokenizer, _ = load_classifier(args.model)
    task = classification_task(tokenizer, args.dataset)
    kw = dict(steps=args.steps, batch_size=args.batch_size)
    methods = {
        "head only": lambda: adapt.head_only(model, task, **kw),
        "full": lambda: adapt.full_finetune(model, task, **kw),
        "lora r8": lambda: adapt.lora(model, task, r=8, **kw),
        "qlora W4 r8": lambda: adapt.qlora(model, task, bits=4, r=8, **kw),
        "prequant W4 1%": lambda: adapt.prequant(model, task, bits=4, budget=0.01, **kw),
        "alphatuning W3": lambda: adapt.alphatuning(model, task, bits=3, **kw),
        "stable-rank lora r8": lambda: adapt.stable_rank_lora(model, task, r=8, **kw),
        "stable-rank lora r8, start 1/3": lambda: adapt.stable_rank_lora(model, task, r=8, start=args.steps // 3, **kw),
        "l1 ticket 1%": lambda: adapt.l1_ticket(model, task, ticket=0.01, **kw),
        "dsee r4 + 0.5%": lambda: adapt.dsee(model, task, r=4, budget=0.005, **kw),
        "earlybert 1/3 heads, 40% neurons": lambda: adapt.earlybert(model, task, search_steps=args.steps, **kw),
        "random structured ticket": lambda: adapt.random_structured_ticket(model, task, **kw),
        "mpop bond 64": lambda: adapt.mpop(model, task, max_bond=64, **kw),
        "opf static, 6 matrices": lambda: adapt.opf(model, task, choice="static", **kw),
        "opf dynamic, 6 matrices": lambda: adapt.opf(model, task, choice="dynamic", **kw),
        "mpobert shared centrals": lambda: adapt.mpobert(model, task, **kw),
        "mpoe 4 experts": lambda: adapt.mpoe(model, task, experts=4, **kw),
    }
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        methods = {label: run for label, run in methods.items() if any(k in label for k in keys)}
        if not methods:
            raise SystemExit(f"--only {args.only!r} matches no method")
    rows = []
    for label, run in methods.items():
        t0 = time.perf_counter()
        _, rec = run()
        wall = time.perf_counter() - t0
        rows.append({"method": label, "wall_s": wall, "steps_per_s": args.steps / wall,
                     "trainable": rec["trainable_params"], "head": rec["head_params"],
                     "accuracy": rec["accuracy"]})
        print(rows[-1], flush=True)
    print(f"{args.model} on {args.dataset}: {task.n_train} training rows, {args.steps} steps of {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(pd.DataFrame(rows).to_string(index=False, float_format="{:.3g}".format))


if __name__ == "__main__":
    main()
