"""GPTQ on CPU: one-shot weight quantization with second-order error feedback (Frantar et al. 2023).

    from workbench.data import calibration_batch
    from workbench.quant import QuantConfig, resolve_spec
    from workbench.quant.gptq import gptq_quantize_model

    calib = calibration_batch(tokenizer, "lee", n_samples=32, seqlen=512, seed=0)   # [32, 512]
    plan = resolve_spec(model, QuantConfig(bits=4, group_size=128, method="gptq"))  # all but lm_head
    qparams, report = gptq_quantize_model(model, plan, calib)   # weights written in place
    pandas.DataFrame(report)[["module", "rel_output_error", "rtn_rel_output_error"]]

Pieces, usable on their own:
    collect_hessians(model, names, calib)   -> {name: H [in, in]}, H = 2/N sum_tokens x x^T
    gptq_quantize_weight(W, H, config)      -> W_hat, scale, zero, info   (one layer)
    gptq_quantize_model(model, plan, calib) -> {name: (scale, zero)}, report (block by block)
    relative_output_error(W, W_hat, H)      -> sqrt(tr(dW H dW^T) / tr(W H W^T))  (from workbench.quant.grid)

The algorithm is the reference `fasterquant`: dead inputs zeroed, H damped by damp * mean(diag H),
the upper Cholesky factor of H^-1, columns quantized one at a time with the error fed back into
the not-yet-quantized columns of the block, and lazy updates of the rest every `block_size`
columns. Conventions and the few places where this file departs from the reference:

- One grid. Scales and zeros come from workbench.quant.grid (`choose_qparams`, so symmetric,
  round_zero, zero_in_range, mse_clip and scale_dtype all behave as for RTN), and the column
  rounding is the same arithmetic as `quantize`/`dequantize`, so W_hat is exactly
  dequantize(quantize(W_hat, scale, zero), scale, zero). scale/zero are [out, n_groups] per
  ORIGINAL group (n_groups = ceil(in / group_size), the last group may be shorter), [out, 1]
  for channel/tensor granularity.
- Group parameters are chosen when the loop reaches a group's first column, from that group's
  current (error-updated) values; the reference reads them from W, which misses the updates of
  the current block when groups do not start on block boundaries.
- act_order with groups always uses static groups: every group's parameters are computed from
  the un-permuted W before the loop (the reference's `static_groups`), so that one scale/zero
  per original group describes the result and no `g_idx` is needed. info["note"] says so when
  static_groups was not asked for. Channel/tensor parameters come from the whole W up front.
- A damped Hessian that is not positive definite is retried with damp x10 (up to 4 times);
  info records the damp used and the retries. N in H = 2/N sum x x^T counts tokens (rows of the
  linear's input), not sequences as in the reference: only the scale of H differs, which GPTQ
  and the relative errors ignore.
- gptq_quantize_model works block by block like the reference's `llama_sequential`: each
  block's Hessians come from the outputs of the already-quantized blocks before it. Every block
  gets the extra arguments (attention mask, position embeddings) that the model itself passes
  it, since Gemma-3 alternates sliding-window and global layers with different ones.
- Modules of a block that read the same input with the same config (q/k/v, gate/up) are
  quantized in one call on their stacked rows: GPTQ treats rows independently, so each gets the
  result it would get alone (up to float summation order), for one Cholesky and one column loop.
  The report's `quantized_with` names the partners; `time_s` is the joint time shared by rows.
- true_sequential=True (the reference's --true-sequential, GPTQModel's default) takes each
  linear's Hessian from the block's already-quantized linears before it, in one forward per
  block over all samples at once (see gptq_quantize_model); the default takes every Hessian
  of a block from its full-precision linears, as the reference's default.
- x^T x is computed from the blocks on and above the diagonal (`_gram`): 1.4x faster, the same sums up
  to float rounding.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.modules import check_finite, module_info
from workbench.quant.grid import (QuantConfig, QuantizedWeight, _check_bool, choose_qparams, dequantize,
                                  relative_output_errors)
from workbench.quant.registry import QuantMethod, register_method
from workbench.quant.rtn import fake_quantize


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    """GPTQ's settings on top of the grid's (QuantConfig's fields)."""

    method: str = "gptq"
    damp: float = 0.01               # added to H's diagonal, as a fraction of its mean (raised x10 if needed)
    act_order: bool = False          # quantize the most active input columns first (by diag H)
    static_groups: bool = False      # every group's scale and zero from the un-permuted W, before the loop
    block_size: int = 128            # columns between lazy updates of the rest of W (speed only)
    true_sequential: bool = False    # Hessians from the block's already-quantized linears (one forward a block)

    ADDED_LATER = ("true_sequential",)   # points stored before it keep their keys (QuantConfig.to_json)

    def __post_init__(self):
        super().__post_init__()
        for name in ("act_order", "static_groups", "true_sequential"):
            _check_bool(self, name)
        if not 0 < self.damp < 1:
            raise ValueError(f"damp is a fraction of the mean Hessian diagonal in (0, 1), got {self.damp!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")

MAX_DAMP_RETRIES = 4  # damp x10 per retry: 0.01 -> 100 at most


# -----------------------------------------------------------------------------
# one layer


@contextlib.contextmanager
def _single_thread():
    """Run torch on one intra-op thread for the duration (a process-wide setting, restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1: [in, in], the damp used, retries."""
    mean_diag = torch.diag(H).mean()
    if not mean_diag > 0:
        raise ValueError(f"the Hessian's diagonal has mean {mean_diag.item():g} <= 0, so it is not 2/N X^T X "
                         "of real activations; check how it was collected")
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for retry in range(MAX_DAMP_RETRIES + 1):
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)        # [in, in] lower
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0 and torch.isfinite(U).all():
                return U, damp, retry
        if retry < MAX_DAMP_RETRIES:
            damp *= 10
    raise ValueError(f"the {H.shape[0]}x{H.shape[0]} Hessian is not positive definite even with damping "
                     f"raised to damp={damp:g} (x mean diagonal) after {MAX_DAMP_RETRIES} retries. Fix: "
                     "calibrate on more data (many more tokens than the layer's inputs) or set a larger "
                     "QuantConfig.damp")


