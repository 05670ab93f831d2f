"""The matrix-product-operator methods of RUCAIBox (Gao, Liu, Zhao et al.) as adaptation methods.

    from workbench.adapt import mpo_methods as mm
    tuned, rec = mm.mpop(model, task, max_bond=64)            # compress, train only the auxiliary tensors
    dense = mm.contract_back(tuned)                            # every MPOLinear back to an nn.Linear
    tuned, rec = mm.opf(model, task, n_matrices=6, choice="dynamic")   # over-parameterize, train, contract
    tuned, rec = mm.mpobert(model, task)                       # one central tensor per matrix type, all layers
    tuned, rec = mm.mpoe(model, task, experts=4)               # each FFN a mixture of experts sharing centrals

All four build on workbench.decompose.mpo: a weight W [out, in] becomes a chain of local tensors
T_k [d_k, o_k, i_k, d_{k+1}], the central one (most parameters) carrying the spectrum and the
auxiliary ones orthonormal (mixed-canonical gauge). Each method works on a copy, trains with
`workbench.finetune.train` (the fresh task head at `head_lr`, everything else that trains at `lr`) and
returns (tuned model, record); the records add what the method chose, all of it plain JSON data.

    mpo_model      every target nn.Linear replaced by an MPOLinear (max_bond=None: exact); a report
    mpop           MPOP (Gao et al., ACL 2021): truncate the bonds to `max_bond` (compression), then
                   "lightweight fine-tuning": only the auxiliary tensors train (and the head); the
                   central tensors, biases, embeddings and LayerNorms stay frozen
    contract_back  a copy with every MPOLinear contracted back into a plain nn.Linear
    opf            OPF (Gao et al., ACL 2023): `n_matrices` target matrices are over-parameterized by
                   a full-bond MPO with more factors (`parts`, default 5: more parameters than W, same
                   function at the start), the model is fine-tuned in full (the MPO tensors in place of
                   those W), and the MPOs are contracted back: the returned model has exactly the
                   original modules and shapes. Static choice: the top n by `criterion` before
                   training; dynamic: re-chosen every `every` steps by the gradient norm of the dense W
    mpobert        MPOBERT-style cross-layer sharing (Liu et al., 2023): per matrix type one central
                   tensor (one nn.Parameter) shared by all layers, layer-specific auxiliary tensors
                   refitted to each layer's W by alternating least squares; then fine-tuned in full
    mpoe           MPOE (Gao et al., COLING 2022): every BERT FFN becomes `experts` experts whose two
                   matrices share their central tensors and own their auxiliary tensors, with a learned
                   router per layer; the shared central's gradient scaled by `central_grad_scale`

Deviations from the papers, in short (each function says more): MPOP truncates once (the paper
squeezes the bonds step by step with fine-tuning in between) and decomposes the attention and FFN
projections only, not the embeddings; OPF selects whole matrices by the squared gradient norm (a
Fisher-information proxy; the paper uses ChildTuning-D's Fisher information) and its dynamic
strategy re-chooses the set each round instead of adding matrices round by round; MPOBERT is not
pre-trained with sharing: the shared central comes from the first layer (or the mean) and the
auxiliary tensors are refitted, so the shared model starts away from the pre-trained function;
MPOE routes top-1 with a straight-through gate (or soft) over a BERT FFN and scales the central
tensor's gradient (and so its AdamW steps) deterministically instead of masking it at random.

Works on BERT-style encoders (transformers' BertForSequenceClassification and the like); mpo_model,
mpop, contract_back and opf on any model whose target modules are nn.Linear.
"""

from __future__ import annotations

import copy
import math
import re
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from workbench.adapt.common import HEAD_LR, TARGETS, _freeze_all_but_head, _record, _targets, _trainable
from workbench.decompose.mpo import (MPOLinear, central_index, factorize, full_bond_dims, mpo_contract,
                                     mpo_decompose, mpo_params)
from workbench.finetune import train

_LAYER = r"(^|\.)encoder\.layer\.\d+$"     # a transformer block of a BERT-style encoder, by module name


# -----------------------------------------------------------------------------
# checks and small helpers


def _check_int(name: str, value, low: int, what: str) -> None:
    """An error naming `name` unless value is an int >= low (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low} ({what}), got {value!r}")


def _check_bond(max_bond) -> None:
    if max_bond is not None:
        _check_int("max_bond", max_bond, 1, "the largest bond dimension kept, or None for no truncation")


def _check_choice(name: str, value, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")


def _check_scale(name: str, value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 ({what}), got {value!r}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at dotted `name` inside `model` (in place)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _mpo_layers(model: nn.Module) -> dict[str, MPOLinear]:
    """Every MPOLinear of `model` by its dotted name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MPOLinear)}


