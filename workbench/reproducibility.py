"""What "the same result" means when a committed number is recomputed on another machine.

Every committed number (the snapshots in data/snapshots, the tables in data/results) was
computed on one x86-64 CPU with the AVX2 kernels that `workbench.numerics` selects everywhere,
so on another x86-64 CPU it is normally recomputed bit for bit. Where it is not (another
architecture, another thread count, `WORKBENCH_NUMERICS=native`), float32 sums are taken in
another order and the last bits move (float32 epsilon is 1.2e-7). How far that carries depends
on the quantity, so each kind has one rule, written here once and used by every test that
checks a committed number:

| quantity                                           | "the same" means                          |
|----------------------------------------------------|-------------------------------------------|
| a fixed model's evaluation (perplexity, NLL, loss) | relative difference <= RTOL_EVAL          |
| a fixed model's per-item outcomes (correct or not) | equal on all items but ITEM_FLIPS(n), listed |
| a training run's losses                            | the first EARLY_STEPS within RTOL_EARLY   |
|                                                    | (the chaos that follows is not compared)  |
| a trained model's metric (accuracy over n items)   | within TRAINED_FLIPS(n) items             |
| a trained model's evaluation (perplexity)          | relative difference <= RTOL_TRAINED       |

The tolerances sit well above the spread measured with `make numerics-spread`
(tools/numerics_spread.py, data/results/numerics_spread.csv: the snapshot samples with the
default kernels, with one thread, and with an AVX-512 machine's own kernels) and well below what
any committed conclusion depends on: a committed number moved by 1% fails every rule
(tests/test_reproducibility.py). GPTQ, whose error feedback turns last-bit differences into
other rounding decisions (3% in perplexity with AVX-512 kernels), is held by the pinned kernels
only; notebook 01 shows its spread and nbval compares its claims, not its digits.

Set $WORKBENCH_REPRO_LOG to a file to have every check append what it measured (JSON lines).
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

# Largest differences measured against the committed snapshots (make numerics-spread): with the
# AVX2 kernels and 2 threads none at all; with 1 thread, or with an AVX-512 CPU's own kernels:
RTOL_EVAL = 1e-4       # fixed weights: AVX-512 1.7e-7, one thread 0
RTOL_EARLY = 1e-3      # the first EARLY_STEPS training losses: AVX-512 1.9e-4, one thread 3e-6
EARLY_STEPS = 5        # steps compared before last-bit differences grow (AVX-512: 2e-3 by step 20)
RTOL_TRAINED = 5e-3    # a trained model's perplexity: AVX-512 2.4e-6 after 10 LoRA steps
ITEM_FLIP_FRACTION = 0.02     # a fixed model's greedy answers: none flipped; 1 in 50 allowed
TRAINED_FLIP_FRACTION = 0.05  # a trained model's predictions: none flipped; 1 in 20 allowed


class NotReproduced(AssertionError):
    """A fresh computation does not agree with the committed number under the rule for its kind."""


def item_flips(n: int) -> int:
    """How many of a fixed model's n per-item outcomes may differ on another CPU."""
    return int(ITEM_FLIP_FRACTION * n)


def trained_flips(n: int) -> int:
    """How many of a trained model's n per-item outcomes may differ (at least one)."""
    return max(1, math.ceil(TRAINED_FLIP_FRACTION * n))


def _log(kind: str, what: str, **measured) -> None:
    path = os.environ.get("WORKBENCH_REPRO_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "what": what, **measured}) + "\n")


def _rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(b), 1e-30)


