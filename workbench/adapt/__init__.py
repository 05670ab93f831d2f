"""Quantize, then adapt: parameter-efficient fine-tuning methods on a (quantized) model.

    from workbench import adapt
    from workbench.finetune import classification_task, load_classifier
    model, tokenizer, _ = load_classifier("minilm-l6")
    task = classification_task(tokenizer, "polarity")
    tuned, record = adapt.prequant(model, task, bits=4, budget=0.01)   # quantize, tune 1% outliers
    record["trainable_params"], record["accuracy"]

Every method takes a model (unchanged: it works on a copy) and a task (`n_train`,
`loss(model, idx)` and, if it can be scored, `correct(model)`: per held-out item; see workbench.finetune), trains with
`finetune.train`, and returns (adapted model, record). The record always holds method,
trainable_params (everything that trained, the task head included), head_params (the head's
share of them: a classifier head is new and must train under every method, always at
`head_lr`, default HEAD_LR, while `lr` is the rate of what the method adapts), total_params,
accuracy (held-out; None on a task without one, such as a CorpusTask), correct (each held-out
item's outcome, in order, for paired tests), losses (per step) and
time_s, plus what the method chose. `workbench.adapt.sweeps` runs a set of methods as a
resumable sweep (workbench.experiments), its records committable as a snapshot.

    unadapted          no training, optionally RTN-quantized first (the reference)
    head_only          only the task head (a linear probe: the floor)
    full_finetune      every parameter (the reference)
    lora               LoRA adapters through peft; the base stays frozen
    qlora              RTN-quantize the targets (workbench.quant), then LoRA on top
    prequant           quantize, keep the outlier weights (rows, columns or single weights, by a
                       budget) in full precision, and train only those through gradient masks
    alphatuning        binary-coding quantization (workbench.quant.bcq), train only the scales alpha
    stable_rank_lora   LoRA whose rank per module follows the stable rank of its weight, at the
                       parameter count of uniform LoRA (modules whose share rounds to 0 rank are
                       not tuned); time-aware: the adapters join after `start` head-only steps
    stable_rank_qlora  the same on an RTN-quantized model, ranks from the quantized weights
    l1_ticket          fine-tuning with an L1 penalty on W - W0 (proximal steps, so the change
                       is exactly sparse); the ticket is the largest changes, kept alone
    dominant_ticket    the same search, then only the ticket re-trained from the pre-trained weights
    dsee               sparse + low-rank update: LoRA plus a sparse delta on the weights that
                       the rank-r SVD of W explains worst; optionally prune the final weight
    earlybert          EarlyBERT (adapt/slimming.py): slimming coefficients on every head and FFN
                       neuron under L1, the early-bird ticket by mask distance, then the really
                       smaller model trained; random_structured_ticket is its same-size control
    mpop               MPOP (adapt/mpo_methods.py): truncate each target's MPO to max_bond, then
                       train only the auxiliary tensors (central tensors frozen) and the head
    opf                OPF: over-parameterize n matrices by a full-bond MPO of more factors, fine-tune
                       in full, contract back (the original architecture); static or dynamic choice
    mpobert            MPOBERT-style sharing: one central tensor per matrix type across layers,
                       layer-specific auxiliary tensors, fine-tuned in full
    mpoe               MPOE: each FFN a mixture of experts sharing central tensors, own auxiliaries,
                       a router per layer; the central's updates scaled by central_grad_scale

A budget is a share of the target weights (0 < budget < 1) or a count (an int >= 1); anything
else, or more than the targets hold, is an error that says so.
"""

from __future__ import annotations

import copy
import math
import re
import time
import warnings

import torch
from torch import nn

from workbench.finetune import train
from workbench.adapt.common import (HEAD_LR, TARGETS, _count, _freeze_all_but_head, _mask_gradients,  # noqa: F401
                                    _quantized, _record, _targets, _train_masked, _trainable)
from workbench.modules import is_task_head, linear_modules


# -----------------------------------------------------------------------------
# the methods