def _rel_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||W - W_hat||_F / ||W||_F in float64 (0 for a zero W)."""
    w64, h64 = w.detach().double(), w_hat.detach().double()
    norm = torch.linalg.norm(w64)
    return float(torch.linalg.norm(w64 - h64) / norm) if norm > 0 else 0.0


def _unique_params(model: nn.Module) -> int:
    """Parameters of `model`, a shared nn.Parameter counted once (what nn.Module.parameters() yields)."""
    return sum(p.numel() for p in model.parameters())


def _full_bond_params(out_features: int, in_features: int, parts: int) -> int:
    """How many parameters the exact (full-bond) MPO of an [out, in] matrix has with `parts` factors."""
    of, inf = factorize(out_features, parts), factorize(in_features, parts)
    b = full_bond_dims(of, inf)                                              # [1, d_1, ..., d_{n-1}, 1]
    return sum(b[k] * of[k] * inf[k] * b[k + 1] for k in range(parts))


# -----------------------------------------------------------------------------
# the MPO model and back


def mpo_model(model: nn.Module, targets: str = TARGETS, parts: int = 3,
              max_bond: int | None = None) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of `model` whose target nn.Linear modules (`targets`, a regex on module names; the task
    head never) are each replaced by an MPOLinear of `parts` local tensors (factors from
    `factorize`, bonds capped at `max_bond`; None keeps the full bonds, so the copy computes what the
    model computes up to float error), bias copied; `model` is left unchanged. Returns (copy, report):
    one row per module with module, out_factors, in_factors, bonds, params (the MPO's), dense_params
    (out * in), compression (params / dense_params) and rel_error (||W - W_hat||_F / ||W||_F).
    Raises ValueError for parts < 2, max_bond < 1 or a pattern that matches no linear module."""
    _check_int("parts", parts, 2, "the number of MPO tensors per matrix")
    _check_bond(max_bond)
    copied = copy.deepcopy(model)
    rows = []
    for name, linear in _targets(copied, targets).items():
        layer = MPOLinear.from_linear(linear, parts=parts, max_bond=max_bond)
        with torch.no_grad():
            err = _rel_error(linear.weight, layer.weight)
        params = mpo_params(list(layer.tensors))
        rows.append(dict(module=name, out_factors=layer.out_factors, in_factors=layer.in_factors, bonds=layer.bonds,
                         params=params, dense_params=linear.weight.numel(),
                         compression=params / linear.weight.numel(), rel_error=err))
        _set_module(copied, name, layer)
    columns = ["module", "out_factors", "in_factors", "bonds", "params", "dense_params", "compression", "rel_error"]
    return copied, pd.DataFrame(rows, columns=columns)


def _contract_in_place(model: nn.Module) -> int:
    """Replace every MPOLinear of `model` by its contracted nn.Linear, in place; return how many.
    The new layer trains (requires_grad) if any tensor of the MPO did."""
    layers = _mpo_layers(model)
    for name, layer in layers.items():
        linear = layer.to_linear()                                           # [out, in] weight, bias copied
        linear.requires_grad_(any(p.requires_grad for p in layer.parameters()))
        _set_module(model, name, linear)
    return len(layers)


def contract_back(model: nn.Module) -> nn.Module:
    """A copy of `model` with every MPOLinear contracted back into a plain nn.Linear of the same
    shape (weight W_hat [out, in] = the chain contracted, bias copied): the same outputs up to float
    error, no MPO left to pay for at inference, the state dict keys of the model before `mpo_model`
    (weight and bias per target). MPOE's expert layers are not MPOLinear and are left as they are.
    Raises ValueError if the model has no MPOLinear."""
    dense = copy.deepcopy(model)
    if _contract_in_place(dense) == 0:
        raise ValueError(f"contract_back: {type(model).__name__} has no MPOLinear to contract "
                         "(pass a model from mpo_model, mpop or mpobert)")
    return dense


# -----------------------------------------------------------------------------
# MPOP


def mpop(model: nn.Module, task, max_bond: int | None = 64, parts: int = 3, targets: str = TARGETS,
         steps: int = 100, lr: float = 5e-4, batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """MPOP: compress every target matrix by truncating its MPO's bonds to `max_bond` (`mpo_model`;
    None: no truncation, lightweight fine-tuning alone), then train only the auxiliary tensors of
    every MPO (central tensors frozen: they keep the truncated spectrum, the paper's argument being
    that the central tensor holds the core information and the auxiliaries adapt it) plus the task
    head; biases, embeddings and LayerNorms stay frozen. One truncation, not the paper's stepwise
    dimension squeezing with fine-tuning in between; the embeddings are not decomposed. The record
    adds max_bond, parts, modules, auxiliary_params (what trained besides the head),
    target_params_dense and target_params_mpo (the target matrices' weights before and after),
    compression (their ratio; above 1 when max_bond keeps full bonds), params_after (the compressed
    model's parameters; total_params is the input's), rel_error (mean over modules of the
    truncation's ||W - W_hat|| / ||W||) and rel_error_max. The returned model keeps its MPOLinear
    layers (contract_back turns them dense) with every parameter frozen. Pre-trained weights have
    flat spectra: on MiniLM-L6 (3 parts) bond 64 keeps the 384 x 384 matrices exact (1.04 x their
    weights) and leaves the FFN matrices at 0.68 x their weights with relative error 0.52; bond 32
    gives 0.47 / 0.23 x at errors 0.68 / 0.84."""
    t0 = time.perf_counter()
    tuned, report = mpo_model(model, targets, parts, max_bond)               # checks parts, max_bond, targets
    head = _freeze_all_but_head(tuned)                                       # centrals, biases, the rest: frozen
    auxiliary = 0
    for layer in _mpo_layers(tuned).values():
        for t in layer.auxiliary_parameters():                               # every tensor but the central
            t.requires_grad_(True)
            auxiliary += t.numel()
    trainable = _trainable(tuned)                                            # = head + auxiliary
    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    for p in tuned.parameters():
        p.requires_grad_(False)
    dense, compressed = int(report.dense_params.sum()), int(report.params.sum())
    return tuned, _record("mpop", model, tuned, task, losses, t0, trainable, head, max_bond=max_bond, parts=parts,
                          modules=len(report), auxiliary_params=auxiliary, target_params_dense=dense,
                          target_params_mpo=compressed, compression=compressed / dense,
                          params_after=_unique_params(tuned), rel_error=float(report.rel_error.mean()),
                          rel_error_max=float(report.rel_error.max()))


# -----------------------------------------------------------------------------
# OPF


class _TrackedMPOLinear(MPOLinear):
    """An MPOLinear that hands the gradient of its contracted weight W_hat [out, in] to `on_grad`
    (a callable taking that gradient) at every backward: OPF's dynamic choice ranks every target by
    the gradient of its dense weight, whether it is an MPO at the moment or a plain nn.Linear."""

    on_grad = None                                                           # callable(grad [out, in]) or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight                                                      # [out, in]
        if self.on_grad is not None and w.requires_grad:
            w.register_hook(self.on_grad)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))   # [..., out]