@torch.no_grad()
@_single_thread()  # small ops: more threads only add OpenMP synchronisation (10-40x slower on a busy CPU)
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor,
                         config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """GPTQ-quantize one weight matrix W [out, in] given the Hessian H [in, in] of its inputs.

    Returns (W_hat, scale, zero, info): W_hat [out, in] dequantized, in W's dtype; scale and zero
    [out, n_groups] float32 per original group ([out, 1] for channel or tensor granularity), such
    that dequantize(quantize(W_hat, scale, zero, config), scale, zero, config) reproduces W_hat
    exactly (in float32). info holds `damp` (the fraction finally used), `damp_retries`,
    `static_groups` (whether group parameters were fixed before the loop), `dead_inputs`
    (inputs never active: their weights become 0), `loss` (GPTQ's own estimate of the added
    squared output error) and `note` (a sentence on anything unusual, else ""). Raises
    ValueError for non-finite W or H and for a Hessian that no damping makes positive definite.
    """
    if W.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix [out, in], got shape {tuple(W.shape)}")
    n_out, n_in = W.shape
    if H.shape != (n_in, n_in):
        raise ValueError(f"the Hessian must be [in, in] = [{n_in}, {n_in}] for a weight of shape "
                         f"{tuple(W.shape)}, got {tuple(H.shape)}")
    check_finite(W, why="quantizing it would spread them")
    if not torch.isfinite(H).all():
        raise ValueError("the Hessian holds NaN or inf values: the calibration forward produced non-finite "
                         "activations. Check the model in full precision on the calibration batch (and the "
                         "layers quantized before this one)")
    notes = []
    W0 = W
    W = W.detach().clone().float()                                   # [out, in]
    H = H.detach().clone().float()                                   # [in, in]
    dead = torch.diag(H) == 0                                        # [in] inputs never active
    H[dead, dead] = 1
    W[:, dead] = 0
    if dead.any():
        notes.append(f"{int(dead.sum())} inputs were never active on the calibration data; "
                     "their weights were set to 0.")

    g = config.group_len(n_in)                                       # columns per group (whole row unless grouping)
    grouped = config.granularity == "group"
    n_groups = math.ceil(n_in / g) if grouped else 1
    static = grouped and (config.static_groups or config.act_order)
    if grouped and config.act_order and not config.static_groups and n_groups > 1:
        notes.append("act_order with groups: every group's scale/zero was computed from the un-permuted weights "
                     "before the loop (static_groups), so that one scale/zero per original group describes the result.")
    if static or not grouped:
        scale, zero = (p.contiguous() for p in choose_qparams(W, config))   # [out, n_groups] from the un-permuted W
        S = scale.repeat_interleave(g, dim=1)[:, :n_in]              # [out, in] per-column scale
        Z = zero.repeat_interleave(g, dim=1)[:, :n_in]               # [out, in] per-column zero
    else:
        scale = W.new_zeros(n_out, n_groups)                         # filled as the loop reaches each group
        zero = W.new_zeros(n_out, n_groups)
        S, Z = W.new_zeros(n_out, n_in), W.new_zeros(n_out, n_in)

    perm = None
    if config.act_order:                                             # most active inputs first
        perm = torch.argsort(torch.diag(H), descending=True)        # [in]
        W, H, S, Z = W[:, perm], H[perm][:, perm], S[:, perm], Z[:, perm]
    Hinv, damp, retries = _inverse_hessian_factor(H, config.damp)   # [in, in] upper
    if retries:
        notes.append(f"the damped Hessian was not positive definite at damp={config.damp:g}; damping was raised "
                     f"{retries}x to damp={damp:g} (calibrating on more tokens usually avoids this).")

    # The loop works on transposed copies ([in, out]) so that a column is a contiguous row.
    Wt, St, Zt = W.T.contiguous(), S.T.contiguous(), Z.T.contiguous()  # [in, out] each
    codes = W.new_zeros(n_in, n_out)                                  # [in, out] integer codes, loop order
    loss = W.new_zeros(n_out)                                         # [out]
    for i1 in range(0, n_in, config.block_size):
        i2 = min(i1 + config.block_size, n_in)
        W1 = Wt[i1:i2].clone()                                        # [b, out] updated column by column
        Err1 = torch.zeros_like(W1)                                   # [b, out] scaled errors for the lazy update
        Hinv1 = Hinv[i1:i2, i1:i2]                                    # [b, b]
        inv_d = (1 / torch.diag(Hinv1)).tolist()                      # [b] floats
        for i in range(i2 - i1):
            j = i1 + i
            if grouped and not static and j % g == 0:                 # a group starts: params from its current values
                end = min(j + g, n_in)
                cols = W1[i:end - i1]                                 # [<=g, out]
                if end > i2:                                          # it runs past the block: apply pending updates
                    cols = torch.cat([cols, Wt[i2:end] - Hinv[i1:i2, i2:end].T @ Err1])
                s, z = choose_qparams(cols.T, config)                 # [out, 1] each
                scale[:, j // g], zero[:, j // g] = s[:, 0], z[:, 0]
                St[j:end], Zt[j:end] = s[:, 0], z[:, 0]
            w, s, z = W1[i], St[j], Zt[j]                             # [out] each
            q = codes[j]
            torch.round(w / s + z, out=q).clamp_(0, config.maxq)      # as quantize()
            err = Err1[i]
            torch.sub(w, (q - z).mul_(s), out=err).mul_(inv_d[i])     # (w - dequantized) / Hinv[j, j]
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1)                 # feed the error to the block's later columns
        loss += Err1.pow(2).sum(0) / 2
        Wt[i2:] -= Hinv[i1:i2, i2:].T @ Err1                          # lazy update of the remaining columns

    codes = codes.T                                                   # [out, in]
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    W_hat = dequantize(codes.to(torch.uint8), scale, zero, config)  # [out, in] float32
    if not (torch.isfinite(W_hat).all() and torch.isfinite(scale).all() and torch.isfinite(zero).all()):
        raise ValueError(f"GPTQ produced non-finite weights (damp={damp:g}): the Hessian is too ill-conditioned "
                         "in float32. Fix: calibrate on more data or set a larger QuantConfig.damp")
    info = dict(damp=damp, damp_retries=retries, static_groups=static, dead_inputs=int(dead.sum()),
                loss=loss.sum().item(), note=" ".join(notes))
    return W_hat.to(W0.dtype), scale, zero, info


