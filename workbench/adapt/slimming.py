"""EarlyBERT (Chen et al., ACL 2021): a structured early-bird lottery ticket of a BERT encoder.

    from workbench.adapt import slimming as eb
    tuned, record = eb.earlybert(model, task, head_ratio=1/3, neuron_ratio=0.4, search_steps=100, steps=100)
    record["params_before"], record["params_after"], record["early_bird_step"], record["accuracy"]
    control, rec = eb.random_structured_ticket(model, task, head_ratio=1/3, neuron_ratio=0.4, steps=100)

Three stages. Search: a copy of the model trains (every weight, and its head) with a learnable
slimming coefficient on each attention head and each FFN neuron (`add_slimming`: the head's
context output and the neuron's activation are multiplied by it, starting at 1), plus an L1 penalty
on the coefficients, so that the ones a layer can do without shrink towards 0. Ticket drawing: every
`checkpoint_every` steps the mask keeps, per layer, all but the `head_ratio` share of heads and the
`neuron_ratio` share of neurons with the smallest |coefficient| (`ticket_masks`); the early bird is
the first checkpoint whose mask differs from the previous one by a normalized Hamming distance
below `eps` (`early_bird`). Efficient training: the pre-trained model, cut to that ticket
(`prune_structured`: really smaller weight matrices, not masks), is fine-tuned in full with its
head. `random_structured_ticket` is the control: a ticket of the same size drawn at random.

Works on BERT-style encoders whose blocks are `encoder.layer.N` with `attention.self` (query, key,
value), `attention.output.dense`, `intermediate` (dense, activation) and `output.dense`: BERT,
MiniLM, RoBERTa and the like under transformers' AutoModelForSequenceClassification.
"""

from __future__ import annotations

import copy
import math
import re
import time

import pandas as pd
import torch
from torch import nn

from workbench.adapt.common import HEAD_LR, _freeze_all_but_head, _record
from workbench.finetune import train

_LAYER = r"(^|\.)encoder\.layer\.\d+$"     # a transformer block of a BERT-style encoder, by module name
_TAG = "_earlybert_slimming"               # attribute marking the hooks add_slimming puts on a model


# -----------------------------------------------------------------------------
# the blocks and their sizes


def _bert_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a BERT-style encoder, in order; an error naming what is missing."""
    layers = [m for n, m in model.named_modules() if re.search(_LAYER, n)]
    parts = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    ok = layers and all(_has(layer, p) for layer in layers for p in parts)
    if not ok:
        raise ValueError(f"EarlyBERT needs a BERT-style encoder (blocks encoder.layer.N with {', '.join(parts)}); "
                         f"{type(model).__name__} has {len(layers)} such blocks")
    return layers


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _sizes(model: nn.Module) -> tuple[int, int, int, int]:
    """(layers, heads per layer, head_dim, FFN neurons per layer); an error if the layers differ
    (a model pruned already: masks and coefficients are rectangular [layers, ...])."""
    layers = _bert_layers(model)
    head_dim = layers[0].attention.self.attention_head_size
    heads = {layer.attention.self.query.out_features // head_dim for layer in layers}
    ffn = {layer.intermediate.dense.out_features for layer in layers}
    if len(heads) > 1 or len(ffn) > 1:
        raise ValueError(f"the layers differ in size (heads {sorted(heads)}, FFN neurons {sorted(ffn)}): this "
                         "model was pruned already; search and prune the unpruned model")
    return len(layers), heads.pop(), head_dim, ffn.pop()


def _has_slimming(model: nn.Module) -> bool:
    """Whether `add_slimming` hooks are on `model` (they would scale a copy of it too)."""
    return any(getattr(hook, _TAG, False) for m in model.modules()
               for hook in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()))


def _n_pruned(ratio: float, n: int, what: str, per: str) -> int:
    """How many of a layer's `n` units a pruning `ratio` in [0, 1) removes: round(ratio * n), half
    up; an error if the ratio is not a share or would remove every unit of a layer."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 <= ratio < 1:
        raise ValueError(f"{what} must be a share in [0, 1) (the share pruned in each layer), got {ratio!r}")
    k = math.floor(ratio * n + 0.5)
    if k >= n:
        raise ValueError(f"{what}={ratio} would prune all {n} {per} of each layer; lower it below {(n - 0.5) / n:.3f}")
    return k


# -----------------------------------------------------------------------------
# slimming coefficients