def unadapted(model: nn.Module, task, bits: int | None = None, group_size: int = 128,
              targets: str = TARGETS) -> tuple[nn.Module, dict]:
    """No training: the model as it is, or with its target modules RTN-quantized to `bits`: the
    reference a method has to improve on (for a causal LM on an ability task; a classifier's
    fresh head makes this chance level)."""
    t0 = time.perf_counter()
    tuned = _quantized(model, targets, bits, group_size)[0] if bits else copy.deepcopy(model)
    extra = {"bits": bits} if bits else {}
    return tuned, _record("unadapted", model, tuned, task, [], t0, 0, 0, **extra)


def head_only(model: nn.Module, task, steps: int = 100, lr: float = HEAD_LR, batch_size: int = 16,
              seed: int = 0) -> tuple[nn.Module, dict]:
    """Train only the task head of a copy of `model` (a linear probe on the frozen encoder): the
    floor every method should beat, and the head every other method trains as well."""
    t0 = time.perf_counter()
    tuned = copy.deepcopy(model)
    head = _freeze_all_but_head(tuned)
    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    return tuned, _record("head_only", model, tuned, task, losses, t0, head, head)


def full_finetune(model: nn.Module, task, steps: int = 100, lr: float = 5e-5, batch_size: int = 16,
                  seed: int = 0, head_lr: float = HEAD_LR) -> tuple[nn.Module, dict]:
    """Fine-tune every parameter of a copy of `model` (the reference)."""
    t0 = time.perf_counter()
    tuned = copy.deepcopy(model)
    head = _freeze_all_but_head(tuned)
    for p in tuned.parameters():
        p.requires_grad_(True)
    trainable = _trainable(tuned)
    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    return tuned, _record("full", model, tuned, task, losses, t0, trainable, head)