# -----------------------------------------------------------------------------
# Hessians from calibration data


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early."""


def _gram(x: torch.Tensor, n_blocks: int = 4) -> torch.Tensor:
    """x^T x [in, in] for x [tokens, in], from the blocks on and above the diagonal only (the lower
    ones are their transposes): (k + 1) / 2k of the full product's work, 1.4x faster for k = 4 on
    the 576- and 1536-wide inputs of SmolLM2."""
    n = x.shape[1]
    b = -(-n // n_blocks)                                            # columns per block
    out = x.new_empty(n, n)
    for i in range(0, n, b):
        rows = x[:, i:i + b].T @ x[:, i:]                            # [b, n - i]: block row i, right of the diagonal
        out[i:i + b, i:] = rows
        out[i + b:, i:i + b] = rows[:, b:].T
    return out


def _linears(model: nn.Module, names) -> dict[str, nn.Linear]:
    found = dict(model.named_modules())
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no module named {missing[0]!r} in the model ({len(missing)} missing); names look like: "
                         f"{', '.join(n for n in list(found)[1:5])}, ...")
    wrong = [n for n in names if not isinstance(found[n], nn.Linear)]
    if wrong:
        raise ValueError(f"{wrong[0]!r} is a {type(found[wrong[0]]).__name__}, not an nn.Linear; GPTQ quantizes "
                         "linear layers only")
    return {n: found[n] for n in names}


def _check_calibration(calibration: torch.Tensor) -> None:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise ValueError("calibration must be a LongTensor of token ids [n_samples, seqlen] (see "
                         f"workbench.data.calibration_batch), got {type(calibration).__name__} "
                         f"{getattr(calibration, 'dtype', '')} {tuple(getattr(calibration, 'shape', ()))}")


@contextlib.contextmanager
def _accumulating_hessians(modules: dict[str, nn.Linear]):
    """Forward pre-hooks that keep H = 2/N sum x x^T [in, in] (float32, running average over the N
    tokens seen) per module; yields (H, n_tokens, forward) and always removes the hooks.

    `forward(call)` runs one forward pass (`call()`, e.g. the model on one batch). Once a pass has
    shown every module called exactly once, later passes end as soon as the last of them has its
    input (before its own product): whatever follows feeds no Hessian, and the Hessians are those
    of full passes."""
    H = {name: torch.zeros(m.in_features, m.in_features, device=m.weight.device) for name, m in modules.items()}
    n = dict.fromkeys(modules, 0)
    last = {}  # the latest input and its x^T x: q/k/v (and gate/up) are called on the same tensor
    calls = dict.fromkeys(modules, 0)            # calls per module in the current pass
    state = {"stop": False}                       # whether passes may end at the last module

    def make_hook(name):
        def hook(module, args):
            x = args[0]
            if last.get("x") is not x:
                x2 = x.detach().reshape(-1, x.shape[-1]).float()          # [tokens, in]
                last.update(x=x, xtx=_gram(x2), t=x2.shape[0])
            total = n[name] + last["t"]
            H[name].mul_(n[name] / total).add_(last["xtx"], alpha=2 / total)
            n[name] = total
            calls[name] += 1
            if state["stop"] and all(calls.values()):
                raise _StopForward
        return hook

    def forward(call):
        calls.update(dict.fromkeys(calls, 0))
        try:
            call()
        except _StopForward:
            pass
        state["stop"] = all(c == 1 for c in calls.values())

    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in modules.items()]
    try:
        yield H, n, forward
    finally:
        for h in handles:
            h.remove()
        last.clear()


def collect_hessians(model: nn.Module, module_names, calibration: torch.Tensor, batch_size: int = 8,
                     return_counts: bool = False):
    """Hessians H = 2/N sum x x^T [in, in] (float32) of the inputs of the named nn.Linear modules.

    Runs the calibration token ids [n_samples, seqlen] through the model in batches of
    `batch_size` (inference mode, use_cache=False, eval mode) with forward hooks that keep a
    running average over the N tokens each module has seen, as the reference GPTQ does (which
    counts sequences instead: only the scale differs). When the first batch shows every module
    called once per forward, later batches stop at the last module's input (the LM head and any
    later layer feed no Hessian). The hooks are always removed, also when the forward fails.
    Returns {name: H}; with `return_counts=True`, ({name: H}, {name: N}).
    """
    modules = _linears(model, module_names)
    _check_calibration(calibration)
    if not modules:                               # nothing to collect: no forward pass
        return ({}, {}) if return_counts else {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _accumulating_hessians(modules) as (H, n, forward), torch.inference_mode():
            for batch in calibration.split(batch_size):
                forward(lambda: model(input_ids=batch.to(device), use_cache=False))
    finally:
        model.train(was_training)
    H = {name: h.clone() for name, h in H.items()}
    return (H, dict(n)) if return_counts else H


# -----------------------------------------------------------------------------
# the model, block by block


def _find_blocks(model: nn.Module, names) -> tuple[str, nn.ModuleList | None]:
    """The ModuleList (name, module) that holds the most planned modules: the transformer blocks."""
    best, best_count = ("", None), 0
    for list_name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and list_name:
            count = sum(n.startswith(list_name + ".") for n in names)
            if count > best_count:
                best, best_count = (list_name, m), count
    return best


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """A block call's hidden states and the rest of its arguments."""
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    if "hidden_states" not in kwargs:
        raise ValueError("could not find the hidden states among a transformer block's arguments")
    return kwargs.pop("hidden_states"), (), kwargs


