"""Binary-coding quantization (BCQ): the format of AlphaTuning (Kwon et al. 2022) and of
Xu et al. 2018, "Alternating multi-bit quantization" (gpt-fast style, flat and readable).

    from workbench.quant.bcq import bcq_fit, bcq_dequantize, BCQLinear, bcq_quantize_model
    cfg = QuantConfig(method="bcq", bits=3, group_size=128)
    alpha, binary, offset = bcq_fit(W, cfg)          # [q, out, n_groups] fp32, [q, out, in] int8 ±1, None
    W_hat = bcq_dequantize(alpha, binary, 128)       # [out, in]
    cfg = QuantConfig(method="bcq", bits=3, bcq_offset=True)   # W ≈ Σ α_i b_i + z (offset [out, n_groups])
    layer = BCQLinear.from_linear(linear, cfg)       # only layer.alpha is trainable (AlphaTuning)
    report = bcq_quantize_model(model, {"model.layers.0.mlp.down_proj": cfg})   # in place

A weight matrix is a sum of q binary planes, each with one scale per (row, group):
    W ≈ Σ_{i=1..q} α_i ∘ b_i,   b_i ∈ {-1, +1}^[out, in],   α_i ∈ R^[out, n_groups]
With `bcq_offset=True` each group also gets a real offset z (LUT-GEMM's BCQ with a bias term):
    W ≈ Σ_{i=1..q} α_i ∘ b_i + z
Without it the 2^q levels Σ ±α_i are symmetric about zero and none is zero: every weight smaller
than half the smallest level is pushed out to ±min level. On SmolLM2 at 3 planes that is 16-20% of
a matrix's weights, and the symmetric grid alone gives perplexity 812,054 where RTN gives 138
(83,453 after 3 ALS rounds; with the offset 110: notebook 01, *BCQ: why it loses*). The
offset's uniform init is RTN's asymmetric grid, whose integer zero point puts one level at zero.
Groups run along the input dimension; a row whose length is not a multiple of the group size
ends in one shorter group (576 at group 128 is 4 x 128 + 64), whose scales see only its real
columns. `bits` in the QuantConfig is the number of planes q (1..8).

Fitting: greedy init (b_i = sign(r), α_i = mean |r| over the group, r -= α_i b_i; with an
offset, r starts at w minus the group mean), or `bcq_init="uniform"` (α_i = s·2^(i-1) with
s = max|w| / (2^q - 1): the symmetric uniform grid, whose extreme level keeps the group's largest
weight; with an offset, α_i = Δ·2^(i-2) and z = ((2^q - 1)/2 - zero_point)·Δ: RTN's asymmetric
grid from min to max, exactly), then
`bcq_iters` rounds of alternating least squares: (a) α (and z) exactly by least squares given
the codes (a q x q, or q+1 x q+1, normal-equations system per group), (b) each weight's codes
re-picked as the nearest of the 2^q values z + Σ ±α_i of its group (sorted values + binary
search). Scales and offsets are rounded through `config.scale_dtype` before the codes are picked, so the stored α reproduce
the fit exactly; each group keeps its best state, so the error never grows with the rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.modules import check_finite
from workbench.quant.grid import QuantConfig, _grouped
from workbench.quant.registry import QuantMethod, register_method

BCQ_INITS = ("greedy", "uniform")


@dataclass(frozen=True)
class BCQConfig(QuantConfig):
    """Binary-coding quantization's settings on top of the grid's; `bits` counts binary planes (1..8)."""

    method: str = "bcq"
    bcq_iters: int = 20              # alternating least-squares rounds (stops early when the codes settle)
    bcq_init: str = "uniform"        # "uniform": alpha_i = s 2^(i-1), whose extreme level is the group's
                                     # max |w| (no outlier clipped); "greedy" (Xu et al. 2018): peel sign
                                     # planes off the residual, whose levels stop short of the largest
                                     # weights (SmolLM2, 4 planes, 3 rounds: perplexity 1.4e4 against 64)
    bcq_offset: bool = False         # a real offset z per group (W ≈ Σ α_i b_i + z, LUT-GEMM): levels
                                     # no longer symmetric about 0; the uniform init is then RTN's
                                     # asymmetric grid, one of whose levels is zero

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.bcq_iters, bool) or not isinstance(self.bcq_iters, int) or self.bcq_iters < 0:
            raise ValueError(f"bcq_iters must be a non-negative integer, got {self.bcq_iters!r}")
        if self.bcq_init not in BCQ_INITS:
            raise ValueError(f"bcq_init must be one of {BCQ_INITS}, got {self.bcq_init!r}")
        if not isinstance(self.bcq_offset, bool):
            raise ValueError(f"bcq_offset must be True or False, got {self.bcq_offset!r}")


def _check(w: torch.Tensor, config: QuantConfig) -> None:
    if config.method != "bcq":
        raise ValueError(f"BCQ needs a QuantConfig with method='bcq', got method={config.method!r}")
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix [out, in], got shape {tuple(w.shape)}")
    check_finite(w, why="BCQ cannot fit scales to them")


def _round_scales(alpha: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Scales as stored: nonnegative (a sign is absorbed into the codes) and rounded through scale_dtype."""
    return alpha.abs().to(getattr(torch, config.scale_dtype)).float()


