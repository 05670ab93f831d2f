"""Where generation time goes on this CPU: one decoding step, and the IFEval-style suite by batch size.

    python benchmarks/bench_generation.py [--model smollm2-135m] [--batch-sizes 16 64] [--skip-suite]

1. Greedy decoding of a batch of 16 identical prompts for 32 and 128 new tokens (`generate` with
   the KV cache): milliseconds per step, and the share of the CPU time that torch's profiler puts
   in matrix products (`aten::mm`): a step that is mostly matrix products of a small batch is bound
   by reading the weights from memory.
2. The 124 prompts of `wb_ifeval` (chat template, up to 256 new tokens) through lm-eval at each
   `--batch-sizes`, nothing cached: the cost of instruction following in one ability-sweep point.
Not a test; the figures go into the closing note of the change that used them.
"""

import argparse
import os
import tempfile
import time

import torch


def decode_steps(model, tok, batch: int = 16) -> None:
    side, pad = tok.padding_side, tok.pad_token
    tok.padding_side, tok.pad_token = "left", pad if pad is not None else tok.eos_token
    enc = tok(["Write a short story about a cat who learns to fly, in exactly three paragraphs."] * batch,
              return_tensors="pt", padding=True)
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    tok.padding_side, tok.pad_token = side, pad              # as lm-eval expects to find it
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=4, min_new_tokens=4, **kw)               # warm-up
        for n in (32, 128):
            t = time.perf_counter()
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, **kw)
            print(f"batch {batch}, {n} new tokens: {1000 * (time.perf_counter() - t) / n:.0f} ms per step")
        with torch.profiler.profile() as prof:
            model.generate(**enc, max_new_tokens=32, min_new_tokens=32, **kw)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm")
    print(f"aten::mm: {mm / total:.0%} of the profiled CPU time")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--skip-suite", action="store_true")
    args = ap.parse_args()
    os.environ["WORKBENCH_RESULTS"] = tempfile.mkdtemp(prefix="bench-generation-")

    from workbench.abilities import evaluate_tasks, task_manager
    from workbench.models import load_model

    model, tok, _ = load_model(args.model)
    print(f"{args.model}, {torch.get_num_threads()} threads")
    decode_steps(model, tok)
    if args.skip_suite:
        return
    task_manager()                                   # index the tasks once, outside the timings
    for bs in args.batch_sizes:
        t = time.perf_counter()
        evaluate_tasks(model, tok, ["wb_ifeval"], num_fewshot=0, apply_chat_template=True, batch_size=bs,
                       cache=False, progress=False)
        print(f"wb_ifeval (124 prompts) at batch {bs}: {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