def _identity_block(*args, **kwargs):
    return _split_hidden(args, kwargs)[0]


def _capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, calibration: torch.Tensor,
                          batch_size: int) -> tuple[list[torch.Tensor], list[list[tuple[tuple, dict]]]]:
    """Inputs of the first block per calibration batch, and every block's other arguments.

    Returns (hidden, extras): hidden[k] [b, seqlen, d] is block 0's input on batch k, and
    extras[i][k] = (args, kwargs) is what the model passed block i besides the hidden states.
    While capturing, each block's forward is the identity and a pre-hook records its arguments;
    the last block's hook raises _StopForward, so one pass costs about an embedding lookup.
    """
    device = next(model.parameters()).device
    hidden, extras = [], [[] for _ in blocks]

    def make_hook(i):
        def hook(module, args, kwargs):
            x, rest, kw = _split_hidden(args, kwargs)
            if i == 0:
                hidden.append(x)
            extras[i].append((rest, kw))
            if i == len(blocks) - 1:
                raise _StopForward
        return hook

    handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for b in blocks:
            b.forward = _identity_block                      # an instance attribute shadows the class's forward
        with torch.inference_mode():
            for batch in calibration.split(batch_size):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            b.__dict__.pop("forward", None)
    n_batches = len(hidden)
    if any(len(e) not in (0, n_batches) for e in extras):
        raise ValueError("a transformer block was called more than once per forward pass; GPTQ's block-by-block "
                         "procedure cannot replay such a model")
    return hidden, extras