def _peft_lora(model: nn.Module, names: list[str], r: int | dict[str, int], alpha_per_rank: float = 2.0):
    """peft LoRA on the named modules of `model` (in place), the head trainable; rank r or {name: r}."""
    from peft import LoraConfig, get_peft_model

    ranks = r if isinstance(r, dict) else dict.fromkeys(names, r)
    if any(not isinstance(v, int) or v < 1 for v in ranks.values()):
        raise ValueError(f"LoRA ranks must be positive integers, got {sorted(set(ranks.values()))}")
    top = max(ranks.values())
    config = LoraConfig(r=top, lora_alpha=alpha_per_rank * top, lora_dropout=0.0, bias="none",
                        target_modules="(" + "|".join(re.escape(n) for n in ranks) + ")",   # full-match regex
                        rank_pattern={re.escape(n): k for n, k in ranks.items() if k != top},
                        alpha_pattern={re.escape(n): alpha_per_rank * k for n, k in ranks.items() if k != top},
                        modules_to_save=None)
    head = _freeze_all_but_head(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():   # peft froze the head too: let it train again
        if is_task_head(name):
            p.requires_grad_(True)
    return peft_model.get_base_model(), head


def lora(model: nn.Module, task, r: int = 8, targets: str = TARGETS, steps: int = 100, lr: float = 1e-3,
         batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR, _method: str = "lora", _extra: dict | None = None):
    """LoRA (peft) of rank r on every target module of a copy of `model`; base weights frozen."""
    t0 = time.perf_counter()
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    tuned = copy.deepcopy(model)
    names = list(_targets(tuned, targets))
    torch.manual_seed(seed)
    tuned, head = _peft_lora(tuned, names, r)
    trainable = _trainable(tuned)
    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    return tuned, _record(_method, model, tuned, task, losses, t0, trainable, head, r=r, modules=len(names),
                          **(_extra or {}))


def qlora(model: nn.Module, task, bits: int = 4, group_size: int = 128, r: int = 8, targets: str = TARGETS,
          steps: int = 100, lr: float = 1e-3, batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """QLoRA-style: RTN-quantize the target modules (workbench.quant), then LoRA on top. The
    quantized weights stay frozen and bit-identical; the record adds bits and the mean
    relative weight error of the quantization."""
    qmodel, report = _quantized(model, targets, bits, group_size)
    return lora(qmodel, task, r=r, targets=targets, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr,
                _method="qlora", _extra=dict(bits=bits, rel_weight_error=report.rel_weight_error.mean()))


def outlier_masks(weights: dict[str, torch.Tensor], budget: float | int, unit: str = "weight") -> dict[str, torch.Tensor]:
    """Which entries of each weight [out, in] are its outliers, for a total budget over all of
    them: the largest |w| ("weight"), or whole rows or columns with the largest L2 norm ("row",
    "column"), chosen globally across modules after dividing each module's scores by its own
    median, so that one wide module does not take the whole budget. Returns {name: bool mask}."""
    if unit not in ("weight", "row", "column"):
        raise ValueError(f"unit must be 'weight', 'row' or 'column', got {unit!r}")
    total = sum(w.numel() for w in weights.values())
    n = _count(budget, total, "weights")
    scores, sizes = [], []
    for w in weights.values():
        w = w.detach().float().abs()
        s = w if unit == "weight" else (w.norm(dim=1) if unit == "row" else w.norm(dim=0))
        scores.append((s / s.median().clamp(min=1e-12)).flatten())
        sizes.append(1 if unit == "weight" else (w.shape[1] if unit == "row" else w.shape[0]))
    flat = torch.cat(scores)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if unit == "weight":                                      # one weight costs one: the n largest scores
        chosen[flat.topk(n).indices] = True
    else:                                                     # greedy by score, within the budget
        cost = torch.cat([torch.full((len(s),), c) for s, c in zip(scores, sizes)])
        order = flat.argsort(descending=True)
        chosen[order[cost[order].cumsum(0) <= n]] = True
    masks, start = {}, 0
    for (name, w), s in zip(weights.items(), scores):
        pick = chosen[start:start + len(s)]
        start += len(s)
        if unit == "weight":
            masks[name] = pick.view(w.shape)
        elif unit == "row":
            masks[name] = pick[:, None].expand(w.shape).clone()
        else:
            masks[name] = pick[None, :].expand(w.shape).clone()
    return masks


def prequant(model: nn.Module, task, bits: int = 4, group_size: int = 128, budget: float | int = 0.01,
             unit: str = "weight", targets: str = TARGETS, steps: int = 100, lr: float = 5e-4,
             batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """PreQuant: quantize the target modules (RTN), restore their outliers (found in the
    pre-trained weights by `outlier_masks`, `budget` of them) to full precision, and train only
    those entries through gradient masks; every other weight stays frozen and quantized. The
    record adds bits, unit, budget_weights and the chosen weights per module."""
    t0 = time.perf_counter()
    weights = {n: m.weight for n, m in _targets(model, targets).items()}
    masks = outlier_masks(weights, budget, unit)
    tuned, report = _quantized(model, targets, bits, group_size)
    head = _freeze_all_but_head(tuned)
    modules = linear_modules(tuned)
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight[mask] = weights[name].detach()[mask].to(modules[name].weight.dtype)
    losses = _train_masked(tuned, modules, masks, task, steps, lr, batch_size, seed, head_lr)
    trainable = head + sum(int(m.sum()) for m in masks.values())
    tuned.__dict__.pop("quant_state", None)                  # the outliers left the grid: not a packed model
    chosen = {n: int(m.sum()) for n, m in masks.items()}
    return tuned, _record("prequant", model, tuned, task, losses, t0, trainable, head, bits=bits, unit=unit,
                          budget_weights=sum(chosen.values()), chosen=chosen,
                          rel_weight_error=report.rel_weight_error.mean())


def alphatuning(model: nn.Module, task, bits: int = 3, group_size: int = 128, first_scale_only: bool = False,
                offset: bool = True, bcq_iters: int = 3, targets: str = TARGETS, steps: int = 100, lr: float = 1e-3,
                batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """AlphaTuning: binary-coding quantization of the target modules (workbench.quant.bcq, `bits`
    planes), then train only the scales alpha; the binary planes (and offsets) never change. With
    `offset` (the default) the fit has a per-group offset and starts on RTN's grid, one of whose
    levels is zero (`bcq_offset`; notebook 01: at 3 planes the plain fit reaches perplexity 83,453
    where RTN gives 138, the fit with offsets 110); `offset=False` is the paper's plain BCQ. With `first_scale_only`, only
    α₁ trains: each group's largest scale (the paper's first greedy plane), its cheapest variant."""
    from workbench.quant.bcq import BCQLinear

    t0 = time.perf_counter()
    tuned, report = _quantized(model, targets, bits, group_size, method="bcq", bcq_iters=bcq_iters,
                               bcq_init="uniform", bcq_offset=offset)
    head = _freeze_all_but_head(tuned)
    layers = [m for m in tuned.modules() if isinstance(m, BCQLinear)]
    handles, per_layer = [], []
    for layer in layers:
        layer.alpha.requires_grad_(True)
        if first_scale_only:
            a = layer.alpha.detach()                                           # [q, out, G]
            mask = torch.zeros_like(a, dtype=torch.bool).scatter_(0, a.argmax(0, keepdim=True), True)
            handles += _mask_gradients([(layer.alpha, mask)])
            per_layer.append(int(mask.sum()))
        else:
            per_layer.append(layer.alpha.numel())
    trainable = head + sum(per_layer)
    try:
        losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    finally:
        for h in handles:
            h.remove()
    return tuned, _record("alphatuning", model, tuned, task, losses, t0, trainable, head, bits=bits,
                          first_scale_only=first_scale_only, offset=offset,
                          rel_weight_error=report.rel_weight_error.mean())


def lora_params(model: nn.Module, r: int = 8, targets: str = TARGETS) -> int:
    """How many parameters rank-r LoRA adapters on the target modules hold: sum of r (in + out).
    A count to give another method as its budget (PreQuant's `budget`), so that methods are
    compared at the same number of adapted parameters."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int rank, got {r!r}")
    return sum(r * sum(m.weight.shape) for m in _targets(model, targets).values())


def target_params(model: nn.Module, targets: str = TARGETS) -> int:
    """How many weights the target modules hold (what a budget share is a share of)."""
    return sum(m.weight.numel() for m in _targets(model, targets).values())


def stable_rank_ranks(model: nn.Module, r: int = 8, targets: str = TARGETS, inverse: bool = False) -> dict[str, int]:
    """LoRA ranks per target module proportional to the stable rank of its weight (or to its
    inverse), scaled so that the adapters hold as many parameters as uniform rank r: rank_i =
    round(c * srank_i) with c = sum_j r (in_j + out_j) / sum_j srank_j (in_j + out_j). Modules
    that round to 0 are left out."""
    from workbench.probes import stable_rank

    mods = _targets(model, targets)
    sr = {n: stable_rank(m.weight.detach().float()) for n, m in mods.items()}
    if inverse:
        sr = {n: 1 / s for n, s in sr.items()}
    size = {n: sum(m.weight.shape) for n, m in mods.items()}
    c = r * sum(size.values()) / sum(sr[n] * size[n] for n in mods)
    ranks = {n: min(round(c * sr[n]), min(mods[n].weight.shape)) for n in mods}
    return {n: k for n, k in ranks.items() if k > 0}


def stable_rank_lora(model: nn.Module, task, r: int = 8, targets: str = TARGETS, inverse: bool = False,
                     start: int = 0, steps: int = 100, lr: float = 1e-3, batch_size: int = 16, seed: int = 0,
                     head_lr: float = HEAD_LR, _method: str = "stable_rank_lora", _extra: dict | None = None):
    """LoRA with ranks from `stable_rank_ranks` (the same parameter count as uniform rank r, up to
    rounding); the record adds the ranks chosen. Time-aware (`start` > 0): for the first `start`
    of the `steps`, only the task head trains (at head_lr); the adapters join afterwards, so
    they start from a head that already points somewhere instead of fitting a random one. The
    calibration paper picks that moment from the training dynamics; here it is a step count to
    compare (record: start)."""
    t0 = time.perf_counter()
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < steps:
        raise ValueError(f"start must be a whole step count in [0, steps={steps}), got {start!r}")
    tuned = copy.deepcopy(model)
    ranks = stable_rank_ranks(tuned, r, targets, inverse)
    torch.manual_seed(seed)
    tuned, head = _peft_lora(tuned, list(ranks), ranks)
    trainable = _trainable(tuned)
    losses = []
    if start:
        if not head:
            raise ValueError("start > 0 warms up a task head first, and this model has none (a causal LM); use start=0")
        adapters = [p for n, p in tuned.named_parameters() if p.requires_grad and not is_task_head(n)]
        for p in adapters:
            p.requires_grad_(False)
        losses += train(tuned, task, steps=start, lr=head_lr, batch_size=batch_size, seed=seed)
        for p in adapters:
            p.requires_grad_(True)
    losses += train(tuned, task, steps=steps - start, lr=lr, batch_size=batch_size, seed=seed + start, head_lr=head_lr)
    return tuned, _record(_method, model, tuned, task, losses, t0, trainable, head, r=r, ranks=ranks,
                          modules=len(ranks), inverse=inverse, start=start, **(_extra or {}))


def stable_rank_qlora(model: nn.Module, task, bits: int = 4, group_size: int = 128, r: int = 8, targets: str = TARGETS,
                      inverse: bool = False, start: int = 0, steps: int = 100, lr: float = 1e-3, batch_size: int = 16,
                      seed: int = 0, head_lr: float = HEAD_LR):
    """Stable-rank-calibrated LoRA on a quantized model: RTN-quantize the targets as `qlora` does,
    then `stable_rank_lora` on top, its ranks from the stable ranks of the *quantized* weights
    (what the adapters correct), or of their inverse (`inverse=True`: more rank where the
    spectrum is concentrated). The record adds bits and the mean relative weight error."""
    qmodel, report = _quantized(model, targets, bits, group_size)
    return stable_rank_lora(qmodel, task, r=r, targets=targets, inverse=inverse, start=start, steps=steps, lr=lr,
                            batch_size=batch_size, seed=seed, head_lr=head_lr, _method="stable_rank_qlora",
                            _extra=dict(bits=bits, rel_weight_error=report.rel_weight_error.mean()))


def _l1_search(model: nn.Module, task, l1: float, targets: str, steps: int, lr: float, batch_size: int, seed: int,
               head_lr: float):
    """Fine-tune a copy of `model`'s target weights and head with the proximal L1 penalty of
    `l1_ticket`. Returns (tuned, head params, target modules of tuned, W0 per module, losses, trainable)."""
    if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not math.isfinite(l1) or l1 < 0:
        raise ValueError(f"l1 must be a finite number >= 0, got {l1!r} (a NaN would switch the penalty off)")
    tuned = copy.deepcopy(model)
    head = _freeze_all_but_head(tuned)
    mods = _targets(tuned, targets)
    W0 = {n: m.weight.detach().clone() for n, m in mods.items()}
    for m in mods.values():
        m.weight.requires_grad_(True)
    trainable = _trainable(tuned)

    def prox():
        for n, m in mods.items():
            d = m.weight - W0[n]
            m.weight.copy_(W0[n] + d.sign() * (d.abs() - lr * l1).clamp(min=0))

    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr,
                   after_step=prox if l1 > 0 else None)
    return tuned, head, mods, W0, losses, trainable


@torch.no_grad()
def _ticket(deltas: dict[str, torch.Tensor], n_ticket: int) -> tuple[dict[str, torch.Tensor], int, float]:
    """The `n_ticket` largest |changes| over all modules: (mask per module, entries that moved at
    all, the ticket's share of sum |change|)."""
    flat = torch.cat([d.abs().flatten() for d in deltas.values()])
    changed = int((flat > 0).sum())
    cut = flat.topk(n_ticket).values[-1]
    masks = {n: d.abs() >= cut if cut > 0 else d != 0 for n, d in deltas.items()}
    kept = sum(deltas[n].abs()[masks[n]].sum().item() for n in deltas)
    share = kept / flat.sum().item() if flat.sum() > 0 else float("nan")
    return masks, changed, share


def l1_ticket(model: nn.Module, task, l1: float = 0.5, ticket: float | int = 0.01, targets: str = TARGETS,
              steps: int = 100, lr: float = 5e-5, batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """Dominant winning ticket, found: fine-tune the target weights (and the head) with an L1 penalty
    l1 * sum |W - W0|, applied as a proximal step after each update (soft-thresholding of
    W - W0 by lr * l1), so the change is exactly sparse. Adam moves a weight by about lr per step
    whatever its gradient's scale, so l1 is in units of that step: 0.5 takes back half of a
    typical step (only weights pushed the same way step after step keep moving), l1 >= 1 freezes
    nearly everything. Then keep only the `ticket` largest
    changes (a share or a count of the target weights) and reset the rest to W0. The record
    adds changed_share (entries that moved at all), ticket_weights, ticket_change_share (the
    ticket's share of sum |W - W0|), accuracy_full (before the reset) and accuracy (the ticket
    alone). `dominant_ticket` re-trains the ticket instead, as the paper does."""
    t0 = time.perf_counter()
    n_ticket = _count(ticket, target_params(model, targets), "weights")             # a bad budget fails before training
    tuned, head, mods, W0, losses, trainable = _l1_search(model, task, l1, targets, steps, lr, batch_size, seed, head_lr)
    accuracy_full = task.accuracy(tuned)
    with torch.no_grad():
        masks, changed, share = _ticket({n: m.weight - W0[n] for n, m in mods.items()}, n_ticket)
        for n, m in mods.items():
            m.weight.copy_(torch.where(masks[n], m.weight, W0[n]))
    for p in tuned.parameters():
        p.requires_grad_(False)
    total = sum(w.numel() for w in W0.values())
    return tuned, _record("l1_ticket", model, tuned, task, losses, t0, trainable, head, l1=l1,
                          changed_share=changed / total, ticket_weights=n_ticket,
                          ticket_change_share=share, accuracy_full=accuracy_full)


def dominant_ticket(model: nn.Module, task, ticket: float | int = 0.005, l1: float = 0.5, targets: str = TARGETS,
                    find_steps: int = 100, find_lr: float = 5e-5, steps: int = 100, lr: float = 5e-4,
                    batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """Dominant winning ticket, found and re-trained: the L1 search of `l1_ticket` (`find_steps`
    at `find_lr`) picks the `ticket` largest changes of the target weights; then, from the
    pre-trained weights and the head as given (the lottery-ticket reset), only those entries and
    the head train for `steps` at `lr` (gradient masks, as PreQuant trains its outliers; every
    other weight stays bit-identical). The record's losses are the re-training's; it adds
    ticket_weights, ticket_change_share, changed_share, find_steps and find_final_loss."""
    t0 = time.perf_counter()
    total = target_params(model, targets)
    n_ticket = _count(ticket, total, "weights")                                      # a bad budget fails before training
    found, _, mods, W0, find_losses, _ = _l1_search(model, task, l1, targets, find_steps, find_lr, batch_size, seed,
                                                    head_lr)
    with torch.no_grad():
        masks, changed, share = _ticket({n: m.weight - W0[n] for n, m in mods.items()}, n_ticket)
    del found
    tuned = copy.deepcopy(model)
    head = _freeze_all_but_head(tuned)
    modules = _targets(tuned, targets)
    losses = _train_masked(tuned, modules, masks, task, steps, lr, batch_size, seed, head_lr)
    trainable = head + sum(int(m.sum()) for m in masks.values())
    return tuned, _record("dominant_ticket", model, tuned, task, losses, t0, trainable, head, l1=l1,
                          changed_share=changed / total, ticket_weights=trainable - head, ticket_change_share=share,
                          find_steps=find_steps, find_final_loss=find_losses[-1] if find_losses else float("nan"),
                          chosen={n: int(m.sum()) for n, m in masks.items()})


def dsee(model: nn.Module, task, r: int = 4, budget: float | int = 0.005, final_sparsity: float | None = None,
         targets: str = TARGETS, steps: int = 100, lr: float = 1e-3, batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """DSEE: a low-rank (LoRA, rank r, peft) plus sparse update. The sparse support, `budget`
    weights over all targets, is where the rank-r SVD of each pre-trained W explains it worst
    (largest |W - U_r S_r V_r^T|, scaled per module as in `outlier_masks`; DSEE itself takes it
    from an RPCA decomposition); those base weights train through gradient masks. With
    `final_sparsity` (a share in (0, 1)), the merged weights W + BA + S are then magnitude-pruned
    per module. The record adds r, budget_weights and, if pruned, accuracy_dense."""
    t0 = time.perf_counter()
    if final_sparsity is not None and not 0 < final_sparsity < 1:
        raise ValueError(f"final_sparsity must be a share in (0, 1), got {final_sparsity}")
    tuned = copy.deepcopy(model)
    mods = _targets(tuned, targets)
    residual = {}
    for n, m in mods.items():
        w = m.weight.detach().float()
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        residual[n] = w - (U[:, :r] * S[:r]) @ Vh[:r]
    masks = outlier_masks(residual, budget, "weight")
    torch.manual_seed(seed)
    tuned, head = _peft_lora(tuned, list(mods), r)
    handles = _mask_gradients([(mods[n].weight, masks[n]) for n in mods])   # peft kept the same tensors
    trainable = _trainable(tuned) - sum(m.weight.numel() for m in mods.values()) + sum(int(m.sum()) for m in masks.values())
    try:
        losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    finally:
        for h in handles:
            h.remove()
    extra = dict(r=r, budget_weights=sum(int(m.sum()) for m in masks.values()))
    if final_sparsity is not None:
        extra["accuracy_dense"] = task.accuracy(tuned)
        for module in tuned.modules():                    # peft's LoRA layers: fold BA into the base weight
            if hasattr(module, "merge") and hasattr(module, "base_layer"):
                module.merge()
        with torch.no_grad():
            for m in mods.values():
                w = m.weight
                k = int(final_sparsity * w.numel())
                if k:
                    cut = w.abs().flatten().kthvalue(k).values
                    w.masked_fill_(w.abs() <= cut, 0)
        extra["final_sparsity"] = final_sparsity
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned, _record("dsee", model, tuned, task, losses, t0, trainable, head, **extra)


# -----------------------------------------------------------------------------
# running and summarizing a comparison


def resolve_runs(runs: dict) -> dict:
    """`runs` ({label: (method name in this module, keyword arguments)}) with every argument of
    each method spelled out, its defaults included, as plain data: what a snapshot must record,
    so that changing a default (a learning rate, HEAD_LR) invalidates it. An unknown method or
    argument is an error that lists the known ones."""
    import inspect

    resolved = {}
    for label, (method, kwargs) in runs.items():
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} for run {label!r}; known: {', '.join(METHODS)}")
        params = [p for p in inspect.signature(METHODS[method]).parameters.values()
                  if p.name not in ("model", "task") and not p.name.startswith("_")]
        unknown = sorted(set(kwargs) - {p.name for p in params})
        if unknown:
            raise ValueError(f"run {label!r}: {method} has no argument {', '.join(unknown)}; "
                             f"it takes {', '.join(p.name for p in params)}")
        resolved[label] = (method, {p.name: kwargs.get(p.name, p.default) for p in params})
    return resolved


def _seed_list(value) -> list[dict]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def results_table(records: dict, n_params: int | None = None) -> "pd.DataFrame":
    """One row per run from {label: record} or {label: [record per seed]} (`sweeps.run_methods`
    with `seeds`): label, method, bits (16 when unquantized), trainable_params, head_params,
    adapted_params (trainable minus head: what the method itself chose; for the L1 ticket the
    weights its ticket keeps, not the whole delta it trained to find them), adapted_share (of
    `n_params`; by default of each record's total_params, the parameter count of the model the
    method was given), seeds, n (held-out items scored, over all seeds), accuracy (mean over
    seeds) with its 95% interval low..high (Wilson for one seed; over seeds the two-level
    bootstrap of `stats.seeds_bootstrap`, seeds then items), per_seed (each seed's accuracy),
    final_loss and time_s (means over seeds). Parameter counts are the first seed's."""
    import pandas as pd

    from workbench.stats import seeds_bootstrap, summarize

    rows = []
    for label, value in records.items():
        recs = _seed_list(value)
        rec = recs[0]
        adapted = rec.get("ticket_weights", rec["trainable_params"] - rec["head_params"])
        correct = [r.get("correct") for r in recs]
        acc = [r["accuracy"] for r in recs]
        if all(c for c in correct) and len(recs) > 1:
            ci = seeds_bootstrap(correct)
            n, low, high = ci["n"], ci["low"], ci["high"]
        elif all(c for c in correct):
            ci = summarize(correct[0])
            n, low, high = ci["n"], ci["low"], ci["high"]
        else:
            n, low, high = None, float("nan"), float("nan")
        scored = [a for a in acc if a is not None]
        rows.append(dict(label=label, method=rec["method"], bits=rec.get("bits", 16),
                         trainable_params=rec["trainable_params"], head_params=rec["head_params"],
                         adapted_params=adapted, adapted_share=adapted / (n_params or rec["total_params"]),
                         seeds=len(recs), n=n, accuracy=sum(scored) / len(scored) if scored else None,
                         low=low, high=high, per_seed=" ".join(f"{a:.3f}" for a in scored),
                         final_loss=sum(r["losses"][-1] if r["losses"] else float("nan") for r in recs) / len(recs),
                         time_s=sum(r["time_s"] for r in recs) / len(recs)))
    return pd.DataFrame(rows)


def paired_runs(records: dict, a: str, b: str, confidence: float = 0.95) -> dict:
    """Does run `a` score differently from run `b` on the same held-out items? From records as
    `results_table` takes them: over seeds, `stats.paired_seeds` of their per-item outcomes (a
    run without a seed, such as `unadapted`, is paired with each seed of the other); with one
    seed each, the exact McNemar test, its interval from the paired bootstrap. Returns {"a",
    "b", "seeds", "n", "a_score", "b_score", "difference" (a - b), "low", "high", "p_value", "test"}."""
    from workbench.stats import paired_outcomes, paired_seeds

    for x in (a, b):
        if x not in records:
            raise ValueError(f"no run {x!r}; runs: {', '.join(records)}")
    ra, rb = _seed_list(records[a]), _seed_list(records[b])
    if len(ra) == 1 and len(rb) > 1:
        ra = ra * len(rb)
    if len(rb) == 1 and len(ra) > 1:
        rb = rb * len(ra)
    if len(ra) != len(rb):
        raise ValueError(f"{a!r} ran over {len(ra)} seeds and {b!r} over {len(rb)}: a paired test needs the same seeds")
    ca, cb = [r.get("correct") for r in ra], [r.get("correct") for r in rb]
    if not all(ca) or not all(cb):
        raise ValueError(f"{a!r} or {b!r} has no per-item outcomes (`correct`): re-run it with this version "
                         "(records of format 1 hold only the accuracy)")
    if len(ca) > 1:
        t = paired_seeds(ca, cb, confidence=confidence)
        return {"a": a, "b": b, "seeds": t["seeds"], "n": t["n"], "a_score": t["a_score"], "b_score": t["b_score"],
                "difference": t["difference"], "low": t["low"], "high": t["high"], "p_value": t["p_value"],
                "test": f"two-level bootstrap over {t['seeds']} seeds and their items"}
    t = paired_outcomes(ca[0], cb[0], confidence=confidence)
    return {"a": a, "b": b, "seeds": 1, "n": t["n"], "a_score": sum(ca[0]) / len(ca[0]), "b_score": sum(cb[0]) / len(cb[0]),
            "difference": t["difference"], "low": t["low"], "high": t["high"], "p_value": t["p_value"], "test": t["test"]}


def comparisons(records: dict, pairs: list[tuple[str, str]], confidence: float = 0.95) -> "pd.DataFrame":
    """One row per (a, b) of `pairs`: `paired_runs` of run a against run b (difference = a - b),
    e.g. each method against its control (head only, the same adapter unquantized, the quantized
    model unadapted) or two methods at the same trainable-parameter budget."""
    import pandas as pd

    return pd.DataFrame([paired_runs(records, a, b, confidence) for a, b in pairs])


from workbench.adapt.slimming import earlybert, random_structured_ticket  # noqa: E402  (it imports adapt.common only)
from workbench.adapt.mpo_methods import mpobert, mpoe, mpop, opf  # noqa: E402  (it imports adapt.common only)

METHODS = {f.__name__: f for f in (unadapted, head_only, full_finetune, lora, qlora, prequant, alphatuning, stable_rank_lora,
                                   stable_rank_qlora, l1_ticket, dominant_ticket, dsee, earlybert, random_structured_ticket,
                                   mpop, opf, mpobert, mpoe)}
