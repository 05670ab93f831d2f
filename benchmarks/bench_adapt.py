"""Benchmark of the quantize-then-adapt methods: wall time per method on the encoder task.

    python benchmarks/bench_adapt.py [--model minilm-l6] [--steps 100] [--batch-size 16] [--threads 2]

Each method of workbench.adapt (default settings: 4-bit QLoRA/PreQuant, 3-bit AlphaTuning,
rank 8 LoRA) fine-tunes the classifier on the fixed polarity split for --steps steps; the table
gives wall time (quantization and the held-out accuracy included), steps/s, trainable
parameters and held-out accuracy. Not a test.
"""

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pandas as pd

    from workbench import adapt
    from workbench.finetune import classification_task, load_classifier

    model, tokenizer, _ = load_classifier(args.model)
    task = classification_task(tokenizer, "polarity")
    kw = dict(steps=args.steps, batch_size=args.batch_size)
    methods = {
        "full": lambda: adapt.full_finetune(model, task, **kw),
        "lora r8": lambda: adapt.lora(model, task, r=8, **kw),
        "qlora W4 r8": lambda: adapt.qlora(model, task, bits=4, r=8, **kw),
        "prequant W4 1%": lambda: adapt.prequant(model, task, bits=4, budget=0.01, **kw),
        "alphatuning W3": lambda: adapt.alphatuning(model, task, bits=3, **kw),
        "stable-rank lora r8": lambda: adapt.stable_rank_lora(model, task, r=8, **kw),
        "l1 ticket 1%": lambda: adapt.l1_ticket(model, task, ticket=0.01, **kw),
        "dsee r4 + 0.5%": lambda: adapt.dsee(model, task, r=4, budget=0.005, **kw),
    }
    rows = []
    for label, run in methods.items():
        t0 = time.perf_counter()
        _, rec = run()
        wall = time.perf_counter() - t0
        rows.append({"method": label, "wall_s": wall, "steps_per_s": args.steps / wall,
                     "trainable": rec["trainable_params"], "head": rec["head_params"],
                     "accuracy": rec["accuracy"]})
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format="{:.3g}".format))


if __name__ == "__main__":
    main()