def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _stackable(a: QuantConfig, b: QuantConfig) -> bool:
    """Whether modules with these configs (and one input) may be quantized in one GPTQ call on their
    stacked rows: the same config, and not tensor granularity (one scale over a whole matrix)."""
    return a == b and a.granularity != "tensor"


def fusable(names: list[str], plan: dict, H: dict) -> list[list[str]]:
    """Split `names` into runs quantized in one GPTQ call: modules with the same config and the same
    Hessian (q/k/v read one input, as do gate/up). GPTQ treats the rows of W independently, so
    stacking the rows gives each module the result it would get alone, for one Cholesky and one
    column loop instead of several. Tensor granularity shares one scale over the whole matrix, so
    it is never stacked."""
    runs: list[list[str]] = []
    for name in names:
        cfg, h = plan[name], H[name]
        run = next((r for r in runs if _stackable(plan[r[0]], cfg) and (H[r[0]] is h or torch.equal(H[r[0]], h))),
                   None)
        if run is None:
            runs.append([name])
        else:
            run.append(name)
    return runs


def _quantize_modules(names: list[str], modules: dict, config: QuantConfig, H: torch.Tensor,
                      n_tokens: int) -> list[tuple]:
    """GPTQ the named modules (same config, same inputs) in one call on their stacked rows, in place;
    return [(name, (scale, zero), report row)]."""
    t0 = time.perf_counter()
    Ws = [modules[n].weight.data for n in names]
    try:
        W_hat, scale, zero, info = gptq_quantize_weight(torch.cat(Ws) if len(Ws) > 1 else Ws[0], H, config)
    except ValueError as e:
        raise ValueError(f"{', '.join(names)}: {e}") from None
    elapsed = time.perf_counter() - t0
    rows = [W.shape[0] for W in Ws]
    out = []
    for name, W, W_hat_m, s, z in zip(names, Ws, W_hat.split(rows), scale.split(rows), zero.split(rows)):
        Wf = W.float()
        err, rtn_err = relative_output_errors(Wf, [W_hat_m, fake_quantize(W, config)], H)
        meta = module_info(name)
        row = dict(module=name, layer=meta.layer, component=meta.component, method="gptq", bits=config.bits,
                   granularity=config.granularity, groups=config.describe_groups(W.shape[1]),
                   symmetric=config.symmetric, act_order=config.act_order, shape=tuple(W.shape),
                   n_tokens=n_tokens, damp=info["damp"], damp_retries=info["damp_retries"], note=info["note"],
                   rel_output_error=err, rtn_rel_output_error=rtn_err,
                   rel_weight_error=(torch.linalg.norm(Wf - W_hat_m.float()) / torch.linalg.norm(Wf)).item(),
                   time_s=elapsed * W.shape[0] / sum(rows),             # the joint call's time, shared by rows
                   quantized_with=", ".join(n for n in names if n != name))
        out.append((name, (s.contiguous(), z.contiguous()), row))
        W.copy_(W_hat_m)
    return out


