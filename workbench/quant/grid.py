"""The uniform grid: one quantizer's settings and the pure primitives every method builds on.

    from workbench.quant.grid import QuantConfig, choose_qparams, quantize, dequantize
    scale, zero = choose_qparams(W, QuantConfig(bits=4, group_size=128))   # [out, n_groups] each
    codes = quantize(W, scale, zero, config)                               # [out, in] in [0, 2^bits - 1]
    W_hat = dequantize(codes, scale, zero, config)                         # [out, in]

Groups run along the input dimension of a weight matrix W [out, in]. A row whose length is not
a multiple of the group size ends in one shorter group, as in the GPTQ reference: SmolLM2's
576-wide rows at group 128 are 4 x 128 + 64, and reports say so. The grid is GPTQ's: asymmetric
uses the range [min(w, 0), max(w, 0)] over 2^bits levels with an integer (exactly
representable) zero point; symmetric centres the same 2^bits levels on zero (zero =
2^(bits-1), scale = 2·max|w| / (2^bits - 1)).

`QuantConfig` holds the grid's settings, which every method reads; each method's file adds its
own settings in a subclass (RTNConfig, GPTQConfig, BCQConfig), and `QuantConfig(method=...)`
builds that subclass through the registry. This file imports no method: the methods (rtn.py,
gptq.py, bcq.py) import it, and the model loop (model.py) imports them. `QuantizedWeight` is what a packed checkpoint stores for a weight
on this grid; `relative_output_error` is the one output-error metric of every report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from workbench.modules import check_finite
from workbench.quant.registry import METHODS

MIN_BITS, MAX_BITS = 2, 8
GRANULARITIES = ("tensor", "channel", "group")


def _check_bool(config, name: str) -> None:
    """A boolean setting must be a bool: a string such as 'no' would otherwise count as True."""
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); "
                        "a string such as 'no' would otherwise count as True")

def json_fields(config) -> dict:
    """A config dataclass's fields as plain data, leaving out each field named in an ADDED_LATER of
    its class or a base class while it is at its default (so points stored before the field existed
    keep their keys)."""
    out = asdict(config)
    defaults = {f.name: f.default for f in fields(config)}
    later = {n for c in type(config).__mro__ for n in vars(c).get("ADDED_LATER", ())}   # a subclass's and its bases'
    for name in sorted(later):
        if out[name] == defaults[name]:
            del out[name]
    return out


@dataclass(frozen=True)
class QuantConfig:
    """The uniform grid's settings, which every method reads; each method's config (RTNConfig in
    rtn.py, GPTQConfig in gptq.py, BCQConfig in bcq.py) adds its own fields to these.

    `QuantConfig(bits=3, method="gptq", act_order=True)` builds the config of the method named
    (here a GPTQConfig), so a spec never has to import a method's file; a setting the method
    does not read is an error that names the method it belongs to.
    """

    bits: int = 4                    # 2..8 (1..8 binary planes for "bcq")
    group_size: int = 128            # inputs of a row that share a scale and zero (granularity "group")
    granularity: str = "group"       # "group", "channel" (one scale per output row) or "tensor"
    symmetric: bool = False          # zero fixed at the grid's centre
    round_zero: bool = True          # the asymmetric zero point an integer (False: any real number)
    zero_in_range: bool = True       # widen each group's range to contain 0 (GPTQ's convention; HQQ and
                                     # quanto use the plain min..max)
    scale_dtype: str = "float16"     # precision of scales (and real zeros): a packed checkpoint reproduces them
    mse_clip: bool = False           # shrink each group's range to minimize the squared error (PreQuant's
                                     # "MSE" quantizer; GPTQ's own search uses |w - ŵ|^2.4, see choose_qparams)
    method: str = "rtn"              # the registered method (registry.py) that quantizes with this config

    def __new__(cls, *args, **kwargs):
        """QuantConfig(...) is the config class of `method` (default "rtn"); a subclass is itself."""
        if cls is QuantConfig:
            method = kwargs.get("method", "rtn")
            if method not in METHODS:
                raise ValueError(f"unknown quantization method {method!r}; available: {', '.join(METHODS)}")
            cls = METHODS[method].config
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            owners = {m.name: m.config for m in METHODS.values()}
            where = [f"{k} ({next((n for n, c in owners.items() if k in {f.name for f in fields(c)}), 'no method')}'s)"
                     for k in unknown]
            raise TypeError(f"{cls.__name__} (method {kwargs.get('method', cls.method)!r}) has no setting "
                            f"{', '.join(where)}; its settings are {', '.join(sorted(allowed))}")
        return object.__new__(cls)

    def __post_init__(self):
        for name in ("symmetric", "round_zero", "zero_in_range", "mse_clip"):
            _check_bool(self, name)
        if self.method not in METHODS:
            raise ValueError(f"unknown quantization method {self.method!r}; available: {', '.join(METHODS)}")
        if type(self) is not METHODS[self.method].config:
            raise ValueError(f"a {type(self).__name__} cannot have method={self.method!r}; use "
                             f"QuantConfig(method={self.method!r}, ...)")
        lowest = METHODS[self.method].min_bits
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not lowest <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer from {lowest} to {MAX_BITS} for method {self.method!r}, "
                             f"got {self.bits!r}; to leave a module in full precision, map its pattern to None "
                             "in the spec")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group" and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}; use "
                             "granularity='channel' for one scale per row")
        if self.scale_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"scale_dtype must be 'float16', 'bfloat16' or 'float32', got {self.scale_dtype!r}")

    # Fields a method gained after sweeps stored points with its config: written only when they
    # differ from their default, so that those points keep their keys (`from_json` fills them in).
    ADDED_LATER: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict:
        """Every field, as plain data: the grid's and the method's own, so that another method's
        default (GPTQ's damp for an RTN config) is no part of a sweep's key; a field of
        ADDED_LATER only when it is not at its default. `from_json` reads it."""
        return json_fields(self)

    @staticmethod
    def from_json(fields_: dict) -> "QuantConfig":
        """The config `to_json` wrote. A dict that also holds other methods' fields at their
        defaults (what checkpoints and snapshots stored before each method had its own config)
        is read too; another method's field at any other value is an error that names it."""
        method = fields_.get("method", "rtn")
        if method not in METHODS:
            raise ValueError(f"unknown quantization method {method!r}; available: {', '.join(METHODS)}")
        own = {f.name for f in fields(METHODS[method].config)}
        defaults = {f.name: f.default for m in METHODS.values() for f in fields(m.config)}
        foreign = {k: v for k, v in fields_.items() if k not in own}
        bad = sorted(k for k, v in foreign.items() if k not in defaults or defaults[k] != v)
        if bad:
            raise ValueError(f"a {method} config cannot hold {', '.join(f'{k}={foreign[k]!r}' for k in bad)} "
                             "(another method's setting)")
        return QuantConfig(**{k: v for k, v in fields_.items() if k in own})

    @property
    def needs_calibration(self) -> bool:
        return METHODS[self.method].needs_calibration

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def group_len(self, in_features: int) -> int:
        """Columns per group for a row of `in_features` (the whole row unless grouping)."""
        return min(self.group_size, in_features) if self.granularity == "group" else in_features

    def describe_groups(self, in_features: int) -> str:
        """How a row splits into groups, e.g. '4x128+64' for 576 inputs at group 128."""
        if self.granularity == "tensor":
            return "tensor"
        g = self.group_len(in_features)
        full, rest = divmod(in_features, g)
        return f"{full}x{g}" + (f"+{rest}" if rest else "")


def _grouped(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows to a multiple of g and view them as groups: [out, n_groups, g], plus a mask of real columns."""
    out, cols = w.shape
    pad = (-cols) % g
    wp = torch.nn.functional.pad(w, (0, pad)).view(out, -1, g)
    mask = torch.ones(cols + pad, dtype=torch.bool, device=w.device)
    mask[cols:] = False
    return wp, mask.view(-1, g)                                   # [out, G, g], [G, g]


def _expand(p: torch.Tensor, cols: int, g: int) -> torch.Tensor:
    """Per-group parameters [out, G] -> per-column [out, cols]."""
    return p.repeat_interleave(g, dim=1)[:, :cols]


def group_range(w: torch.Tensor, config: QuantConfig,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of each group of `w` [out, in]: two tensors [out, n_groups].

    Entries where the boolean `exclude` [out, in] is True (outliers kept in full precision) do
    not count; a group with nothing left gets the range [0, 0].
    """
    w = w.float()
    lo_src = w if exclude is None else w.masked_fill(exclude, torch.inf)
    hi_src = w if exclude is None else w.masked_fill(exclude, -torch.inf)
    if config.granularity == "tensor":
        lo, hi = lo_src.min().view(1, 1).expand(w.shape[0], 1), hi_src.max().view(1, 1).expand(w.shape[0], 1)
    else:
        g = config.group_len(w.shape[1])
        (lo_p, mask), (hi_p, _) = _grouped(lo_src, g), _grouped(hi_src, g)
        lo = torch.where(mask, lo_p, torch.inf).amin(dim=-1)
        hi = torch.where(mask, hi_p, -torch.inf).amax(dim=-1)
    return torch.where(torch.isinf(lo), 0.0, lo), torch.where(torch.isinf(hi), 0.0, hi)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) whose gradient is that of x (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, config: QuantConfig,
                       ste: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the grid that covers [lo, hi] (elementwise) with 2^bits levels.
    With `ste`, the zero point is rounded straight-through, so that gradients reach lo and hi
    (learned clipping, signround.py); the values are the same."""
    if config.zero_in_range:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    dtype = getattr(torch, config.scale_dtype)
    if config.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        scale = (2 * amax / config.maxq).to(dtype).float()
        zero = torch.full_like(scale, (config.maxq + 1) / 2)
    else:
        flat = hi - lo <= 0
        lo, hi = torch.where(flat, lo - 1, lo), torch.where(flat, hi + 1, hi)
        scale = ((hi - lo) / config.maxq).to(dtype).float()
        zero = -lo / scale
        zero = (round_ste(zero) if ste else torch.round(zero)) if config.round_zero else zero.to(dtype).float()
    return scale, zero


def choose_qparams(w: torch.Tensor, config: QuantConfig, grid: int = 100, max_shrink: float = 0.8,
                   norm: float = 2.0, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each group of `w` [out, in]: two float tensors [out, n_groups].

    With `config.mse_clip`, each group's range is shrunk by the factor p in 1, 0.99, ...,
    1 - max_shrink that minimizes sum |w - ŵ|^norm over the group: PreQuant's MSE quantizer
    with the default norm 2; GPTQ's `find_params(mse=True)` uses norm=2.4 (about 7x slower here,
    since a fractional power is costly on a CPU).
    """
    lo, hi = group_range(w, config, exclude)
    scale, zero = qparams_from_range(lo, hi, config)
    if not config.mse_clip:
        return scale, zero
    g = w.shape[1] if config.granularity == "tensor" else config.group_len(w.shape[1])
    wp, mask = _grouped(w.float(), g)                                    # [out, G, g], [G, g]
    valid = mask.expand_as(wp)
    if exclude is not None:
        valid = valid & ~_grouped(exclude.float(), g)[0].bool()
    if config.granularity == "tensor":                                   # one group: the whole matrix
        wp, valid = wp.reshape(1, 1, -1), valid.reshape(1, 1, -1)
    best = torch.full(scale.shape if config.granularity != "tensor" else (1, 1), torch.inf)
    best_lo, best_hi = lo.clone(), hi.clone()
    lo_t, hi_t = (lo[:1], hi[:1]) if config.granularity == "tensor" else (lo, hi)
    for i in range(int(max_shrink * grid)):
        p = 1 - i / grid
        s, z = qparams_from_range(p * lo_t, p * hi_t, config)             # [out, G]
        s3, z3 = s.unsqueeze(-1), z.unsqueeze(-1)
        q = torch.round(wp / s3 + z3).clamp_(0, config.maxq)
        err = ((q - z3) * s3 - wp).abs_().pow_(norm).masked_fill_(~valid, 0.0).sum(dim=-1)
        better = err < best
        best = torch.where(better, err, best)
        best_lo, best_hi = torch.where(better, p * lo_t, best_lo), torch.where(better, p * hi_t, best_hi)
    if config.granularity == "tensor":
        best_lo, best_hi = best_lo.expand_as(lo), best_hi.expand_as(hi)
    return qparams_from_range(best_lo, best_hi, config)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Integer codes of `w` [out, in] in [0, 2^bits - 1] (uint8) for per-group scale/zero [out, G]."""
    cols = w.shape[1]
    g = cols if config.granularity == "tensor" else config.group_len(cols)
    s, z = _expand(scale, cols, g), _expand(zero, cols, g)
    return torch.clamp(torch.round(w.float() / s + z), 0, config.maxq).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Real-valued weights [out, in] from codes and per-group scale/zero [out, G]."""
    cols = codes.shape[1]
    g = cols if config.granularity == "tensor" else config.group_len(cols)
    return (codes.float() - _expand(zero, cols, g)) * _expand(scale, cols, g)


def _check_weight(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix [out, in], got shape {tuple(w.shape)}")
    check_finite(w, why="quantizing it would spread them")


@dataclass
class QuantizedWeight:
    """What a packed checkpoint stores for one uniformly quantized weight (besides the codes,
    which are `quantize(Ŵ, scale, zero, config)`): per-group scale and zero [out, n_groups],
    the full-precision outliers as flat indices into [out, in] and their values, and for AWQ the
    input-channel scales s [in] (the codes are then `quantize(Ŵ diag(s), ...)`)."""

    config: QuantConfig
    scale: torch.Tensor
    zero: torch.Tensor
    outlier_index: torch.Tensor | None = None
    outlier_value: torch.Tensor | None = None
    column_scale: torch.Tensor | None = None   # [in] AWQ's s: the codes hold W diag(s), Ŵ = dequantized / s


def relative_output_errors(w: torch.Tensor, w_hats: list[torch.Tensor], hessian: torch.Tensor) -> list[float]:
    """||X (W - Ŵ)ᵀ||_F / ||X Wᵀ||_F on calibration inputs X, from H ∝ XᵀX [in, in], for each Ŵ
    of `w_hats` (one computation of the denominator tr(W H Wᵀ) for all of them)."""
    w = w.float()
    den = torch.einsum("oi,ij,oj->", w, hessian, w)
    out = []
    for w_hat in w_hats:
        delta = w - w_hat.float()
        out.append((torch.einsum("oi,ij,oj->", delta, hessian, delta).clamp(min=0) / den).sqrt().item())
    return out


def relative_output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """||X (W - Ŵ)ᵀ||_F / ||X Wᵀ||_F on calibration inputs X, from H ∝ XᵀX [in, in]."""
    return relative_output_errors(w, [w_hat], hessian)[0]


# -----------------------------------------------------------------------------
# run-time tensors (activations, the KV cache): rounded along their last dimension, on the fly


def fake_quantize_lastdim(x: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True,
                          clip: float = 1.0) -> torch.Tensor:
    """Round `x` [..., d] to `bits` along its last dimension, one scale per row (a token) or per
    group of `group_size` entries of a row, and return the dequantized tensor (x's shape and dtype).

    Symmetric: levels -qmax..qmax times clip·max|x| / qmax, qmax = 2^(bits-1) - 1 (the restricted
    range of int8 kernels: 8 bits give 255 levels). Asymmetric: 2^bits levels from the row's
    min to its max, with a real-valued offset (KIVI's and QLLM-Eval's min/scale). Both are
    idempotent up to float rounding (the extreme values are grid points), so a cache re-rounded
    at every step holds what it held after the first rounding. `clip` < 1 shrinks the range."""
    d = x.shape[-1]
    g = d if group_size is None else group_size
    if d % g:
        raise ValueError(f"group_size {g} does not divide the last dimension {d}; use a divisor of {d} or None "
                         "(one group per row)")
    xg = x.float().reshape(*x.shape[:-1], d // g, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (xg.abs().amax(-1, keepdim=True) * clip / qmax).clamp(min=1e-8)
        out = (xg / scale).round().clamp(-qmax, qmax) * scale
    else:
        lo, hi = xg.amin(-1, keepdim=True) * clip, xg.amax(-1, keepdim=True) * clip
        scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=1e-8)
        out = ((xg - lo) / scale).round().clamp(0, 2 ** bits - 1) * scale + lo
    return out.reshape(x.shape).to(x.dtype)
