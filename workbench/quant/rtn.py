"""Round-to-nearest (RTN) on the uniform grid, with full-precision outliers if asked.

    from workbench.quant.rtn import fake_quantize, rtn_quantize_weight
    W_hat = fake_quantize(W, QuantConfig(bits=4, group_size=128))           # [out, in]
    W_hat, state = rtn_quantize_weight(W, QuantConfig(bits=3, outlier_fraction=0.01))

Outliers (`outlier_fraction` > 0) stay in full precision and do not widen their group's range:
by magnitude (outlier_mode="weight", SpQR/PreQuant) or as whole input channels chosen by
calibration activation norm ("channel", LLM.int8's outlier features).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from dataclasses import dataclass

from workbench.quant.grid import QuantConfig, QuantizedWeight, _check_weight, choose_qparams, dequantize, quantize
from workbench.quant.registry import QuantMethod, register_method

OUTLIER_MODES = ("weight", "channel")


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    """Round-to-nearest on the grid (QuantConfig's fields), with full-precision outliers if asked."""

    method: str = "rtn"
    outlier_fraction: float = 0.0    # share of weights kept in full precision, outside the grid
    outlier_mode: str = "weight"     # "weight": the largest by magnitude (SpQR, PreQuant); "channel": whole
                                     # input channels by calibration activation norm (LLM.int8; needs calibration)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.outlier_fraction < 1:
            raise ValueError(f"outlier_fraction must be in [0, 1), got {self.outlier_fraction!r}")
        if self.outlier_mode not in OUTLIER_MODES:
            raise ValueError(f"outlier_mode must be one of {OUTLIER_MODES}, got {self.outlier_mode!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.outlier_fraction > 0 and self.outlier_mode == "channel"


def as_rtn(config: QuantConfig, **settings) -> RTNConfig:
    """The RTN config on the same grid as `config` (any method's), with RTN `settings` (outliers)."""
    from dataclasses import fields

    grid = {f.name: getattr(config, f.name) for f in fields(QuantConfig)}
    return RTNConfig(**{**grid, "method": "rtn", **settings})


def outlier_mask(w: torch.Tensor, config: QuantConfig, channel_norms: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean [out, in] mask of the weights kept in full precision, or None when there are none.

    outlier_mode "weight": the `outlier_fraction` of weights with the largest magnitude (SpQR,
    PreQuant). "channel": whole input channels, the `outlier_fraction` of them with the largest
    calibration activation norm `channel_norms` [in] (LLM.int8's outlier features).
    """
    if getattr(config, "outlier_fraction", 0.0) == 0:          # another method's config keeps no outliers
        return None
    if config.outlier_mode == "weight":
        k = max(1, round(config.outlier_fraction * w.numel()))
        idx = w.abs().flatten().topk(k).indices
        mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        mask[idx] = True
        return mask.view_as(w)
    if channel_norms is None:
        raise ValueError("outlier_mode='channel' picks input channels by activation norm: pass "
                         "calibration=calibration_batch(tokenizer, ...) to quantize_model")
    k = max(1, round(config.outlier_fraction * w.shape[1]))
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:, channel_norms.topk(k).indices] = True
    return mask


def rtn_quantize_weight(w: torch.Tensor, config: QuantConfig,
                        channel_norms: torch.Tensor | None = None) -> tuple[torch.Tensor, QuantizedWeight]:
    """Round-to-nearest quantize `w` [out, in], keeping outliers in full precision if asked.

    Returns the dequantized weight (same shape and dtype) and its QuantizedWeight. Outliers do
    not widen their group's range, so the other weights get a finer grid.
    """
    _check_weight(w)
    mask = outlier_mask(w, config, channel_norms)
    scale, zero = choose_qparams(w, config, exclude=mask)
    w_hat = dequantize(quantize(w, scale, zero, config), scale, zero, config)
    state = QuantizedWeight(config, scale, zero)
    if mask is not None:
        w_hat = torch.where(mask, w.float(), w_hat)
        state.outlier_index = mask.flatten().nonzero().squeeze(1)
        state.outlier_value = w.flatten()[state.outlier_index].float()
    return w_hat.to(w.dtype), state


def fake_quantize(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Round-to-nearest quantize then dequantize `w` [out, in]; same shape and dtype."""
    return rtn_quantize_weight(w, config)[0]


def quantize_modules(model: nn.Module, plan: dict[str, QuantConfig], calibration=None, hessians=None,
                     progress: bool = True) -> list[dict]:
    """RTN every planned linear of `model` in place; one report row per module (with `state`).
    Channel outliers take their activation norms from `hessians` (their diagonals)."""
    rows = []
    for name, cfg in plan.items():
        w = model.get_submodule(name).weight
        norms = hessians[name].diagonal().clamp(min=0).sqrt() if hessians and name in hessians else None
        t0 = time.perf_counter()
        try:
            w_hat, state = rtn_quantize_weight(w.data, cfg, norms)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        w.data.copy_(w_hat)
        rows.append(dict(module=name, state=state, time_s=time.perf_counter() - t0, note=""))
    return rows


register_method(QuantMethod("rtn", quantize_modules, RTNConfig))