class SlimmingHandle:
    """The hooks `add_slimming` put on a model; `remove()` takes them all off again."""

    def __init__(self, handles: list):
        self.handles = handles          # torch RemovableHandle per hook, two per layer

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def add_slimming(model: nn.Module) -> dict:
    """Put learnable slimming coefficients on a BERT-style encoder, in place, through forward
    hooks: one per attention head per layer, multiplying that head's slice of the context layer
    [batch, seq, heads * head_dim] as it enters `attention.output.dense` (a forward pre-hook), and
    one per FFN neuron per layer, multiplying the output of `intermediate` [batch, seq, ffn] (its
    activation, a forward hook). All start at 1, so the model computes exactly what it did. The
    coefficients are not parameters of the model (its state dict is unchanged): train them with
    their own optimizer. Returns {"heads": Parameter [layers, heads], "neurons": Parameter
    [layers, ffn], "handle": SlimmingHandle}; `handle.remove()` restores the plain model."""
    if _has_slimming(model):
        raise ValueError("this model has slimming hooks already: remove them (handle.remove()) before adding new ones")
    n_layers, n_heads, head_dim, n_ffn = _sizes(model)
    ref = _bert_layers(model)[0].intermediate.dense.weight
    heads = nn.Parameter(torch.ones(n_layers, n_heads, dtype=ref.dtype, device=ref.device))    # [layers, heads]
    neurons = nn.Parameter(torch.ones(n_layers, n_ffn, dtype=ref.dtype, device=ref.device))    # [layers, ffn]
    handles = []
    for i, layer in enumerate(_bert_layers(model)):

        def scale_heads(module, args, i=i):
            context = args[0]                                             # [batch, seq, heads * head_dim]
            c = heads[i].repeat_interleave(head_dim).to(context.dtype)    # [heads * head_dim]
            return (context * c,) + tuple(args[1:])

        def scale_neurons(module, args, output, i=i):
            return output * neurons[i].to(output.dtype)                   # [batch, seq, ffn]

        setattr(scale_heads, _TAG, True)
        setattr(scale_neurons, _TAG, True)
        handles.append(layer.attention.output.dense.register_forward_pre_hook(scale_heads))
        handles.append(layer.intermediate.register_forward_hook(scale_neurons))
    return {"heads": heads, "neurons": neurons, "handle": SlimmingHandle(handles)}


@torch.no_grad()
def ticket_masks(coefficients: dict, head_ratio: float, neuron_ratio: float) -> dict[str, torch.Tensor]:
    """The ticket the coefficients draw: in each layer, the `head_ratio` share of heads and the
    `neuron_ratio` share of neurons with the smallest |coefficient| are pruned (round(ratio * n),
    half up; ties go to the lower index). Returns {"heads": bool [layers, heads], "neurons": bool
    [layers, ffn]}, True where a unit is kept."""
    masks = {}
    for key, ratio, what, per in (("heads", head_ratio, "head_ratio", "heads"),
                                  ("neurons", neuron_ratio, "neuron_ratio", "FFN neurons")):
        c = coefficients[key].detach().abs()                                  # [layers, units]
        k = _n_pruned(ratio, c.shape[1], what, per)
        weakest = c.argsort(dim=1, stable=True)[:, :k]                        # [layers, k]
        masks[key] = torch.ones_like(c, dtype=torch.bool).scatter_(1, weakest, False)
    return masks