def _round_offset(z: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Offsets as stored: signed, rounded through scale_dtype."""
    return z.to(getattr(torch, config.scale_dtype)).float()


def _nearest_codes(wp: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Codes ±1 [q, out, G, g] picking, for each weight of wp [out, G, g], the nearest of its
    group's 2^q values Σ ±α_i (alpha [q, out, G]): sort the values, then binary-search each
    weight among the midpoints between neighbours (a weight on a midpoint takes the upper value)."""
    q = alpha.shape[0]
    combo = torch.arange(2 ** q, device=wp.device)
    signs = ((combo[:, None] >> torch.arange(q, device=wp.device)) & 1).float() * 2 - 1   # [2^q, q]
    values, order = torch.einsum("cq,qoG->oGc", signs, alpha).contiguous().sort(dim=-1)   # [out, G, 2^q]
    midpoints = (values[..., 1:] + values[..., :-1]) / 2                                 # [out, G, 2^q - 1]
    rank = torch.searchsorted(midpoints, wp, right=True)                                 # [out, G, g] sorted index
    return signs.T[:, order.gather(-1, rank)]                                            # [q, out, G, g]


def _group_error(wp: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor, b: torch.Tensor,
                 z: torch.Tensor) -> torch.Tensor:
    """Squared error over each group's real columns: [out, G]."""
    w_hat = (alpha.unsqueeze(-1) * b).sum(0) + z.unsqueeze(-1)                          # [out, G, g]
    return ((wp - w_hat) ** 2 * mask).sum(-1)


def bcq_fit(w: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fit BCQ to `w` [out, in]: returns alpha [q, out, n_groups] (float32, exactly representable
    in config.scale_dtype, nonnegative), binary [q, out, in] (int8 in {-1, +1}) and the offset
    [out, n_groups] (float32 at scale_dtype; None without config.bcq_offset). The init
    (config.bcq_init), then config.bcq_iters rounds of alternating least squares (stopping early
    once the codes no longer change); each group keeps its lowest-error state. granularity
    "channel" gives one group per row, "tensor" one scale per plane for the whole matrix
    (repeated over the rows)."""
    _check(w, config)
    out, cols = w.shape
    w = w.detach().float()
    if config.granularity == "tensor":
        wp, mask = w.reshape(1, 1, -1), torch.ones(1, out * cols, dtype=torch.bool, device=w.device)
    else:
        wp, mask = _grouped(w, config.group_len(cols))                                   # [out, G, g], [G, g]
    real = mask
    mask = mask.float()
    count = mask.sum(-1)                                                                 # [G] real columns
    q, levels = config.bits, 2 ** config.bits
    planes = 2.0 ** torch.arange(q, device=w.device).view(q, 1, 1)                       # 1, 2, 4, ...
    z = torch.zeros(wp.shape[:2], device=w.device)                                       # [out, G]

    if config.bcq_init == "uniform" and config.bcq_offset:
        # RTN's asymmetric grid: levels (k - zero_point)·Δ, k = 0..2^q-1, one of them zero.
        lo = torch.where(real, wp, torch.inf).amin(-1).clamp(max=0)
        hi = torch.where(real, wp, -torch.inf).amax(-1).clamp(min=0)
        delta = ((hi - lo) / (levels - 1)).clamp(min=torch.finfo(torch.float32).tiny)    # [out, G]
        zero_point = torch.round(-lo / delta).clamp(0, levels - 1)
        alpha = _round_scales(delta * planes / 2, config)                                # Δ/2, Δ, 2Δ, ...
        z = _round_offset(((levels - 1) / 2 - zero_point) * delta, config)
        b = _nearest_codes(wp - z.unsqueeze(-1), alpha).float()
    elif config.bcq_init == "uniform":
        # Symmetric uniform grid: levels s * {±1, ±3, ..., ±(2^q - 1)}, the extreme one at max |w|.
        s = (wp.abs() * mask).amax(-1) / (levels - 1)                                    # [out, G]
        alpha = _round_scales(s * planes, config)
        b = _nearest_codes(wp, alpha).float()
    else:
        # Greedy init: peel off one plane at a time from the residual (after the mean, with an offset).
        if config.bcq_offset:
            z = _round_offset((wp * mask).sum(-1) / count, config)
        r = wp - z.unsqueeze(-1)
        alpha, b = [], []
        for _ in range(q):
            bi = torch.where(r >= 0, 1.0, -1.0)                                          # sign(0) = +1
            ai = _round_scales((r.abs() * mask).sum(-1) / count, config)                 # [out, G]
            r = r - ai.unsqueeze(-1) * bi
            alpha.append(ai)
            b.append(bi)
        alpha, b = torch.stack(alpha), torch.stack(b)                                    # [q, out, G], [q, out, G, g]
    err = _group_error(wp, mask, alpha, b, z)                                            # [out, G]

    n = q + int(config.bcq_offset)                                                       # unknowns per group
    eye = torch.eye(n, dtype=torch.float64, device=w.device)
    for _ in range(config.bcq_iters):
        # (a) least-squares scales (and offset) given the codes: (BᵀB + λI) α = Bᵀw per group, padding
        # masked out; the offset is one more column of ones in B.
        bm = b * mask
        if config.bcq_offset:
            bm = torch.cat([bm, mask.expand_as(b[:1])])                                  # [q + 1, out, G, g]
        gram = torch.einsum("ioGk,joGk->oGij", bm, bm).double()                          # [out, G, n, n]
        rhs = torch.einsum("ioGk,oGk->oGi", bm, wp).double()                             # [out, G, n]
        ridge = 1e-7 * count.double().view(1, -1, 1, 1) * eye                           # only matters when singular
        sol = torch.linalg.solve(gram + ridge, rhs.unsqueeze(-1)).squeeze(-1).float()    # [out, G, n]
        a_new = _round_scales(sol[..., :q].permute(2, 0, 1), config)                     # [q, out, G]
        z_new = _round_offset(sol[..., q], config) if config.bcq_offset else z
        # (b) codes given the scales: nearest representable value for every weight.
        b_new = _nearest_codes(wp - z_new.unsqueeze(-1), a_new)
        e_new = _group_error(wp, mask, a_new, b_new, z_new)
        better = e_new < err                                                             # [out, G]
        if not better.any():
            break                                                                        # converged
        err = torch.where(better, e_new, err)
        alpha = torch.where(better, a_new, alpha)
        z = torch.where(better, z_new, z)
        b = torch.where(better.unsqueeze(-1), b_new, b)

    binary = b.reshape(q, out, -1)[..., :cols].to(torch.int8)                            # drop the padding
    if config.granularity == "tensor":
        alpha, z = alpha.expand(q, out, 1).contiguous(), z.expand(out, 1).contiguous()
    return alpha, binary, (z if config.bcq_offset else None)


def bcq_levels(alpha: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """The 2^q values z + Σ ±α_i each group can hold, sorted: [out, G, 2^q] from alpha [q, out, G]
    and the offset [out, G] (zero when None). Without an offset none of them is zero."""
    q = alpha.shape[0]
    combo = torch.arange(2 ** q, device=alpha.device)
    signs = ((combo[:, None] >> torch.arange(q, device=alpha.device)) & 1).to(alpha.dtype) * 2 - 1
    values = torch.einsum("cq,qoG->oGc", signs, alpha)
    if offset is not None:
        values = values + offset.unsqueeze(-1)
    return values.sort(dim=-1).values


def bcq_dequantize(alpha: torch.Tensor, binary: torch.Tensor, group_size: int,
                   offset: torch.Tensor | None = None) -> torch.Tensor:
    """Ŵ = Σ_i α_i ∘ b_i (+ z): alpha [q, out, G], binary [q, out, in], offset [out, G] or None ->
    [out, in] (in alpha's dtype). `group_size` is the columns per group (the whole row for one
    group per row); gradients flow to alpha."""
    q, out, cols = binary.shape
    n_groups = -(-cols // group_size)
    if alpha.shape != (q, out, n_groups):
        raise ValueError(f"alpha has shape {tuple(alpha.shape)} but binary {tuple(binary.shape)} at group "
                         f"size {group_size} needs ({q}, {out}, {n_groups})")
    scales = alpha.repeat_interleave(group_size, dim=2)[..., :cols]                      # [q, out, in]
    w = (scales * binary.to(alpha.dtype)).sum(0)
    if offset is not None:
        if offset.shape != (out, n_groups):
            raise ValueError(f"offset has shape {tuple(offset.shape)}, alpha {tuple(alpha.shape)} needs ({out}, {n_groups})")
        w = w + offset.to(alpha.dtype).repeat_interleave(group_size, dim=1)[:, :cols]
    return w


class BCQLinear(nn.Module):
    """A linear layer whose weight is stored in binary-coding form: `alpha` [q, out, n_groups]
    is the only trainable parameter (AlphaTuning fine-tunes just these scales), `binary`
    [q, out, in] int8 ±1 and the `offset` [out, n_groups] (or None) are buffers and the bias, if
    any, a frozen parameter. The forward pass rebuilds Ŵ from them, so gradients reach alpha."""

    def __init__(self, alpha: torch.Tensor, binary: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        super().__init__()
        self.bits, self.out_features, self.in_features = binary.shape
        self.group_size = group_size
        self.alpha = nn.Parameter(alpha.float().clone())                                 # [q, out, G]
        self.register_buffer("binary", binary.to(torch.int8).clone())                   # [q, out, in]
        self.register_buffer("offset", None if offset is None else offset.float().clone())   # [out, G]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig) -> BCQLinear:
        """Fit BCQ to `linear.weight` by `config` and build the layer (on the weight's device)."""
        alpha, binary, offset = bcq_fit(linear.weight.detach(), config)
        group = binary.shape[2] if config.granularity == "tensor" else config.group_len(linear.in_features)
        return cls(alpha, binary, group, linear.bias, offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = bcq_dequantize(self.alpha, self.binary, self.group_size, self.offset)        # [out, in]
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.dtype), bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight [out, in] (detached, float32)."""
        return bcq_dequantize(self.alpha.detach(), self.binary, self.group_size, self.offset)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, offset={self.offset is not None}, bias={self.bias is not None}")


def bcq_quantize_model(model: nn.Module, plan: dict[str, QuantConfig]) -> list[dict]:
    """Replace each planned nn.Linear of `model` in place by a BCQLinear. `plan` maps module
    names to QuantConfig(method="bcq"). Returns one report dict per module: module, bits (planes),
    groups (e.g. '4x128+64'), rel_weight_error ||W - Ŵ||/||W|| and time_s of the fit."""
    rows = []
    for name, config in plan.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name}: BCQ replaces nn.Linear modules, this one is {type(linear).__name__}")
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                layer = BCQLinear.from_linear(linear, config)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        elapsed = time.perf_counter() - t0
        w = linear.weight.detach().float()
        err = (torch.linalg.norm(w - layer.weight) / torch.linalg.norm(w)).item()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        rows.append(dict(module=name, bits=config.bits, groups=config.describe_groups(linear.in_features),
                         rel_weight_error=err, time_s=elapsed))
    return rows


def quantize_modules(model: nn.Module, plan: dict[str, QuantConfig], calibration=None, hessians=None,
                     progress: bool = True) -> list[dict]:
    """The registry's handler: `bcq_quantize_model`; each module's state is its config (the
    BCQLinear that replaced it holds alpha and the binary planes)."""
    return [dict(module=r["module"], state=plan[r["module"]], time_s=r["time_s"], note="")
            for r in bcq_quantize_model(model, plan)]


register_method(QuantMethod("bcq", quantize_modules, BCQConfig, min_bits=1))
