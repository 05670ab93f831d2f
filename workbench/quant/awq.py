"""Activation-aware weight quantization (AWQ, Lin et al. 2024), alone on the RTN grid or before GPTQ.

    from workbench.quant import QuantConfig, quantize_model
    qmodel, report = quantize_model(model, QuantConfig(bits=3, method="awq"), calibration=calib)
    qmodel, report = quantize_model(model, QuantConfig(bits=3, method="awq_gptq", act_order=True,
                                                       static_groups=True), calibration=calib)
    report[["module", "alpha", "clip", "rel_output_error", "rtn_rel_output_error"]]

A weight column that multiplies a large input channel carries more of the output. AWQ scales
input channel j of W by s_j before rounding and divides the input by s_j, so those columns get a
finer share of their group's grid:  y = W x = (W diag(s)) (diag(s)^-1 x),  Ŵ = Q(W diag(s)) diag(s)^-1.
The scales are s = a^α / sqrt(max(a^α) min(a^α)), with a the inputs' per-channel magnitude and
α searched on a grid of `awq_grid` values in [0, 1) for the one that minimizes the output error
on the calibration inputs; α = 0 (s = 1) is plain RTN, so the search never does worse than RTN on
that measure. Then (llm-awq's `auto_clip`) each group's range is shrunk, by the factor in 1,
0.95, ..., 0.55 that minimizes that group's output error, except for q and k (llm-awq leaves them
unclipped: their errors pass through the attention softmax).

Pieces, usable on their own:
    output_error(W, W_hat, H)              -> [out] ||X (w_o - ŵ_o)||^2 per row, from H ∝ X^T X
    awq_scales(W, H, config)               -> s [in], α, and the error at each α
    awq_clip_range(W, H, config)           -> lo, hi [out, n_groups]: the searched ranges
    awq_quantize_weight(W, H, config)      -> W_hat, QuantizedWeight (with column_scale = s), info

Where this file departs from the reference (llm-awq, AutoAWQ), and why:
- a_j is the root mean square of input channel j, read off the diagonal of the Hessian that
  quantize_model already collects (H = 2/N Σ x xᵀ), not the mean |x_j|: no second pass over the
  calibration data. The α search absorbs most of the difference (both grow with the channel's size).
- The error searched is each linear's own output error tr(ΔW H ΔWᵀ), summed over the linears that
  read the same input (q/k/v share one s, as do gate/up, as in the reference, so that s could be
  folded into the norm before them); the reference measures it after the attention or MLP block.
- In this fake-quantization mode s is not folded into the previous layer: Ŵ = Q(W diag(s)) /
  s is written into the weight, which is the same function. A packed checkpoint stores s per
  input column (`QuantizedWeight.column_scale`), rounded to `scale_dtype` so it reproduces Ŵ.

"awq_gptq" searches s the same way (without clipping: GPTQ picks its own ranges), then runs
this workbench's GPTQ block by block on W diag(s) with inputs diag(s)^-1 x (forward pre-hooks
that are always removed), so GPTQ's Hessians are those of the scaled inputs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, fields

import torch
from torch import nn

from workbench.modules import module_info
from workbench.quant.gptq import GPTQConfig, fusable, collect_hessians, gptq_quantize_model
from workbench.quant.grid import (QuantConfig, QuantizedWeight, _check_bool, _check_weight, _grouped,
                                  choose_qparams, dequantize, group_range, qparams_from_range, quantize,
                                  relative_output_error, relative_output_errors)
from workbench.quant.registry import QuantMethod, register_method
from workbench.quant.rtn import fake_quantize

CLIP_STEPS = 10          # shrink factors 1, 0.95, ..., 0.55 (llm-awq: n_grid 20, max_shrink 0.5)
NO_CLIP = ("q", "k")     # components whose ranges are never shrunk (llm-awq)


def _check_grid(config) -> None:
    if isinstance(config.awq_grid, bool) or not isinstance(config.awq_grid, int) or config.awq_grid < 1:
        raise ValueError(f"awq_grid is the number of α values tried in [0, 1), a positive integer; "
                         f"got {config.awq_grid!r}")


@dataclass(frozen=True)
class AWQConfig(QuantConfig):
    """AWQ's settings on top of the grid's (QuantConfig's fields): scales, then RTN with clipping."""

    method: str = "awq"
    awq_grid: int = 20               # α tried: 0, 1/grid, ..., (grid-1)/grid (llm-awq's n_grid = 20)
    awq_clip: bool = True            # search each group's range by output error (llm-awq's auto_clip)

    def __post_init__(self):
        super().__post_init__()
        _check_bool(self, "awq_clip")
        _check_grid(self)
        if self.mse_clip:
            raise ValueError("AWQ searches each group's range by output error (awq_clip); mse_clip, which "
                             "shrinks it by weight error, would be overridden: set mse_clip=False")


@dataclass(frozen=True)
class AWQGPTQConfig(GPTQConfig):
    """AWQ's scales, then GPTQ (GPTQConfig's fields: damp, act_order, static_groups, block_size,
    true_sequential)."""

    method: str = "awq_gptq"
    awq_grid: int = 20               # α tried, as for AWQConfig

    def __post_init__(self):
        super().__post_init__()
        _check_grid(self)


def _as_gptq(config: AWQGPTQConfig) -> GPTQConfig:
    keep = {f.name for f in fields(GPTQConfig)} - {"method"}
    return GPTQConfig(**{k: getattr(config, k) for k in keep})


# -----------------------------------------------------------------------------
# one weight (or the stacked rows of the linears that read one input)


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per-row output error ||X (w_o - ŵ_o)||² (up to H's scale) [out], from H ∝ XᵀX [in, in]."""
    delta = w.float() - w_hat.float()
    return ((delta @ hessian) * delta).sum(dim=1)


def _channel_magnitude(hessian: torch.Tensor) -> torch.Tensor:
    """Root mean square of each input channel [in], from H = 2/N Σ x xᵀ."""
    return (hessian.diagonal() / 2).clamp(min=0).sqrt()


def _scales(magnitude: torch.Tensor, alpha: float, dtype: str) -> torch.Tensor:
    s = magnitude.pow(alpha).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return s.to(getattr(torch, dtype)).float()           # what a checkpoint stores reproduces Ŵ


def _from_grid(ws: torch.Tensor, s: torch.Tensor, scale, zero, config) -> torch.Tensor:
    """Ŵ = Q(W diag(s)) diag(s)^-1 from the scaled weight `ws` and its grid (scale, zero): the one
    expression for Ŵ, which packing repeats."""
    return dequantize(quantize(ws, scale, zero, config), scale, zero, config) / s


def awq_scales(w: torch.Tensor, hessian: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, float, list]:
    """The input-channel scales s [in] that minimize the output error of RTN on W diag(s).

    Tries α = 0, 1/grid, ..., on s = a^α (normalized so that max(s) min(s) = 1), a the inputs'
    RMS per channel; returns (s, the best α, [(α, error)]). α = 0 is plain RTN (s = 1)."""
    w = w.float()
    a = _channel_magnitude(hessian)
    tried, best = [], None
    for i in range(config.awq_grid):
        alpha = i / config.awq_grid
        s = _scales(a, alpha, config.scale_dtype)
        ws = w * s
        scale, zero = choose_qparams(ws, config)
        err = output_error(w, _from_grid(ws, s, scale, zero, config), hessian).sum().item()
        tried.append((alpha, err))
        if best is None or err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1], tried


def awq_clip_range(ws: torch.Tensor, hessian: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each group's range [lo, hi] of `ws` [out, in] shrunk by the factor p in 1, 0.95, ..., 0.55
    that minimizes the group's own output error δ H_gg δᵀ (llm-awq's auto_clip: |w| clamped at
    p · max|w| of the group); `hessian` is that of ws's inputs. Returns lo, hi and p [out, n_groups]."""
    lo, hi = group_range(ws, config)                                       # [out, G]
    if config.granularity != "group":
        raise ValueError("AWQ's range search works on groups (granularity='group'); set awq_clip=False for "
                         f"granularity={config.granularity!r}")
    g = config.group_len(ws.shape[1])
    wp, mask = _grouped(ws.float(), g)                                     # [out, G, g], [G, g]
    hp = torch.nn.functional.pad(hessian.float(), (0, wp.shape[1] * g - hessian.shape[0]) * 2)
    G = wp.shape[1]
    h_blocks = torch.stack([hp[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(G)])   # [G, g, g]
    amax = torch.maximum(lo.abs(), hi.abs())
    best = torch.full_like(lo, torch.inf)
    best_lo, best_hi, best_p = lo.clone(), hi.clone(), torch.ones_like(lo)
    for i in range(CLIP_STEPS):
        p = 1 - i / 20
        lo_p, hi_p = torch.maximum(lo, -p * amax), torch.minimum(hi, p * amax)
        scale, zero = qparams_from_range(lo_p, hi_p, config)               # [out, G]
        s3, z3 = scale.unsqueeze(-1), zero.unsqueeze(-1)
        q = (torch.round(wp / s3 + z3).clamp_(0, config.maxq) - z3) * s3
        delta = (wp - q).masked_fill_(~mask, 0.0)                          # [out, G, g]
        err = torch.einsum("ogi,gij,ogj->og", delta, h_blocks, delta)
        better = err < best
        best = torch.where(better, err, best)
        best_lo, best_hi = torch.where(better, lo_p, best_lo), torch.where(better, hi_p, best_hi)
        best_p = torch.where(better, torch.full_like(best_p, p), best_p)
    return best_lo, best_hi, best_p


@torch.no_grad()
def awq_quantize_weight(w: torch.Tensor, hessian: torch.Tensor, config: QuantConfig, s: torch.Tensor | None = None,
                        clip: bool | None = None) -> tuple[torch.Tensor, QuantizedWeight, dict]:
    """AWQ-quantize `w` [out, in] given the Hessian of its inputs [in, in]. Returns Ŵ (w's shape
    and dtype), its QuantizedWeight (scale, zero of W diag(s); column_scale = s) and info: alpha
    (None when `s` was given), clip (the mean shrink factor), errors (the α search). `s` [in]: use
    these scales instead of searching them (the handler searches one s per shared input); `clip`
    overrides config.awq_clip."""
    _check_weight(w)
    if hessian.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"the Hessian is {tuple(hessian.shape)} but the weight has {w.shape[1]} inputs")
    alpha, tried = None, []
    if s is None:
        s, alpha, tried = awq_scales(w, hessian, config)
    ws = w.float() * s
    if config.awq_clip if clip is None else clip:
        lo, hi, p = awq_clip_range(ws, hessian / s / s.unsqueeze(1), config)     # H of the inputs x / s
        scale, zero = qparams_from_range(lo, hi, config)
    else:
        (scale, zero), p = choose_qparams(ws, config), torch.ones(1)
    w_hat = _from_grid(ws, s, scale, zero, config)
    state = QuantizedWeight(config, scale, zero, column_scale=s)
    return w_hat.to(w.dtype), state, dict(alpha=alpha, clip=p.float().mean().item(), errors=tried)


# -----------------------------------------------------------------------------
# the registry's handlers


def _shared_scales(model: nn.Module, plan: dict, hessians: dict) -> dict[str, tuple]:
    """{name: (s, α, search seconds per module)}: one s per group of planned linears that read the
    same input with the same config (q/k/v, gate/up), searched on their stacked rows."""
    modules = dict(model.named_modules())
    found = {}
    for run in fusable(list(plan), plan, hessians):
        t0 = time.perf_counter()
        try:
            s, alpha, _ = awq_scales(torch.cat([modules[n].weight.data for n in run]), hessians[run[0]], plan[run[0]])
        except ValueError as e:
            raise ValueError(f"{', '.join(run)}: {e}") from None
        for name in run:
            found[name] = (s, alpha, (time.perf_counter() - t0) / len(run), ", ".join(n for n in run if n != name))
    return found


def quantize_modules(model: nn.Module, plan: dict[str, QuantConfig], calibration=None, hessians=None,
                     progress: bool = True) -> list[dict]:
    """The handler of "awq": one s per group of linears that read one input; then each linear's
    ranges searched (not q, k) and RTN on W diag(s), in place."""
    modules = dict(model.named_modules())
    rows = []
    for name, (s, alpha, search_s, partners) in _shared_scales(model, plan, hessians).items():
        w, cfg, H = modules[name].weight, plan[name], hessians[name]
        t0 = time.perf_counter()
        w_hat, state, info = awq_quantize_weight(w.data, H, cfg, s=s,
                                                 clip=cfg.awq_clip and module_info(name).component not in NO_CLIP)
        rows.append(dict(module=name, state=state, alpha=alpha, clip=info["clip"],
                         rtn_rel_output_error=relative_output_error(w.data, fake_quantize(w.data, cfg), H),
                         time_s=search_s + time.perf_counter() - t0, quantized_with=partners, note=""))
        w.data.copy_(w_hat)
    return rows


@contextlib.contextmanager
def _dividing_inputs(modules: dict[str, nn.Module], scales: dict[str, torch.Tensor]):
    """Forward pre-hooks x -> x / s on the named modules; always removed."""
    def make(s):
        def hook(module, args):
            return (args[0] / s.to(args[0].dtype), *args[1:])
        return hook
    handles = [modules[n].register_forward_pre_hook(make(s)) for n, s in scales.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def quantize_modules_gptq(model: nn.Module, plan: dict[str, QuantConfig], calibration=None, hessians=None,
                          progress: bool = True) -> list[dict]:
    """The handler of "awq_gptq": s searched as for "awq" (no clipping) on the Hessians of the model as
    it is, then GPTQ block by block on W diag(s) with inputs x / s; Ŵ = GPTQ's result / s. Its
    rel_output_error is on the unquantized model's calibration inputs, as for "awq"."""
    H = collect_hessians(model, list(plan), calibration)
    modules = dict(model.named_modules())
    shared = _shared_scales(model, plan, H)
    originals = {n: modules[n].weight.data.clone() for n in plan}
    scales = {n: shared[n][0] for n in plan}
    try:
        for n in plan:
            modules[n].weight.data.mul_(scales[n].to(modules[n].weight.dtype))
        with _dividing_inputs(modules, scales):
            params, report = gptq_quantize_model(model, {n: _as_gptq(plan[n]) for n in plan}, calibration,
                                                 progress=progress)
    except BaseException:
        for n in plan:                                        # nothing left half-scaled
            modules[n].weight.data.copy_(originals[n])
        raise
    rows = []
    for r in report:
        name = r["module"]
        w, (scale, zero), s, cfg = modules[name].weight, params[name], scales[name], plan[name]
        w_hat = _from_grid(w.data.float(), s, scale, zero, cfg)          # GPTQ's Ŵ_s is on its grid exactly
        w.data.copy_(w_hat.to(w.dtype))
        w0 = originals[name]
        err, rtn_err = relative_output_errors(w0, [w_hat, fake_quantize(w0, cfg)], H[name])
        rows.append(dict(module=name, state=QuantizedWeight(cfg, scale, zero, column_scale=s), alpha=shared[name][1],
                         rel_output_error=err, rtn_rel_output_error=rtn_err,
                         time_s=r["time_s"] + shared[name][2], damp=r.get("damp"), note=r.get("note", ""),
                         quantized_with=r.get("quantized_with", "")))
    return rows


register_method(QuantMethod("awq", quantize_modules, AWQConfig, needs_calibration=True))
register_method(QuantMethod("awq_gptq", quantize_modules_gptq, AWQGPTQConfig, needs_calibration=True,
                            sequential=True))