def random_masks(model: nn.Module, head_ratio: float, neuron_ratio: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ticket of the same size `ticket_masks` draws: per layer, the same number of heads
    and neurons pruned, which ones chosen uniformly (seeded). {"heads", "neurons"} bool masks."""
    n_layers, n_heads, _, n_ffn = _sizes(model)
    g = torch.Generator().manual_seed(seed)
    scores = {"heads": torch.rand(n_layers, n_heads, generator=g), "neurons": torch.rand(n_layers, n_ffn, generator=g)}
    return ticket_masks(scores, head_ratio, neuron_ratio)


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalized Hamming distance between two masks of the same shape: the share of entries where
    they differ (0 identical, 1 complementary)."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.bool() != b.bool()).float().mean().item()


def early_bird(distances: list[float], eps: float = 0.1, patience: int = 1) -> int | None:
    """Index of the early-bird checkpoint: the first at which the mask distance to the previous
    checkpoint has been below `eps` for `patience` checkpoints in a row (NaN, as for the first
    checkpoint, which has no previous one, never counts as below). None if there is none yet."""
    if not eps > 0 or isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"eps must be positive and patience a whole count >= 1, got eps={eps!r}, patience={patience!r}")
    run = 0
    for i, d in enumerate(distances):
        run = run + 1 if d < eps else 0
        if run >= patience:
            return i
    return None


# -----------------------------------------------------------------------------
# search


class _Found(Exception):
    """Raised from the search's step hook to stop training at the early bird."""


class _LoggedTask:
    """A task that remembers each training loss (the search may stop mid-`train`)."""

    def __init__(self, task):
        self.task = task          # the task trained on
        self.losses = []          # training loss per step, in order

    @property
    def n_train(self) -> int:
        return self.task.n_train

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        loss = self.task.loss(model, idx)
        self.losses.append(loss.item())
        return loss


def slimming_search(model: nn.Module, task, head_ratio: float = 1 / 3, neuron_ratio: float = 0.4, steps: int = 100,
                    l1_heads: float = 1e-4, l1_neurons: float = 1e-4, lr: float = 5e-5, coef_lr: float = 1e-2,
                    checkpoint_every: int = 10, eps: float = 0.1, patience: int = 1, stop: bool = True,
                    batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR) -> tuple[dict, pd.DataFrame]:
    """EarlyBERT's search: a copy of `model` (every weight at `lr`, its task head at `head_lr`)
    trains on `task` with slimming coefficients (`add_slimming`, their own AdamW at `coef_lr`)
    and the penalty l1_heads * sum |head coefficients| + l1_neurons * sum |neuron coefficients|.
    Every `checkpoint_every` steps it draws the ticket (`ticket_masks` at `head_ratio`,
    `neuron_ratio`) and its Hamming distance to the previous checkpoint's; the early bird is the
    first checkpoint where the larger of the two distances (heads, neurons) has stayed below `eps`
    for `patience` checkpoints (`early_bird`), and with `stop` the search ends there (without, it
    runs all `steps` and keeps recording). Returns (masks at the early bird, or at the last
    checkpoint if none came: {"heads": bool [layers, heads], "neurons": bool [layers, ffn]}, True
    kept; a DataFrame, one row per checkpoint: step, loss (mean training loss since the previous
    checkpoint), hamming_heads, hamming_neurons (NaN at the first) and early_bird (True on its row))."""
    n_layers, n_heads, _, n_ffn = _sizes(model)
    _n_pruned(head_ratio, n_heads, "head_ratio", "heads")                 # bad ratios fail before training
    _n_pruned(neuron_ratio, n_ffn, "neuron_ratio", "FFN neurons")
    for name, value in (("l1_heads", l1_heads), ("l1_neurons", l1_neurons)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or not 1 <= checkpoint_every <= steps:
        raise ValueError(f"checkpoint_every must be a whole step count in [1, steps={steps}], got {checkpoint_every!r}")
    early_bird([], eps, patience)                                         # checks eps and patience
    if _has_slimming(model):
        raise ValueError("this model has slimming hooks on it: remove them (handle.remove()) before searching")

    searched = copy.deepcopy(model)
    for p in searched.parameters():                                       # EarlyBERT trains the whole model
        p.requires_grad_(True)
    coefs = add_slimming(searched)
    coef_opt = torch.optim.AdamW([coefs["heads"], coefs["neurons"]], lr=coef_lr, weight_decay=0.0)
    logged = _LoggedTask(task)
    rows, history, found = [], [], []                                     # per checkpoint: row, masks; the early bird

    def penalty():
        return l1_heads * coefs["heads"].abs().sum() + l1_neurons * coefs["neurons"].abs().sum()

    def after_step():                                                     # after the model's optimizer step
        coef_opt.step()                                                   # (`train` leaves these grads alone)
        coef_opt.zero_grad(set_to_none=True)
        step = len(logged.losses)
        if step % checkpoint_every:
            return
        masks = ticket_masks(coefs, head_ratio, neuron_ratio)
        prev = history[-1] if history else None
        dh = hamming(masks["heads"], prev["heads"]) if prev else float("nan")
        dn = hamming(masks["neurons"], prev["neurons"]) if prev else float("nan")
        history.append(masks)
        rows.append(dict(step=step, loss=sum(logged.losses[-checkpoint_every:]) / checkpoint_every,
                         hamming_heads=dh, hamming_neurons=dn, early_bird=False))
        distances = [max(r["hamming_heads"], r["hamming_neurons"]) if i else float("nan") for i, r in enumerate(rows)]
        if not found and early_bird(distances, eps, patience) == len(rows) - 1:
            found.append(len(rows) - 1)
            rows[-1]["early_bird"] = True
            if stop:
                raise _Found

    try:
        train(searched, logged, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr,
              penalty=penalty, after_step=after_step)
    except _Found:
        pass
    finally:
        coefs["handle"].remove()
    del searched
    masks = history[found[0]] if found else history[-1]
    return masks, pd.DataFrame(rows, columns=["step", "loss", "hamming_heads", "hamming_neurons", "early_bird"])


# -----------------------------------------------------------------------------
# pruning


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int, scale: torch.Tensor | None = None) -> nn.Linear:
    """A new, smaller nn.Linear keeping the output rows (dim 0) or input columns (dim 1) of
    `linear` at `index`, its columns multiplied by `scale` [len(index)] if given (dim 1 only);
    same dtype, device and requires_grad."""
    w = linear.weight.detach().index_select(dim, index)                  # [out', in] or [out, in']
    if scale is not None:
        w = w * scale.to(w.dtype)[None, :]
    b = None if linear.bias is None else (linear.bias.detach()[index] if dim == 0 else linear.bias.detach())
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.requires_grad_(linear.weight.requires_grad)
    return new


def prune_structured(model: nn.Module, head_mask: torch.Tensor, neuron_mask: torch.Tensor,
                     coefficients: dict | None = None) -> nn.Module:
    """A copy of a BERT-style encoder that is really smaller: per layer, the heads where
    `head_mask` [layers, heads] is False lose their rows of query, key and value and their columns
    of `attention.output.dense` (the layer's num_attention_heads and all_head_size follow), and the
    FFN neurons where `neuron_mask` [layers, ffn] is False lose their row of `intermediate.dense`
    and column of `output.dense`; hidden size, embeddings, pooler and head are untouched. With
    `coefficients` (from `add_slimming`), the kept units' coefficients are folded into the
    columns of the output projections, so the copy computes what the slimmed model computes with
    the pruned units' coefficients at 0. The model is left unchanged; a layer keeping no head or
    no neuron is an error. (Saved with save_pretrained, the copy does not load back through
    from_pretrained: the config has one size for all layers.)"""
    n_layers, n_heads, head_dim, n_ffn = _sizes(model)
    for mask, shape, what, per in ((head_mask, (n_layers, n_heads), "head_mask", "head"),
                                   (neuron_mask, (n_layers, n_ffn), "neuron_mask", "FFN neuron")):
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
            raise ValueError(f"{what} must be a tensor of shape [layers, units] = {list(shape)}, "
                             f"got {getattr(mask, 'shape', type(mask).__name__)}")
        empty = [i for i, row in enumerate(mask.bool()) if not row.any()]
        if empty:
            raise ValueError(f"{what} prunes every {per} of layer {empty[0]}: keep at least one in each layer")
    if _has_slimming(model):
        raise ValueError("this model has slimming hooks on it: remove them (handle.remove()) and pass the "
                         "coefficients to fold them in")

    pruned = copy.deepcopy(model)
    for i, layer in enumerate(_bert_layers(pruned)):
        attn = layer.attention.self
        kept = head_mask[i].bool().nonzero().flatten().cpu()                          # [kept heads]
        cols = (kept[:, None] * head_dim + torch.arange(head_dim)).flatten()          # [kept heads * head_dim]
        scale = None if coefficients is None else \
            coefficients["heads"].detach()[i].cpu()[kept].repeat_interleave(head_dim)  # [kept heads * head_dim]
        attn.query = _sliced(attn.query, cols.to(attn.query.weight.device), 0)
        attn.key = _sliced(attn.key, cols.to(attn.key.weight.device), 0)
        attn.value = _sliced(attn.value, cols.to(attn.value.weight.device), 0)
        out = layer.attention.output
        out.dense = _sliced(out.dense, cols.to(out.dense.weight.device), 1, scale)
        attn.num_attention_heads = len(kept)
        attn.all_head_size = len(kept) * head_dim

        kept = neuron_mask[i].bool().nonzero().flatten().cpu()                        # [kept neurons]
        scale = None if coefficients is None else coefficients["neurons"].detach()[i].cpu()[kept]   # [kept neurons]
        layer.intermediate.dense = _sliced(layer.intermediate.dense, kept.to(layer.intermediate.dense.weight.device), 0)
        layer.output.dense = _sliced(layer.output.dense, kept.to(layer.output.dense.weight.device), 1, scale)
    return pruned


# -----------------------------------------------------------------------------
# the methods


def _train_ticket(model: nn.Module, masks: dict, task, steps: int, lr: float, batch_size: int, seed: int,
                  head_lr: float):
    """Cut the pre-trained `model` (head as given) to the ticket and fine-tune all of it. Returns
    (tuned, trainable params, head params, losses, seconds of training)."""
    tuned = prune_structured(model, masks["heads"], masks["neurons"])
    head = _freeze_all_but_head(tuned)
    for p in tuned.parameters():
        p.requires_grad_(True)
    trainable = sum(p.numel() for p in tuned.parameters())
    t = time.perf_counter()
    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    seconds = time.perf_counter() - t
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned, trainable, head, losses, seconds


def _ticket_extra(model: nn.Module, tuned: nn.Module, masks: dict, head_ratio: float, neuron_ratio: float) -> dict:
    """The record fields a structured ticket adds, whichever way it was drawn."""
    return dict(head_ratio=head_ratio, neuron_ratio=neuron_ratio,
                params_before=sum(p.numel() for p in model.parameters()),
                params_after=sum(p.numel() for p in tuned.parameters()),
                heads_kept=masks["heads"].sum(1).tolist(), neurons_kept=masks["neurons"].sum(1).tolist())


def earlybert(model: nn.Module, task, head_ratio: float = 1 / 3, neuron_ratio: float = 0.4, search_steps: int = 100,
              steps: int = 100, l1_heads: float = 1e-4, l1_neurons: float = 1e-4, search_lr: float = 5e-5,
              coef_lr: float = 1e-2, checkpoint_every: int = 10, eps: float = 0.1, patience: int = 1,
              lr: float = 5e-5, batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """EarlyBERT: `slimming_search` (at most `search_steps` at `search_lr`, coefficients at
    `coef_lr`, stopping at the early bird) draws a structured ticket pruning `head_ratio` of the
    heads and `neuron_ratio` of the FFN neurons in each layer; the pre-trained model (the
    lottery-ticket reset; the head as given) is cut to it with `prune_structured` and the smaller
    model fine-tuned in full, head included, for `steps` at `lr` (head at `head_lr`). The record's
    losses are that training's; it adds head_ratio, neuron_ratio, early_bird_step (None if the
    search ran out first: the ticket is then the last checkpoint's), search_steps_run,
    params_before, params_after, heads_kept and neurons_kept per layer, search_time_s,
    train_time_s and hamming (the search's table as a list of dicts)."""
    t0 = time.perf_counter()
    masks, table = slimming_search(model, task, head_ratio, neuron_ratio, search_steps, l1_heads, l1_neurons,
                                   search_lr, coef_lr, checkpoint_every, eps, patience, True, batch_size, seed, head_lr)
    search_time = time.perf_counter() - t0
    tuned, trainable, head, losses, train_time = _train_ticket(model, masks, task, steps, lr, batch_size, seed, head_lr)
    bird = table.step[table.early_bird]
    return tuned, _record("earlybert", model, tuned, task, losses, t0, trainable, head,
                          early_bird_step=int(bird.iloc[0]) if len(bird) else None,
                          search_steps_run=int(table.step.iloc[-1]), search_time_s=search_time, train_time_s=train_time,
                          hamming=table.to_dict("records"), **_ticket_extra(model, tuned, masks, head_ratio, neuron_ratio))


def random_structured_ticket(model: nn.Module, task, head_ratio: float = 1 / 3, neuron_ratio: float = 0.4,
                             steps: int = 100, lr: float = 5e-5, batch_size: int = 16, seed: int = 0,
                             head_lr: float = HEAD_LR):
    """The control for `earlybert`: a ticket of the same size (per layer, the same numbers of heads
    and FFN neurons pruned) chosen at random (`random_masks`, seeded by `seed`), cut from the
    pre-trained model and fine-tuned the same way. The record adds head_ratio, neuron_ratio,
    params_before, params_after, heads_kept, neurons_kept and train_time_s."""
    t0 = time.perf_counter()
    masks = random_masks(model, head_ratio, neuron_ratio, seed)
    tuned, trainable, head, losses, train_time = _train_ticket(model, masks, task, steps, lr, batch_size, seed, head_lr)
    return tuned, _record("random_structured_ticket", model, tuned, task, losses, t0, trainable, head,
                          train_time_s=train_time, **_ticket_extra(model, tuned, masks, head_ratio, neuron_ratio))