def _track_gradients(model: nn.Module, names: list[str], sums: dict[str, float]) -> list:
    """Add ||dL/dW||_F^2 of each named target's dense weight W to sums[name] at every backward (a
    weight hook on an nn.Linear, the contracted weight's hook on a _TrackedMPOLinear). Returns the
    handles to remove; a _TrackedMPOLinear is switched off by setting its on_grad back to None."""
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def add(g, name=name):
            sums[name] += float(g.detach().double().pow(2).sum())

        if isinstance(module, _TrackedMPOLinear):
            module.on_grad = add
        else:
            handles.append(module.weight.register_hook(add))
    return handles


def _untrack(model: nn.Module, handles: list) -> None:
    for h in handles:
        h.remove()
    for m in model.modules():
        if isinstance(m, _TrackedMPOLinear):
            m.on_grad = None


def _criterion_scores(model: nn.Module, names: list[str], task, criterion: str, batches: int, batch_size: int,
                      seed: int) -> dict[str, float]:
    """The static score of each named target (all plain nn.Linear here): "norm" ||W||_F,
    "stable_rank" ||W||_F^2 / ||W||_2^2, or "fisher": the sum over `batches` training batches
    (seeded order, eval mode so no dropout) of ||dL/dW||_F^2, the squared gradient norm of the
    batch's mean loss: a trace of the empirical Fisher information block of W, the matrix-level
    proxy of ChildTuning-D's Fisher that OPF selects with. Gradients are cleared afterwards."""
    modules = {n: model.get_submodule(n) for n in names}
    if criterion == "norm":
        return {n: float(torch.linalg.norm(m.weight.detach().double())) for n, m in modules.items()}
    if criterion == "stable_rank":
        scores = {}
        for n, m in modules.items():
            w = m.weight.detach().double()                                   # [out, in]
            top = torch.linalg.matrix_norm(w, ord=2)
            scores[n] = float(torch.linalg.norm(w) ** 2 / top ** 2) if top > 0 else 0.0
        return scores
    sums = dict.fromkeys(names, 0.0)
    needs = {n: m.weight.requires_grad for n, m in modules.items()}
    for m in modules.values():
        m.weight.requires_grad_(True)
    handles = _track_gradients(model, names, sums)
    order = torch.randperm(task.n_train, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        for b in range(batches):
            idx = order[(b * batch_size) % task.n_train:][:batch_size]
            task.loss(model, idx).backward()
    finally:
        _untrack(model, handles)
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
        for n, m in modules.items():
            m.weight.requires_grad_(needs[n])
    return sums


def _top(scores: dict[str, float], n: int) -> list[str]:
    """The n names with the largest scores, largest first (ties: model order)."""
    return sorted(scores, key=lambda k: -scores[k])[:n]


def opf(model: nn.Module, task, n_matrices: int = 6, choice: str = "static", criterion: str = "fisher",
        parts: int = 5, every: int = 50, fisher_batches: int = 4, targets: str = TARGETS, steps: int = 100,
        lr: float = 5e-5, batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """OPF, over-parameterized fine-tuning: `n_matrices` of the target matrices are replaced by the
    exact (full-bond) MPO with `parts` factors, which holds more parameters than W (checked for
    every target: fewer parts may not, and then this is an error) while computing the same W, and
    the model is fine-tuned in full as the paper does: those MPO tensors in place of their W, every
    other weight as it is, the head at `head_lr`. At the end each MPO is contracted back, so the
    returned model has the original modules (plain nn.Linear), state dict keys and shapes: no
    inference cost. `choice`: "static" picks the n targets with the largest `criterion` before
    training ("fisher": the squared gradient norm of the dense W summed over `fisher_batches`
    batches, a Fisher proxy; "norm": ||W||_F; "stable_rank"); "dynamic" trains in rounds of `every`
    steps, round 0 with the static choice, and each later round with the n targets whose dense W
    had the largest squared gradient norm summed over the previous round's steps (an MPO's dense W
    is its contracted W_hat). Leaving matrices are contracted, arriving ones decomposed, so the
    function is unchanged at a switch; each round is its own `train` call (AdamW restarts, data
    order seeded by seed + the round's first step). The paper's dynamic strategy instead adds
    n / rounds matrices per round, keeping the earlier ones. The record adds n_matrices, choice,
    criterion, parts, every (None for static), rounds (per round: start, steps, chosen, scores used
    to choose), chosen (every target chosen at some round, in order), mpo_params and dense_params
    ({module: count} for those), mpo_params_total and dense_params_total (round 0's set),
    over_parameterization (their ratio), rel_error_max (of the exact decompositions: float error),
    params_after (the returned model's parameters). trainable_params is the largest count that
    trained in a round (the over-parameterized model's)."""
    t0 = time.perf_counter()
    _check_int("n_matrices", n_matrices, 1, "how many target matrices are over-parameterized")
    _check_choice("choice", choice, ("static", "dynamic"))
    _check_choice("criterion", criterion, ("fisher", "norm", "stable_rank"))
    _check_int("parts", parts, 2, "the number of MPO tensors per matrix; OPF wants more than W, e.g. 5")
    _check_int("steps", steps, 1, "training steps")
    _check_int("fisher_batches", fisher_batches, 1, "batches for the Fisher criterion")
    if choice == "dynamic":
        _check_int("every", every, 1, "steps per round of the dynamic choice")
    tuned = copy.deepcopy(model)
    names = list(_targets(tuned, targets))
    if n_matrices > len(names):
        raise ValueError(f"n_matrices={n_matrices} is more than the {len(names)} target matrices matched by "
                         f"targets; lower it or widen the pattern")
    dense = {n: tuned.get_submodule(n).weight.numel() for n in names}
    full = {n: _full_bond_params(*tuned.get_submodule(n).weight.shape, parts) for n in names}
    short = [n for n in names if full[n] <= dense[n]]
    if short:
        raise ValueError(f"parts={parts} does not over-parameterize {short[0]} (its full-bond MPO has "
                         f"{full[short[0]]:,} parameters, W has {dense[short[0]]:,}) and {len(short) - 1} other "
                         "target(s): use more parts")
    head = _freeze_all_but_head(tuned)
    for p in tuned.parameters():                                             # full fine-tuning, as the paper
        p.requires_grad_(True)
    scores = _criterion_scores(tuned, names, task, criterion, fisher_batches, batch_size, seed)

    starts = list(range(0, steps, every)) if choice == "dynamic" else [0]
    rounds, losses, trainable, errors, chosen_ever = [], [], 0, [], []
    for start in starts:
        n_steps = min(every, steps - start) if choice == "dynamic" else steps
        chosen = _top(scores, n_matrices)
        rounds.append(dict(start=start, steps=n_steps, chosen=chosen, scores=scores))
        chosen_ever += [n for n in chosen if n not in chosen_ever]
        for n in names:                                                      # contract leavers, decompose arrivals
            module = tuned.get_submodule(n)
            if n in chosen and not isinstance(module, MPOLinear):
                layer = _TrackedMPOLinear.from_linear(module, parts=parts)   # full bond: the same W
                with torch.no_grad():
                    errors.append(_rel_error(module.weight, layer.weight))
                _set_module(tuned, n, layer)
            elif n not in chosen and isinstance(module, MPOLinear):
                linear = module.to_linear()
                linear.requires_grad_(True)
                _set_module(tuned, n, linear)
        trainable = max(trainable, _trainable(tuned))
        sums = dict.fromkeys(names, 0.0)
        handles = _track_gradients(tuned, names, sums) if choice == "dynamic" else []
        try:
            losses += train(tuned, task, steps=n_steps, lr=lr, batch_size=batch_size, seed=seed + start,
                            head_lr=head_lr)
        finally:
            _untrack(tuned, handles)
        scores = sums
    _contract_in_place(tuned)
    for p in tuned.parameters():
        p.requires_grad_(False)
    first = rounds[0]["chosen"]
    mpo_total, dense_total = sum(full[n] for n in first), sum(dense[n] for n in first)
    return tuned, _record("opf", model, tuned, task, losses, t0, trainable, head, n_matrices=n_matrices, choice=choice,
                          criterion=criterion, parts=parts, every=every if choice == "dynamic" else None,
                          rounds=rounds, chosen=chosen_ever, mpo_params={n: full[n] for n in chosen_ever},
                          dense_params={n: dense[n] for n in chosen_ever}, mpo_params_total=mpo_total,
                          dense_params_total=dense_total, over_parameterization=mpo_total / dense_total,
                          rel_error_max=max(errors), params_after=_unique_params(tuned))


# -----------------------------------------------------------------------------
# MPOBERT: one central tensor per matrix type, shared across layers


def _sites(w: torch.Tensor, out_factors: list[int], in_factors: list[int]) -> torch.Tensor:
    """W [out, in] as the float64 tensor of its MPO's physical legs [m_0, ..., m_{n-1}], m_k = o_k i_k
    (the reshape and permutation of mpo_decompose: a chain contracts to exactly this layout)."""
    n = len(out_factors)
    t = w.detach().double().reshape(*out_factors, *in_factors)               # [o_0..o_{n-1}, i_0..i_{n-1}]
    t = t.permute(*[j for k in range(n) for j in (k, n + k)])                # [o_0, i_0, o_1, i_1, ...]
    return t.reshape([o * i for o, i in zip(out_factors, in_factors)])       # [m_0, ..., m_{n-1}]


def _environments(tensors: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain left of tensor k contracted to [P_left, d_k] and the chain right of it to
    [d_{k+1}, P_right] (P: the product of those tensors' m_j, first site most significant)."""
    left = torch.ones(1, 1, dtype=tensors[0].dtype)                          # [1, d_0 = 1]
    for t in tensors[:k]:
        d, o, i, e = t.shape
        left = (left @ t.reshape(d, o * i * e)).reshape(-1, e)               # [P * o i, d_{j+1}]
    right = torch.ones(1, 1, dtype=tensors[0].dtype)                         # [d_n = 1, 1]
    for t in reversed(tensors[k + 1:]):
        d, o, i, e = t.shape
        right = (t.reshape(d * o * i, e) @ right).reshape(d, -1)             # [d_j, o i * Q]
    return left, right


def _refit_auxiliaries(w: torch.Tensor, tensors: list[torch.Tensor], central: int, sweeps: int) -> list[torch.Tensor]:
    """Alternating least squares on the auxiliary tensors of an MPO of W [out, in] whose central
    tensor is fixed (shared): each sweep sets every auxiliary tensor, in chain order, to the exact
    least-squares solution given all the others, T_k[:, s, :] = pinv(left env) W[:, s, :] pinv(right
    env), so ||W - W_hat||_F never grows. Runs in float64; returns new tensors (the central as given)."""
    chain = [t.detach().double() for t in tensors]
    out_f, in_f = [t.shape[1] for t in chain], [t.shape[2] for t in chain]
    target = _sites(w, out_f, in_f)                                          # [m_0, ..., m_{n-1}]
    for _ in range(sweeps):
        for k in range(len(chain)):
            if k == central:
                continue
            left, right = _environments(chain, k)                            # [P_l, d_k], [d_{k+1}, P_r]
            d, o, i, e = chain[k].shape
            wk = target.reshape(left.shape[0], o * i, right.shape[1])        # [P_l, m_k, P_r]
            t = torch.einsum("dp,psq,qe->dse", torch.linalg.pinv(left), wk, torch.linalg.pinv(right))
            chain[k] = t.reshape(d, o, i, e)                                 # [d_k, o_k, i_k, d_{k+1}]
    return chain


def _group(name: str) -> str:
    """A target's matrix type: its name with the first layer index replaced by '*'
    (bert.encoder.layer.3.attention.self.query -> bert.encoder.layer.*.attention.self.query)."""
    return re.sub(r"\.\d+\.", ".*.", name, count=1)


def mpobert_model(model: nn.Module, targets: str = TARGETS, parts: int = 3, max_bond: int | None = None,
                  share: str = "central", init: str = "first", refit_sweeps: int = 2) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of `model` with its target matrices as MPOs (`mpo_model`) and, with share="central",
    one central tensor per matrix type (targets whose names differ only in the layer index: query,
    key, value, attention.output.dense, intermediate.dense, output.dense of a BERT) shared by every
    layer: the same nn.Parameter object sits in each layer's MPOLinear, so a step changes it
    everywhere and it is counted once. `init`: "first" takes the first layer's central tensor,
    "mean" the mean of all layers' (their bases are not aligned across layers, so the mean is a
    blurrier start; "first" keeps layer 0 exact). Each layer then keeps its own auxiliary tensors,
    refitted to its own W around the shared central by `refit_sweeps` sweeps of alternating least
    squares (0: the layer's own decomposition as it is). share="none" keeps every layer's own
    decomposition (the unshared control). Returns (copy, report): mpo_model's report plus group
    (the matrix type), shared, and rel_error_shared (||W - W_hat|| / ||W|| after sharing and
    refitting; rel_error is the layer's own decomposition's)."""
    _check_choice("share", share, ("central", "none"))
    _check_choice("init", init, ("first", "mean"))
    _check_int("refit_sweeps", refit_sweeps, 0, "sweeps of least squares over the auxiliary tensors")
    shared_model, report = mpo_model(model, targets, parts, max_bond)
    report["group"] = [_group(n) for n in report.module]
    report["shared"] = share == "central"
    report["rel_error_shared"] = report.rel_error
    if share == "none":
        return shared_model, report
    originals = {n: m.weight for n, m in _targets(model, targets).items()}  # [out, in] each
    layers = _mpo_layers(shared_model)
    errors = {}
    for group, rows in report.groupby("group", sort=False):
        names = list(rows.module)
        shapes = {tuple(tuple(t.shape) for t in layers[n].tensors) for n in names}
        if len(shapes) > 1:
            raise ValueError(f"the layers of {group} have differently shaped MPOs ({len(shapes)} shapes): a central "
                             "tensor can only be shared by matrices of one shape (a pruned model?)")
        c = layers[names[0]].central
        with torch.no_grad():
            centrals = [layers[n].tensors[c].detach() for n in names]        # [d_c, o_c, i_c, d_c+1] each
            start = centrals[0] if init == "first" else torch.stack(centrals).mean(0)
            shared = nn.Parameter(start.clone())
            for n in names:
                chain = [t.detach() for t in layers[n].tensors]
                chain[c] = shared.detach()
                chain = _refit_auxiliaries(originals[n], chain, c, refit_sweeps)
                for k, t in enumerate(chain):
                    if k != c:
                        layers[n].tensors[k].copy_(t)
                layers[n].tensors[c] = shared                                 # the one Parameter, every layer
                errors[n] = _rel_error(originals[n], layers[n].weight)
    report["rel_error_shared"] = [errors[n] for n in report.module]
    return shared_model, report


def mpobert(model: nn.Module, task, max_bond: int | None = None, parts: int = 3, share: str = "central",
            init: str = "first", refit_sweeps: int = 2, targets: str = TARGETS, steps: int = 100, lr: float = 5e-5,
            batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """MPOBERT-style cross-layer parameter sharing: `mpobert_model` (one central tensor per matrix
    type shared by all layers, layer-specific auxiliary tensors fitted by least squares), then the
    whole model fine-tuned (shared centrals, auxiliaries, biases, embeddings, LayerNorms at `lr`;
    the head at `head_lr`). MPOBERT itself is pre-trained with the sharing in place; here the shared
    model is fitted to a pre-trained one, which it reproduces only approximately (record:
    rel_error_shared; on MiniLM-L6 at full bond the layers after the first start at a relative
    error of about 0.97, i.e. they are mostly lost), and fine-tuning has to recover the rest. The record adds max_bond, parts,
    share, init, refit_sweeps, groups ({matrix type: layers sharing}), params_unique (the tuned
    model's parameters, each shared tensor once), params_unshared (the same MPO model with a
    central per layer), params_dense (= total_params, the input's), saving (1 - unique /
    unshared), rel_error_own (mean error of each layer's own decomposition) and rel_error_shared
    (mean error after sharing and refitting, before training)."""
    t0 = time.perf_counter()
    tuned, report = mpobert_model(model, targets, parts, max_bond, share, init, refit_sweeps)
    layers = _mpo_layers(tuned)
    head = _freeze_all_but_head(tuned)
    for p in tuned.parameters():
        p.requires_grad_(True)
    trainable = _trainable(tuned)
    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr)
    for p in tuned.parameters():
        p.requires_grad_(False)
    unique = _unique_params(tuned)
    groups = {g: len(rows) for g, rows in report.groupby("group", sort=False)}
    extra_centrals = 0
    if share == "central":
        for g, rows in report.groupby("group", sort=False):
            layer = layers[rows.module.iloc[0]]
            extra_centrals += (len(rows) - 1) * layer.tensors[layer.central].numel()
    return tuned, _record("mpobert", model, tuned, task, losses, t0, trainable, head, max_bond=max_bond, parts=parts,
                          share=share, init=init, refit_sweeps=refit_sweeps, groups=groups, params_unique=unique,
                          params_unshared=unique + extra_centrals, params_dense=_unique_params(model),
                          saving=extra_centrals / (unique + extra_centrals),
                          rel_error_own=float(report.rel_error.mean()),
                          rel_error_shared=float(report.rel_error_shared.mean()))


# -----------------------------------------------------------------------------
# MPOE: a mixture of experts sharing central tensors


class SharedCentralMPO(nn.Module):
    """`experts` weight matrices [out, in], each an MPO chain: one central tensor shared by all
    (`central`, a single nn.Parameter) and each expert's own auxiliary tensors (`auxiliary[e]`, an
    nn.ParameterList in chain order without the central), all experts starting as copies of the
    given chain. `central_grad_scale` s scales the shared tensor's gradient: the parameter stores
    C / s and the forward uses s * (C / s), so dL/d(parameter) = s dL/dC and, since AdamW's step
    hardly depends on a gradient's scale, each update of C is also about s times smaller (a plain
    gradient multiplier would be undone by AdamW's normalization). s = 0 freezes C."""

    def __init__(self, tensors: list[torch.Tensor], experts: int, central_grad_scale: float = 1.0):
        super().__init__()
        self.c = central_index(tensors)                                      # index of the central tensor in a chain
        self.experts = experts                                               # k
        self.central_grad_scale = float(central_grad_scale)                  # s >= 0
        stored = 1.0 / self.central_grad_scale if self.central_grad_scale > 0 else 1.0
        self.central = nn.Parameter(tensors[self.c].detach().clone() * stored,   # C / s [d_c, o_c, i_c, d_c+1]
                                    requires_grad=self.central_grad_scale > 0)
        self.auxiliary = nn.ModuleList(
            nn.ParameterList([nn.Parameter(t.detach().clone()) for k, t in enumerate(tensors) if k != self.c])
            for _ in range(experts))                                         # [experts] x (n - 1) tensors
        self.out_features = math.prod(t.shape[1] for t in tensors)          # rows of each expert's W
        self.in_features = math.prod(t.shape[2] for t in tensors)           # columns of each expert's W

    def central_tensor(self) -> torch.Tensor:
        """The shared central tensor C [d_c, o_c, i_c, d_{c+1}] as the experts use it (gradient scaled)."""
        if self.central_grad_scale == 0:
            return self.central
        return self.central * self.central_grad_scale                       # C; d/d(parameter) = s d/dC

    def chain(self, e: int, central: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Expert e's chain of local tensors: its auxiliaries with the shared central in place."""
        aux = list(self.auxiliary[e])
        central = self.central_tensor() if central is None else central
        return aux[:self.c] + [central] + aux[self.c:]

    def weights(self) -> torch.Tensor:
        """Every expert's contracted weight, stacked: [experts, out, in]."""
        central = self.central_tensor()
        return torch.stack([mpo_contract(self.chain(e, central)) for e in range(self.experts)])


class MPOEIntermediate(nn.Module):
    """Replaces a BERT layer's `intermediate` (dense + activation) by `experts` experts and a router.
    forward(x [..., hidden]) -> [..., experts * ffn]: for every expert e, gate_e * act(W1_e x + b1)
    side by side, which MPOEOutput's [hidden, experts * ffn] map turns into sum_e gate_e * W2_e
    act(W1_e x + b1) + b2: the mixture of the experts' FFNs (the output bias shared; the gates sum to
    1, so that is every expert having b2). routing "top1": the gate is 1 on the expert with the
    largest router probability and 0 elsewhere in value, its gradient reaching the router as
    p_e / p_e.detach() (straight through: the experts start equal, so the layer starts as the FFN
    it replaces); "soft": the gates are the router probabilities. Only the expert weights are
    contracted per call, every expert is computed (no compute saved: this is about parameters).
    In training mode `balance_loss` holds the Switch load-balancing loss k sum_e f_e P_e of the
    last forward (f: share of tokens whose top expert is e; P: mean probability); while `load` is
    a tensor [experts], each forward adds its tokens' top-expert counts to it."""

    def __init__(self, experts: SharedCentralMPO, bias: torch.Tensor | None, activation, router: nn.Linear,
                 routing: str = "top1"):
        super().__init__()
        self.experts = experts                                               # W1_e [ffn, hidden] per expert
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())   # b1 [ffn], shared
        self.intermediate_act_fn = activation                                # BERT's activation (gelu)
        self.router = router                                                 # nn.Linear(hidden, experts)
        self.routing = routing                                               # "top1" or "soft"
        self.balance_loss = None                                             # scalar tensor after a training forward
        self.load = None                                                     # [experts] counts while tracking

    def router_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The router's probabilities over the experts [..., experts] (a softmax: they sum to 1)."""
        return torch.softmax(self.router(x).float(), dim=-1)

    def gates(self, probs: torch.Tensor) -> torch.Tensor:
        """The weight of each expert [..., experts] from the router's probabilities: one-hot in value
        for top1 (straight-through gradient), the probabilities themselves for soft; sums to 1."""
        if self.routing == "soft":
            return probs
        top = probs.argmax(-1, keepdim=True)                                 # [..., 1]
        p = probs.gather(-1, top)                                            # [..., 1]
        return torch.zeros_like(probs).scatter(-1, top, p / p.detach())     # [..., experts], 1 at the top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.router_probs(x)                                         # [..., k]
        gates = self.gates(probs).to(x.dtype)                                # [..., k]
        w = self.experts.weights().to(x.dtype)                               # [k, ffn, hidden]
        h = torch.einsum("...h,kfh->...kf", x, w)                            # [..., k, ffn]
        if self.bias is not None:
            h = h + self.bias.to(x.dtype)
        h = self.intermediate_act_fn(h) * gates[..., None]                   # [..., k, ffn]
        top = probs.detach().argmax(-1).flatten()                            # [tokens]
        k = self.experts.experts
        if self.training:
            share = torch.bincount(top, minlength=k).to(probs.dtype) / top.numel()   # f_e [k]
            self.balance_loss = k * (share * probs.reshape(-1, k).mean(0)).sum()
        if self.load is not None:
            self.load += torch.bincount(top, minlength=k).cpu()
        return h.flatten(-2)                                                 # [..., k * ffn]


class MPOEOutput(nn.Module):
    """Replaces a BERT layer's `output.dense`: forward(z [..., experts * ffn]) -> [..., hidden] =
    sum_e W2_e z_e + b2, z_e the e-th block of the gated activations MPOEIntermediate returns.
    BertOutput's dropout, residual and LayerNorm around it stay as they are."""

    def __init__(self, experts: SharedCentralMPO, bias: torch.Tensor | None):
        super().__init__()
        self.experts = experts                                               # W2_e [hidden, ffn] per expert
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())   # b2 [hidden], shared

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.experts.weights().to(z.dtype)                               # [k, hidden, ffn]
        z = z.unflatten(-1, (self.experts.experts, self.experts.in_features))   # [..., k, ffn]
        y = torch.einsum("...kf,khf->...h", z, w)                            # [..., hidden]
        return y if self.bias is None else y + self.bias.to(z.dtype)


def _bert_ffn_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a BERT-style encoder with a plain FFN; an error naming what is missing."""
    layers = [m for n, m in model.named_modules() if re.search(_LAYER, n)]
    ok = bool(layers) and all(isinstance(getattr(getattr(b, "intermediate", None), "dense", None), nn.Linear)
                              and isinstance(getattr(getattr(b, "output", None), "dense", None), nn.Linear)
                              and hasattr(b.intermediate, "intermediate_act_fn") for b in layers)
    if not ok:
        raise ValueError(f"MPOE needs a BERT-style encoder (blocks encoder.layer.N with intermediate.dense, "
                         f"intermediate.intermediate_act_fn and output.dense as nn.Linear); {type(model).__name__} "
                         f"has {len(layers)} such blocks (already turned into experts?)")
    return layers


def mpoe_model(model: nn.Module, experts: int = 4, parts: int = 3, max_bond: int | None = None,
               routing: str = "top1", central_grad_scale: float = 0.5, seed: int = 0) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of a BERT-style `model` whose every FFN is a mixture of `experts` experts: per layer,
    intermediate.dense W1 [ffn, hidden] and output.dense W2 [hidden, ffn] are decomposed (`parts`
    factors, bonds capped at `max_bond`), and `layer.intermediate` becomes an MPOEIntermediate
    (router nn.Linear(hidden, experts), seeded by `seed`; the experts of W1 sharing one central
    tensor), `layer.output.dense` an MPOEOutput (the experts of W2 sharing theirs); each expert's
    auxiliary tensors start as copies of the decomposition, so with max_bond=None the copy computes
    what the model computes. Returns (copy, report): one row per layer with layer, mpoe_params (its
    FFN now: shared centrals, k auxiliaries per matrix, biases, router), moe_params (a plain MoE of
    k full experts: k (W1 + b1 + W2 + b2) + router), dense_params (the FFN before), rel_error_in and
    rel_error_out (of the two decompositions)."""
    _check_int("experts", experts, 1, "the number of experts per FFN")
    _check_int("parts", parts, 2, "the number of MPO tensors per matrix")
    _check_bond(max_bond)
    _check_choice("routing", routing, ("top1", "soft"))
    _check_scale("central_grad_scale", central_grad_scale, "the factor on the shared central tensor's gradient")
    moe = copy.deepcopy(model)
    rows = []
    torch.manual_seed(seed)
    for i, layer in enumerate(_bert_ffn_layers(moe)):
        up, down = layer.intermediate.dense, layer.output.dense              # [ffn, hidden], [hidden, ffn]
        ffn, hidden = up.weight.shape
        with torch.no_grad():
            t_up = mpo_decompose(up.weight, factorize(ffn, parts), factorize(hidden, parts), max_bond)
            t_down = mpo_decompose(down.weight, factorize(hidden, parts), factorize(ffn, parts), max_bond)
        router = nn.Linear(hidden, experts, device=up.weight.device, dtype=up.weight.dtype)
        new_up = MPOEIntermediate(SharedCentralMPO(t_up, experts, central_grad_scale), up.bias,
                                  layer.intermediate.intermediate_act_fn, router, routing)
        new_down = MPOEOutput(SharedCentralMPO(t_down, experts, central_grad_scale), down.bias)
        dense = sum(p.numel() for p in (*up.parameters(), *down.parameters()))
        router_params = sum(p.numel() for p in router.parameters())
        with torch.no_grad():
            err_in = _rel_error(up.weight, mpo_contract(t_up))
            err_out = _rel_error(down.weight, mpo_contract(t_down))
        layer.intermediate = new_up
        layer.output.dense = new_down
        rows.append(dict(layer=i, mpoe_params=_unique_params(new_up) + _unique_params(new_down),
                         moe_params=experts * dense + router_params, dense_params=dense,
                         rel_error_in=err_in, rel_error_out=err_out))
    return moe, pd.DataFrame(rows, columns=["layer", "mpoe_params", "moe_params", "dense_params", "rel_error_in",
                                            "rel_error_out"])


def mpoe(model: nn.Module, task, experts: int = 4, parts: int = 3, max_bond: int | None = None, routing: str = "top1",
         central_grad_scale: float = 0.5, balance: float = 0.01, steps: int = 100, lr: float = 5e-5,
         batch_size: int = 16, seed: int = 0, head_lr: float = HEAD_LR):
    """MPOE: `mpoe_model` (every FFN a mixture of `experts` experts sharing central tensors, expert-
    specific auxiliary tensors, a router per layer), then the whole model fine-tuned at `lr` (the
    head at `head_lr`) with `balance` times the Switch load-balancing loss summed over layers
    (0: none). The paper reduces the updates of the shared central tensor (which every token
    trains, while an expert's auxiliaries see only its tokens) with a random gradient mask; here
    `central_grad_scale` s scales its gradient and, through the reparametrization of
    SharedCentralMPO, its AdamW updates (s = 1: no reduction, 0: frozen). The record adds experts,
    parts, max_bond, routing, central_grad_scale, balance, mpoe_ffn_params (all layers' FFNs),
    moe_ffn_params (the same with k full experts), dense_ffn_params (the FFNs before), params_after
    (the tuned model's parameters), rel_error (mean of the decompositions') and expert_share (per
    layer, the share of held-out token positions, padding included, whose top expert is each
    expert; None without a held-out set)."""
    t0 = time.perf_counter()
    _check_scale("balance", balance, "the weight of the load-balancing loss")
    tuned, report = mpoe_model(model, experts, parts, max_bond, routing, central_grad_scale, seed)
    head = _freeze_all_but_head(tuned)
    for p in tuned.parameters():
        p.requires_grad_(True)
    modules = [m for m in tuned.modules() if isinstance(m, MPOEIntermediate)]
    for m in tuned.modules():
        if isinstance(m, SharedCentralMPO) and m.central_grad_scale == 0:
            m.central.requires_grad_(False)                                  # s = 0: the central stays
    trainable = _trainable(tuned)

    def penalty():
        return balance * sum(m.balance_loss for m in modules)

    losses = train(tuned, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, head_lr=head_lr,
                   penalty=penalty if balance > 0 else None)
    for p in tuned.parameters():
        p.requires_grad_(False)
    for m in modules:
        m.balance_loss = None
        m.load = torch.zeros(experts, dtype=torch.long)
    record = _record("mpoe", model, tuned, task, losses, t0, trainable, head, experts=experts, parts=parts,
                     max_bond=max_bond, routing=routing, central_grad_scale=central_grad_scale, balance=balance,
                     mpoe_ffn_params=int(report.mpoe_params.sum()), moe_ffn_params=int(report.moe_params.sum()),
                     dense_ffn_params=int(report.dense_params.sum()), params_after=_unique_params(tuned),
                     rel_error=float(pd.concat([report.rel_error_in, report.rel_error_out]).mean()))
    loads = [m.load for m in modules]
    record["expert_share"] = [(n / n.sum()).tolist() for n in loads] if all(n.sum() > 0 for n in loads) else None
    for m in modules:
        m.load = None
    return tuned, record