def assert_close(fresh: Sequence[float] | float, committed: Sequence[float] | float, rtol: float,
                 what: str, kind: str = "eval") -> float:
    """Raise NotReproduced unless every fresh value is within `rtol` (relative) of the committed one.

    NaN equals NaN; lengths must match. Returns the largest relative difference (also logged)."""
    fresh = [float(x) for x in (fresh if isinstance(fresh, (list, tuple)) else [fresh])]
    committed = [float(x) for x in (committed if isinstance(committed, (list, tuple)) else [committed])]
    if len(fresh) != len(committed):
        raise NotReproduced(f"{what}: {len(fresh)} fresh values for {len(committed)} committed ones")
    rel = [_rel(a, b) for a, b in zip(fresh, committed)]
    worst = max(rel, default=0.0)
    _log(kind, what, max_rel=worst, n=len(rel), rtol=rtol, rel=rel[:20])
    bad = [(i, a, b, r) for i, (a, b, r) in enumerate(zip(fresh, committed, rel)) if not r <= rtol]
    if bad:
        lines = "\n".join(f"  [{i}] fresh {a!r} committed {b!r} (rel {r:.2e})" for i, a, b, r in bad[:10])
        raise NotReproduced(f"{what}: {len(bad)} of {len(rel)} values differ by more than rel {rtol:g}:\n{lines}")
    return worst


def assert_eval_reproduces(fresh, committed, what: str) -> float:
    """A fixed model's evaluation (perplexity, NLL, a loss): relative difference <= RTOL_EVAL."""
    return assert_close(fresh, committed, RTOL_EVAL, what, "eval")


def assert_items_agree(fresh: Mapping, committed: Mapping, what: str, trained: bool = False,
                       rounded_at_run_time: bool = False) -> int:
    """Per-item outcomes (item id -> score) of one model: equal on all but the allowed flips.

    The same items must be present. A fixed model may flip `item_flips(n)` items; a trained one,
    or one whose activations or KV cache are rounded at run time (a last-bit difference between a
    batched and a one-by-one run can move a value across a rounding boundary, and greedy
    generation then follows it), `trained_flips(n)`; when more differ, every disagreeing item is
    listed. Returns the count."""
    if set(fresh) != set(committed):
        raise NotReproduced(f"{what}: items differ: only fresh {sorted(set(fresh) - set(committed))[:10]}, "
                            f"only committed {sorted(set(committed) - set(fresh))[:10]}")
    differ = sorted(k for k in committed if float(fresh[k]) != float(committed[k]))
    loose = trained or rounded_at_run_time
    allowed = (trained_flips if loose else item_flips)(len(committed))
    kind = "items_trained" if trained else "items_runtime" if rounded_at_run_time else "items"
    _log(kind, what, flips=len(differ), n=len(committed), allowed=allowed)
    if len(differ) > allowed:
        lines = "\n".join(f"  {k}: fresh {fresh[k]!r} committed {committed[k]!r}" for k in differ)
        raise NotReproduced(f"{what}: {len(differ)} of {len(committed)} items differ "
                            f"({allowed} allowed):\n{lines}")
    return len(differ)


def assert_metric_reproduces(fresh: float, committed: float, n: int, what: str, trained: bool = True) -> int:
    """An accuracy over n items: within `trained_flips(n)` items of the committed one for a
    trained model, `item_flips(n)` for a fixed one. Returns how many items apart they are."""
    items = abs(float(fresh) - float(committed)) * n
    allowed = (trained_flips if trained else item_flips)(n)
    _log("metric_trained" if trained else "metric", what, items=items, n=n, allowed=allowed)
    if not items <= allowed + 1e-6:
        raise NotReproduced(f"{what}: accuracy {fresh!r} against committed {committed!r} over {n} items: "
                            f"{items:.1f} items apart, {allowed} allowed")
    return round(items)


def assert_training_reproduces(fresh_losses: Sequence[float], committed_losses: Sequence[float],
                               what: str) -> float:
    """A training run: as many steps, and the first EARLY_STEPS losses within RTOL_EARLY.

    Later losses are logged (their spread is evidence) but not compared: after a few steps the
    last-bit differences of another CPU grow like any chaotic trajectory's."""
    if len(fresh_losses) != len(committed_losses):
        raise NotReproduced(f"{what}: {len(fresh_losses)} training steps, {len(committed_losses)} committed")
    later = [_rel(float(a), float(b)) for a, b in zip(fresh_losses[EARLY_STEPS:], committed_losses[EARLY_STEPS:])]
    _log("train_late", what, max_rel=max(later, default=0.0), n=len(later), rel=later)
    return assert_close(list(fresh_losses[:EARLY_STEPS]), list(committed_losses[:EARLY_STEPS]),
                        RTOL_EARLY, f"{what}, first {EARLY_STEPS} losses", "train_early")