def _same_input(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two linears read the same input: one tensor, or equal ones (AWQ's x / s per module)."""
    return a is b or (a.shape == b.shape and torch.equal(a, b))


def _call_groups(block: nn.Module, names: list[str], modules: dict, plan: dict, x: torch.Tensor, args: tuple,
                 kwargs: dict) -> list[list[str]]:
    """The planned modules of `block` in the order its forward calls them, in runs of neighbours
    that read one input with one config (q/k/v, gate/up; never tensor granularity): found by one
    forward of the block on a one-sample input `x` with hooks that record each call's input.
    Planned modules the probe does not call (an expert no token of the sample is routed to)
    follow as runs of one; the pass itself checks what the probe could not see."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [modules[n].register_forward_pre_hook(lambda m, inputs, name=n: calls.append((name, inputs[0])))
               for n in names]
    try:
        with torch.inference_mode():
            block(x, *args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    runs: list[list[str]] = []
    seen = set()
    for k, (name, inp) in enumerate(calls):
        if name in seen:                                                  # the pass reports it
            continue
        seen.add(name)
        cfg, prev = plan[name], calls[k - 1] if k else None
        if (prev is not None and prev[0] == runs[-1][-1] and _stackable(plan[runs[-1][0]], cfg)
                and _same_input(inp, prev[1])):
            runs[-1].append(name)
        else:
            runs.append([name])
    return runs + [[n] for n in names if n not in seen]


def _quantize_block_in_one_pass(block: nn.Module, runs: list[list[str]], modules: dict, plan: dict,
                                x: torch.Tensor, args: tuple, kwargs: dict) -> tuple[torch.Tensor, list[tuple]]:
    """Run `block` once on every calibration input x [n_samples, seqlen, d]; at the first call of
    any module of a run, before its product, the run's Hessian from the input at hand (which the
    block's earlier, already-quantized linears produced) and GPTQ of the run, in place. Every
    planned module must be called exactly once, and a run's modules on one input; otherwise
    ValueError (true_sequential=False handles such blocks). Returns the quantized block's output
    (the next block's input) and [(name, (scale, zero), report row)]."""
    run_of = {n: tuple(run) for run in runs for n in run}
    read: dict[tuple, torch.Tensor] = {}                  # run -> the input it was quantized on
    calls = dict.fromkeys(run_of, 0)
    done: list[tuple] = []

    def hook(module, inputs, name):
        calls[name] += 1
        run = run_of[name]
        if calls[name] > 1:
            raise ValueError(f"{name} is called more than once per forward of its block; true_sequential quantizes "
                             "a linear at its first call and cannot take the later calls' inputs into its Hessian. "
                             "Fix: true_sequential=False")
        if run in read:                                   # quantized at a partner's call: same input?
            if not _same_input(inputs[0], read[run]):
                raise ValueError(f"{name} reads another input than {run[0]} in the calibration pass, though they "
                                 "read one input in the one-sample probe; fix: true_sequential=False")
            return
        x2 = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()      # [tokens, in]
        H = _gram(x2).mul_(2 / x2.shape[0])                                    # 2/N sum x x^T
        n_tokens = x2.shape[0]
        del x2                                                                 # a copy for half-precision inputs
        read[run] = inputs[0]
        done.extend(_quantize_modules(list(run), modules, plan[name], H, n_tokens))

    handles = [modules[n].register_forward_pre_hook(lambda m, inputs, name=n: hook(m, inputs, name)) for n in run_of]
    try:
        with torch.inference_mode():
            out = _block_output(block(x, *args, **kwargs))
    finally:
        for h in handles:
            h.remove()
        read.clear()
    never = [n for n, c in calls.items() if c == 0]
    if never:
        raise ValueError(f"{never[0]} is planned but its block's forward never called it on the calibration data, "
                         "so it has no inputs to calibrate on; leave it out of the plan")
    return out, done


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, plan: dict[str, QuantConfig], calibration: torch.Tensor,
                        batch_size: int = 8, progress: bool = True) -> tuple[dict, list[dict]]:
    """GPTQ-quantize the planned nn.Linear modules of `model` in place, block by block.

    `plan` is {module name: QuantConfig with method="gptq"} (e.g. from quantize.resolve_spec);
    `calibration` token ids [n_samples, seqlen]. The transformer blocks (the ModuleList holding
    the planned modules) are processed in order as in the reference: the inputs of block 0 are
    captured once, then for each block the Hessians of its planned linears are collected from
    its inputs, each linear is quantized (W_hat written into its weight), and the QUANTIZED
    block is run to produce the next block's inputs. With `true_sequential` set in the configs
    (all or none), each block runs once, on every calibration sample in one batch: at the first
    call of each run of linears (q/k/v, then o, gate/up, down) the run is quantized from the
    Hessian of its input at that moment, which the block's already-quantized linears produced,
    and the pass goes on with the quantized weights (GPTQModel's default order; one block
    forward instead of 1.75, and one block's activations for every sample held at once, whatever
    `batch_size`, which this mode does not use). Planned
    linears outside the blocks are quantized last, with Hessians from a full forward of the
    (quantized) model. Returns ({name: (scale, zero)}, report): one dict per module with module, layer, component, bits,
    groups, n_tokens, damp, damp_retries, note, time_s, rel_weight_error, and rel_output_error
    and rtn_rel_output_error, the relative output errors of GPTQ and of plain RTN with the same
    config on the same calibration inputs.
    """
    modules = _linears(model, plan)
    for name, cfg in plan.items():
        if not isinstance(cfg, QuantConfig) or cfg.method != "gptq":
            raise ValueError(f"plan[{name!r}] must be a QuantConfig with method='gptq', got {cfg!r}")
    true_sequential = {bool(getattr(cfg, "true_sequential", False)) for cfg in plan.values()}
    if len(true_sequential) > 1:
        raise ValueError("true_sequential must be the same for every planned module: it decides how each block is "
                         "run, so set it on every GPTQ config of the spec or on none")
    true_sequential = true_sequential.pop() if true_sequential else False
    _check_calibration(calibration)
    list_name, blocks = _find_blocks(model, plan)
    in_block: dict[int, list[str]] = {}
    outside = []
    for name in plan:
        if blocks is not None and name.startswith(list_name + "."):
            in_block.setdefault(int(name[len(list_name) + 1:].split(".")[0]), []).append(name)
        else:
            outside.append(name)

    qparams, report = {}, []
    was_training = model.training
    model.eval()
    try:
        if in_block:
            if true_sequential:                      # one batch of every sample; probe_extras: one sample's
                hidden, extras = _capture_block_inputs(model, blocks, calibration, len(calibration))
                _, probe_extras = _capture_block_inputs(model, blocks, calibration[:1], 1)
            else:
                hidden, extras = _capture_block_inputs(model, blocks, calibration, batch_size)
            last = max(in_block)
            for i in tqdm(range(last + 1), desc="GPTQ", unit="block", disable=not progress):
                block, names = blocks[i], in_block.get(i, [])
                if names and not extras[i]:
                    raise ValueError(f"block {list_name}.{i} holds planned modules but the model's forward "
                                     "never calls it")
                done = []
                if names and true_sequential:        # Hessians of the quantized block's own inputs, one pass
                    runs = _call_groups(block, names, modules, plan, hidden[0][:1], *probe_extras[i][0])
                    x, done = _quantize_block_in_one_pass(block, runs, modules, plan, hidden[0], *extras[i][0])
                    hidden = [x]
                else:
                    if names:                        # Hessians of the full-precision block, then GPTQ
                        with _accumulating_hessians({n: modules[n] for n in names}) as (H, n, forward), \
                                torch.inference_mode():
                            for x, (args, kwargs) in zip(hidden, extras[i]):
                                forward(lambda: block(x, *args, **kwargs))    # ends at the block's last planned linear
                        for run in fusable(names, plan, H):
                            done += _quantize_modules(run, modules, plan[run[0]], H[run[0]], n[run[0]])
                    if i < last:                     # the next block's inputs, from this quantized block
                        with torch.inference_mode():
                            hidden = [_block_output(block(x, *args, **kwargs))
                                      for x, (args, kwargs) in zip(hidden, extras[i])]
                for name, qp, row in done:
                    qparams[name] = tuple(t.clone() for t in qp)   # out of inference mode (the pass ran in it)
                    report.append(row)
            del hidden, extras
        if outside:
            H, n = collect_hessians(model, outside, calibration, batch_size, return_counts=True)
            for run in fusable(outside, plan, H):
                for name, qp, row in _quantize_modules(run, modules, plan[run[0]], H[run[0]], n[run[0]]):
                    qparams[name] = qp
                    report.append(row)
    finally:
        model.train(was_training)
    return qparams, report


MEASURES = ("time_s", "note", "rel_output_error", "rtn_rel_output_error", "n_tokens", "damp", "damp_retries",
            "act_order", "quantized_with")   # what a GPTQ row adds to quantize_model's report


def quantize_modules(model: nn.Module, plan: dict[str, QuantConfig], calibration=None, hessians=None,
                     progress: bool = True) -> list[dict]:
    """The registry's handler: `gptq_quantize_model`, one row per module with its QuantizedWeight
    and every GPTQ diagnostic (MEASURES)."""
    params, rows = gptq_quantize_model(model, plan, calibration, progress=progress)
    return [dict(module=r["module"], state=QuantizedWeight(plan[r["module"]], *params[r["module"]]),
                 **{k: r[k] for k in MEASURES if k in r}) for r in rows]


register_method(QuantMethod("gptq", quantize_modules, GPTQConfig, needs_calibration=True, sequential=True))
