"""What every adaptation method shares: the target modules, the head's learning rate, freezing,
budgets, gradient masks, the record a run returns and the quantized copy a method starts from.
`workbench.adapt` (the methods) and `workbench.adapt.slimming` import from here, never the reverse."""

from __future__ import annotations

import math
import re
import time

import torch
from torch import nn

from workbench.finetune import train
from workbench.modules import HEAD, is_task_head, linear_modules, select_modules

# Every attention and FFN projection of BERT-style encoders and Llama-style decoders; never the
# pooler, the embeddings or a task head.
TARGETS = (r"(encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
           r"intermediate\.dense|output\.dense)|layers\.\d+\.(self_attn|mlp)\.\w+_proj)$")
HEAD_LR = 5e-3   # a fresh task head trains at this rate under every method (its own lr is for what it adapts)


def _targets(model: nn.Module, pattern: str) -> dict[str, nn.Linear]:
    """The linear modules matching `pattern`, the head excluded; an error if none."""
    candidates = {n: m for n, m in linear_modules(model).items() if not re.search(HEAD, n)}
    return {n: candidates[n] for n in select_modules(model, pattern, candidates)}


def _freeze_all_but_head(model: nn.Module) -> int:
    """Freeze every parameter except the task head's; return the head's parameter count."""
    head = 0
    for name, p in model.named_parameters():
        keep = is_task_head(name)
        p.requires_grad_(keep)
        head += p.numel() if keep else 0
    return head


def _count(budget: float | int, total: int, what: str) -> int:
    """A budget (share in (0, 1) or count >= 1) as a count of `total` items; clear errors."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise ValueError(f"budget must be a share in (0, 1) or a whole count, got {budget!r}")
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}: give a share of the {total:,} {what} "
                         "(e.g. 0.01) or a count")
    if isinstance(budget, float) and budget < 1:
        return max(1, round(budget * total))
    if budget != int(budget):
        raise ValueError(f"a budget >= 1 counts {what} and must be whole, got {budget}")
    if budget > total:
        raise ValueError(f"budget {int(budget):,} is larger than the {total:,} {what} of the target modules; "
                         "lower it or widen the target pattern")
    return int(budget)


def _mask_gradients(params_masks: list[tuple[nn.Parameter, torch.Tensor]]) -> list:
    """Make each parameter train only where its mask is True (gradient hooks); return the handles."""
    handles = []
    for p, mask in params_masks:
        p.requires_grad_(True)
        m = mask.to(p.dtype)
        handles.append(p.register_hook(lambda g, m=m: g * m))
    return handles


def _train_masked(tuned: nn.Module, modules: dict[str, nn.Module], masks: dict[str, torch.Tensor], task, steps: int,
                  lr: float, batch_size: int, seed: int, head_lr: float) -> list[float]:
    """Train the head and, of each module's weight, only the entries its mask selects (gradient
    masks: every other entry stays bit-identical); then freeze everything. Returns the losses."""
    handles = _mask_gradients([(modules[n].weight, m) for n, m in masks.items() if m.any()])
    try:
        losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    finally:
        for h in handles:
            h.remove()
    for p in tuned.parameters():
        p.requires_grad_(False)
    return losses


def _record(method: str, model: nn.Module, tuned: nn.Module, task, losses: list[float], t0: float, trainable: int,
            head: int, **extra) -> dict:
    """The record of a run: `model` is the one the method was given (total_params counts it, not
    the adapters or a BCQ model's packed planes), `tuned` the adapted one that is scored."""
    correct = task.correct(tuned) if hasattr(task, "correct") else None      # per held-out item, in order
    return dict(method=method, trainable_params=trainable, head_params=head,
                total_params=sum(p.numel() for p in model.parameters()),
                accuracy=sum(correct) / len(correct) if correct else None, correct=correct, losses=losses,
                time_s=time.perf_counter() - t0, **extra)


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _quantized(model: nn.Module, targets: str, bits: int, group_size: int, method: str = "rtn", **kw):
    """A quantized copy of `model`: the target modules only (workbench.quant), the head never."""
    from workbench.quant import QuantConfig, quantize_model

    _targets(model, targets)                                  # a clear error if the pattern matches nothing
    cfg = QuantConfig(bits=bits, group_size=group_size, method=method, **kw)
    return quantize_model(model, {targets: cfg}, skip=HEAD, progress=False)
