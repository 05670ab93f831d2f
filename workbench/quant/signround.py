"""Learned rounding and clipping: SignRound (Cheng et al. 2023, Intel's `auto-round`), block by block.

    from workbench.quant import QuantConfig, quantize_model
    qmodel, report = quantize_model(model, QuantConfig(bits=3, method="signround"), calibration=calib)
    report[["module", "block_rel_error", "rtn_block_rel_error", "time_s"]]

Round-to-nearest takes each weight to its nearest grid point and each group's range from its
minimum and maximum; neither is what minimizes the error of the block's output. SignRound learns,
for every weight, an offset v in [-1/2, 1/2] added before rounding (so a weight may round the other
way), and for every group two factors a, b in [clip_floor, 1] that shrink its range (a learned clip):

    s, z = the grid of [a·lo, b·hi]            (grid.qparams_from_range: the same grid as RTN's)
    ŵ    = s · (clamp(round(w/s + v) + z, 0, maxq) − z)

v = 0, a = b = 1 is RTN, the starting point. v, a and b are trained by signed gradient descent
(each step moves every parameter by lr · sign(grad), lr falling linearly to 0 over `iters` steps)
on the mean squared error between the block's output with quantized weights, fed the outputs of
the already-quantized blocks before it, and the full-precision block's output on full-precision
inputs; rounding is straight-through. The setting with the lowest loss seen is kept.

Pieces:
    LearnedRounding(w, config)     an nn.Module with v, a, b for one weight: forward() -> Ŵ
                                   (differentiable), qparams() -> scale, zero, result() -> Ŵ exactly on that grid
    signround_quantize_model(model, plan, calibration) -> {name: (scale, zero)}, report

Where this file departs from the reference (auto-round), and why:
- Each step trains on one of the calibration batches of `batch_size` sequences captured up front
  (a fresh random order every pass over them), not on `batch_size` sequences drawn anew: a block's
  extra arguments (masks, position embeddings) are then exactly the ones the model passed.
- The clip factors are kept in [clip_floor, 1] (default 0.5), not [0, 1]: a range shrunk to
  nothing is never useful and makes a group's scale collapse.
- Planned linears outside the transformer blocks (an LM head) are refused with an error naming
  another method, since there is no block output to match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.modules import module_info
from workbench.quant.gptq import _block_output, _capture_block_inputs, _check_calibration, _find_blocks, _linears
from workbench.quant.grid import (QuantConfig, QuantizedWeight, _check_weight, _expand, dequantize, group_range,
                                  qparams_from_range, round_ste)
from workbench.quant.registry import QuantMethod, register_method


@dataclass(frozen=True)
class SignRoundConfig(QuantConfig):
    """SignRound's settings on top of the grid's (QuantConfig's fields)."""

    method: str = "signround"
    iters: int = 200                 # signed-gradient steps per block (auto-round's default; with batch_size 8 of
                                     # 512 tokens about 2.3 min per SmolLM2 block on 2 cores, notebook 01 uses 100 x 2)
    lr: float | None = None          # the first step's size, for v and for a, b; None: 1 / iters (auto-round)
    batch_size: int = 8              # calibration sequences per step (auto-round: 8)
    clip_floor: float = 0.5          # the smallest factor a group's range may be shrunk by
    learn_clip: bool = True          # train a, b (the clip); False: v alone, over the RTN ranges

    def __post_init__(self):
        super().__post_init__()
        if self.granularity == "tensor":
            raise ValueError("signround learns a range per group or per row; granularity='tensor' shares one "
                             "range across rows: use granularity='group' or 'channel'")
        if self.mse_clip:
            raise ValueError("signround learns each group's range (learn_clip); mse_clip, which picks it by "
                             "weight error, would only set the start: set mse_clip=False")
        for name in ("iters", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "iters" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'iters' else 'positive'} integer, "
                                 f"got {value!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1):
            raise ValueError(f"lr is a step size in (0, 1] (None: 1 / iters), got {self.lr!r}")
        if not (isinstance(self.clip_floor, (int, float)) and 0 < self.clip_floor <= 1):
            raise ValueError(f"clip_floor is the smallest range factor, in (0, 1], got {self.clip_floor!r}")
        if not isinstance(self.learn_clip, bool):
            raise TypeError(f"learn_clip must be True or False, got {self.learn_clip!r}")

    @property
    def step_size(self) -> float:
        return self.lr if self.lr is not None else 1.0 / max(self.iters, 1)


# -----------------------------------------------------------------------------
# one weight


class LearnedRounding(nn.Module):
    """The trainable rounding of one weight W [out, in]: offsets v [out, in] in [-1/2, 1/2] and
    range factors a, b [out, n_groups] in [clip_floor, 1] (a on the group's minimum, b on its maximum)."""

    def __init__(self, w: torch.Tensor, config: SignRoundConfig):
        super().__init__()
        _check_weight(w)
        self.config = config
        self.register_buffer("w", w.detach().float().clone())                # [out, in]
        lo, hi = group_range(self.w, config)                                # [out, G] each
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.v = nn.Parameter(torch.zeros_like(self.w))                     # [out, in]
        self.a = nn.Parameter(torch.ones_like(lo), requires_grad=config.learn_clip)   # [out, G]
        self.b = nn.Parameter(torch.ones_like(hi), requires_grad=config.learn_clip)

    def qparams(self, ste: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group scale and zero [out, G] of the clipped ranges."""
        return qparams_from_range(self.a * self.lo, self.b * self.hi, self.config, ste=ste)

    def _codes(self, scale, zero, rnd):
        cols = self.w.shape[1]
        g = self.config.group_len(cols)
        z = _expand(zero, cols, g)
        return torch.clamp(rnd(self.w / _expand(scale, cols, g) + self.v) + z, 0, self.config.maxq), z

    def forward(self) -> torch.Tensor:
        """Ŵ [out, in], differentiable in v, a, b through straight-through rounding."""
        scale, zero = self.qparams(ste=True)
        codes, z = self._codes(scale, zero, round_ste)
        return (codes - z) * _expand(scale, self.w.shape[1], self.config.group_len(self.w.shape[1]))

    @torch.no_grad()
    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ŵ [out, in] and its scale, zero [out, G]: Ŵ = dequantize(quantize(Ŵ, scale, zero), scale, zero)."""
        scale, zero = self.qparams()
        codes, _ = self._codes(scale, zero, torch.round)
        return dequantize(codes, scale, zero, self.config), scale, zero

    @torch.no_grad()
    def project(self) -> None:
        """Put v, a, b back in their ranges after a step."""
        self.v.clamp_(-0.5, 0.5)
        self.a.clamp_(self.config.clip_floor, 1.0)
        self.b.clamp_(self.config.clip_floor, 1.0)


# -----------------------------------------------------------------------------
# the model, block by block


def _trainable(args, kwargs):
    """A block's extra arguments with every tensor copied out of inference mode (autograd may save them)."""
    def copy(x):
        if isinstance(x, torch.Tensor):
            return x.clone()
        if isinstance(x, tuple):
            return tuple(copy(y) for y in x)
        if isinstance(x, list):
            return [copy(y) for y in x]
        if isinstance(x, dict):
            return {k: copy(y) for k, y in x.items()}
        return x
    return copy(args), copy(kwargs)


def _relative_error(block, inputs, extras, targets) -> float:
    """sum ||block(x) - y||^2 / sum ||y||^2 over the calibration batches."""
    num = den = 0.0
    with torch.no_grad():
        for x, (args, kwargs), y in zip(inputs, extras, targets):
            out = _block_output(block(x, *args, **kwargs)).float()
            num += (out - y).pow(2).sum().item()
            den += y.pow(2).sum().item()
    return num / den if den else 0.0


def _tune_block(block, roundings: dict[str, LearnedRounding], modules: dict[str, nn.Linear], inputs, extras,
                targets, config: SignRoundConfig, generator: torch.Generator) -> float:
    """Train the roundings of one block in place; return the relative output error at the start (RTN)."""
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for name, m in modules.items():                                    # Ŵ from the roundings, on every call
        m.forward = (lambda r, bias, dtype: lambda x: nn.functional.linear(x, r().to(dtype), bias))(
            roundings[name], m.bias, m.weight.dtype)
    params = [p for r in roundings.values() for p in r.parameters() if p.requires_grad]
    try:
        before = _relative_error(block, inputs, extras, targets)
        best_loss, best = float("inf"), None
        order: list[int] = []
        for step in range(config.iters):
            if not order:
                order = torch.randperm(len(inputs), generator=generator).tolist()
            k = order.pop()
            with torch.enable_grad():
                out = _block_output(block(inputs[k], *extras[k][0], **extras[k][1])).float()
                loss = nn.functional.mse_loss(out, targets[k])
                grads = torch.autograd.grad(loss, params)
            if loss.item() < best_loss:                                 # the setting that gave this loss
                best_loss = loss.item()
                best = [p.detach().clone() for p in params]
            lr = config.step_size * (1 - step / config.iters)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(lr * g.sign())
            for r in roundings.values():
                r.project()
        if best is not None:                                            # the lowest loss seen
            with torch.no_grad():
                for p, b in zip(params, best):
                    p.copy_(b)
    finally:
        for m in modules.values():
            m.__dict__.pop("forward", None)
        for p in frozen:
            p.requires_grad_(True)
    return before


def signround_quantize_model(model: nn.Module, plan: dict[str, QuantConfig], calibration: torch.Tensor,
                             progress: bool = True) -> tuple[dict, list[dict]]:
    """SignRound-quantize the planned nn.Linear modules of `model` in place, block by block.

    `plan` is {module name: SignRoundConfig}; every planned module must sit in the transformer
    blocks, and modules of one block must share iters, lr, batch_size. The inputs of block 0
    are captured once (in batches of `batch_size` sequences); each block's full-precision
    output on full-precision inputs is the target, its quantized weights are trained on the
    outputs of the quantized blocks before it, then written in place. Returns
    ({name: (scale, zero)}, report): one dict per module with module, layer, component, bits,
    groups, iters, clip_mean (the mean range factor), flipped (the fraction of weights rounded
    away from their nearest grid point), time_s (the block's, shared by its rows), and the block's
    relative output error on the calibration batches after (block_rel_error) and at RTN
    (rtn_block_rel_error).
    """
    modules = _linears(model, plan)
    for name, cfg in plan.items():
        if not isinstance(cfg, SignRoundConfig):
            raise ValueError(f"plan[{name!r}] must be a QuantConfig with method='signround', got {cfg!r}")
    _check_calibration(calibration)
    list_name, blocks = _find_blocks(model, plan)
    in_block: dict[int, list[str]] = {}
    for name in plan:
        if blocks is None or not name.startswith(list_name + "."):
            raise ValueError(f"signround matches each transformer block's output, and {name} is outside the "
                             "blocks: quantize it with another method, e.g. spec {pattern: QuantConfig(method='gptq')}")
        in_block.setdefault(int(name[len(list_name) + 1:].split(".")[0]), []).append(name)
    for i, names in in_block.items():
        settings = {(plan[n].iters, plan[n].step_size, plan[n].batch_size) for n in names}
        if len(settings) > 1:
            raise ValueError(f"block {list_name}.{i} mixes signround settings (iters, lr, batch_size) {sorted(settings)}; "
                             "one block is trained as a whole, so its modules need the same ones")
    batch_size = plan[next(iter(plan))].batch_size
    qparams, report = {}, []
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    try:
        hidden, extras = _capture_block_inputs(model, blocks, calibration, batch_size)
        hidden = [h.clone() for h in hidden]                           # out of inference mode
        fp_hidden = hidden
        last = max(in_block)
        for i in tqdm(range(last + 1), desc="SignRound", unit="block", disable=not progress):
            block, names = blocks[i], in_block.get(i, [])
            extra = [_trainable(a, k) for a, k in extras[i]]
            with torch.no_grad():
                targets = [_block_output(block(x, *a, **k)).float() for x, (a, k) in zip(fp_hidden, extra)]
            if names:
                if not extras[i]:
                    raise ValueError(f"block {list_name}.{i} holds planned modules but the model's forward never calls it")
                cfg = plan[names[0]]
                t0 = time.perf_counter()
                roundings = {n: LearnedRounding(modules[n].weight, plan[n]) for n in names}
                before = _tune_block(block, roundings, {n: modules[n] for n in names}, hidden, extra,
                                     targets, cfg, generator)
                for n in names:
                    r, m = roundings[n], modules[n]
                    w_hat, scale, zero = r.result()
                    x = r.w / _expand(scale, r.w.shape[1], plan[n].group_len(r.w.shape[1]))
                    flipped = (torch.round(x) != torch.round(x + r.v.detach())).float().mean().item()
                    meta = module_info(n)
                    report.append(dict(module=n, layer=meta.layer, component=meta.component, method="signround",
                                       bits=plan[n].bits, groups=plan[n].describe_groups(r.w.shape[1]),
                                       iters=plan[n].iters, shape=tuple(r.w.shape),
                                       clip_mean=torch.cat([r.a.detach(), r.b.detach()]).mean().item(),
                                       flipped=flipped,
                                       rtn_block_rel_error=before,
                                       time_s=r.w.numel() / sum(roundings[k].w.numel() for k in names)))  # x the block's time, below
                    qparams[n] = (scale.contiguous(), zero.contiguous())
                    with torch.no_grad():
                        m.weight.copy_(w_hat.to(m.weight.dtype))
            with torch.no_grad():                                      # the quantized block's outputs: the
                hidden = [_block_output(block(x, *a, **k)) for x, (a, k) in zip(hidden, extra)]   # next inputs
            if names:
                after = sum((h.float() - t).pow(2).sum().item() for h, t in zip(hidden, targets)) / \
                    sum(t.pow(2).sum().item() for t in targets)
                elapsed = time.perf_counter() - t0
                for row in report[-len(names):]:
                    row.update(block_rel_error=after, time_s=row["time_s"] * elapsed)
            fp_hidden = [t.to(h.dtype) for t, h in zip(targets, hidden)]
    finally:
        model.train(was_training)
    return qparams, report


MEASURES = ("time_s", "iters", "clip_mean", "flipped", "block_rel_error", "rtn_block_rel_error")


def quantize_modules(model: nn.Module, plan: dict[str, QuantConfig], calibration=None, hessians=None,
                     progress: bool = True) -> list[dict]:
    """The registry's handler: `signround_quantize_model`, one row per module with its
    QuantizedWeight and SignRound's diagnostics (MEASURES)."""
    params, rows = signround_quantize_model(model, plan, calibration, progress=progress)
    return [dict(module=r["module"], state=QuantizedWeight(plan[r["module"]], *params[r["module"]]),
                 **{k: r[k] for k in MEASURES}) for r in rows]


register_method(QuantMethod("signround", quantize_modules, SignRoundConfig, needs_calibration=True, sequential=True))
