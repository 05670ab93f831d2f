"""Activation quantization: every linear's input rounded per token at run time (W4A8, W8A8), with
SmoothQuant's migration of the activations' outliers into the weights.

    from workbench.quant.activations import ActQuantConfig, quantize_activations
    qmodel = quantize_activations(model, ActQuantConfig(bits=8))                  # dynamic, per token
    qmodel = quantize_activations(model, ActQuantConfig(bits=8, smooth_alpha=0.5), calibration=calib)

Dynamic per-token quantization (LLM.int8's vector-wise activations, SmoothQuant's O1/O3 settings)
gives each token's input row its own scale, computed at run time: the simulation is a forward
pre-hook on each nn.Linear that replaces its input x [..., in] by its rounded copy
(`grid.fake_quantize_lastdim`). The LM head is left alone (as the weight quantizers leave it).

SmoothQuant (Xiao et al. 2023) divides input channel j by s_j = max|x_j|^α / max|W_:,j|^(1-α)
and multiplies the weights' column j by s_j (y = (x / s)(diag(s) Wᵀ)), moving the activations'
outlier channels into the weights before either is rounded. As in the reference (smoothquant's
`smooth_lm` for Llama-like models) only the linears that read a normalized input are smoothed
(q/k/v after the attention norm, gate/up after the FFN norm), and the linears that read one input
share one s (max|W| taken over all their rows), so that 1/s could be folded into that norm. In
this fake-quantization mode the division by s is done by the same pre-hook, just before the
rounding; the weights are scaled in place, so a weight quantizer applied afterwards (any method,
GPTQ included: its Hessians are those of x / s) rounds W diag(s), as it would in deployment.

Pieces, usable on their own:
    input_absmax(model, names, calibration)     -> {name: max|x_j| [in]}, and groups of shared inputs
    smooth_scales(model, calibration, alpha)    -> {name: s [in]}
    smooth(model, scales)                       W <- W diag(s); inputs divided by s at run time
    quantize_activations(model, config, ...)    the pre-hooks (smoothing first when asked)
    remove_activation_quantization(model)       the hooks off, the weights unscaled
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from workbench.modules import LM_HEAD, linear_modules, module_info
from workbench.quant.grid import _check_bool, fake_quantize_lastdim

SMOOTHED = ("q", "k", "v", "qkv", "gate", "up")   # components that read a normalized input (SmoothQuant)


@dataclass(frozen=True)
class ActQuantConfig:
    """How each linear's input is rounded at run time (and smoothed first)."""

    bits: int = 8                     # 2..8 (16: leave the activations alone, for a sweep's baseline)
    group_size: int | None = None     # None: one scale per token; g: per token, groups of g channels
    symmetric: bool = True            # levels centred on 0 (int8 kernels); False: min..max per token
    clip: float = 1.0                 # range = clip · the token's largest |x| (1: no clipping)
    smooth_alpha: float | None = None # SmoothQuant's migration strength (0.5 in the paper); None: no smoothing
    skip: str = LM_HEAD               # linears (regex) whose inputs stay unrounded

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (2 <= self.bits <= 8 or self.bits == 16):
            raise ValueError(f"activation bits must be an integer in 2..8 (or 16: unquantized), got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer or None (one scale per token), got {self.group_size!r}")
        _check_bool(self, "symmetric")
        if not 0 < self.clip <= 1:
            raise ValueError(f"clip is the fraction of each token's range kept, in (0, 1]; got {self.clip!r}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ValueError(f"smooth_alpha is SmoothQuant's migration strength in [0, 1] (0.5 in the paper) "
                             f"or None; got {self.smooth_alpha!r}")

    def to_json(self) -> dict:
        return {"activations": asdict(self)}

    @classmethod
    def from_json(cls, obj: dict) -> "ActQuantConfig":
        return cls(**obj["activations"])


class InputQuantizer:
    """The forward pre-hook of one linear: x -> Q(x / s) (either step optional)."""

    def __init__(self, config: ActQuantConfig | None = None, smooth: torch.Tensor | None = None):
        self.config = config          # None: no rounding (smoothing only, e.g. while weights are quantized)
        self.smooth = smooth          # s [in] or None

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        if self.smooth is not None:
            x = x / self.smooth.to(x.dtype)
        c = self.config
        if c is not None and c.bits < 16:
            x = fake_quantize_lastdim(x, c.bits, c.group_size, c.symmetric, c.clip)
        return (x, *args[1:])


def _hooked(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in linear_modules(model).items() if hasattr(m, "_wb_input_quantizer")}


def _install(module: nn.Linear, quantizer: InputQuantizer) -> None:
    module._wb_input_quantizer = quantizer
    module.register_forward_pre_hook(quantizer)


# -----------------------------------------------------------------------------
# SmoothQuant: per-channel input maxima, the scales, applying them


@torch.no_grad()
def input_absmax(model: nn.Module, names, calibration: torch.Tensor, batch_size: int = 8):
    """Each named linear's largest |x_j| per input channel over the calibration tokens [n, seqlen]
    ({name: [in]}), and the groups of names that read the same input tensor (q/k/v, gate/up):
    linears called one after another on the same tensor object (as collect_hessians finds them),
    so the grouping needs no per-architecture table."""
    mods = {n: linear_modules(model)[n] for n in names}
    amax = {n: torch.zeros(m.in_features) for n, m in mods.items()}
    last = {"x": None, "group": None}                  # consecutive readers of one tensor form a group
    groups: dict[str, list] = {}                       # name -> its group (from the first batch)

    def make_hook(name):
        def hook(module, args):
            x = args[0]
            if last["x"] is not x:
                last.update(x=x, group=[])
            last["group"].append(name)
            groups.setdefault(name, last["group"])
            amax[name] = torch.maximum(amax[name], x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float().cpu())
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in mods.items()]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(calibration), batch_size):
            model(calibration[i:i + batch_size].to(device), use_cache=False)
            last.update(x=None, group=None)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unique = {id(g): g for g in groups.values()}
    return amax, [list(g) for g in unique.values()]


def smooth_scales(model: nn.Module, calibration: torch.Tensor, alpha: float = 0.5,
                  skip: str = LM_HEAD) -> dict[str, torch.Tensor]:
    """SmoothQuant's s [in] for every linear that reads a normalized input (components q, k, v,
    qkv, gate, up), one s per group of linears reading the same input:
    s_j = max|x_j|^α / max_rows |W_rj|^(1-α), clamped to [1e-5, ∞) as in the reference."""
    names = [n for n in linear_modules(model) if module_info(n).component in SMOOTHED and not re.search(skip, n)]
    if not names:
        raise ValueError(f"no linear layer of this {type(model).__name__} reads a normalized input (components "
                         f"{', '.join(SMOOTHED)}): SmoothQuant has nothing to smooth; set smooth_alpha=None")
    amax, groups = input_absmax(model, names, calibration)
    mods = linear_modules(model)
    scales = {}
    for group in groups:
        w_max = torch.stack([mods[n].weight.detach().abs().amax(0).float().cpu() for n in group]).amax(0)
        s = (amax[group[0]].pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
        s = torch.where(amax[group[0]] > 0, s, torch.ones_like(s))        # a silent channel: leave it
        for n in group:
            scales[n] = s
    return scales


@torch.no_grad()
def smooth(model: nn.Module, scales: dict[str, torch.Tensor]) -> nn.Module:
    """Apply SmoothQuant scales in place: W <- W diag(s), and each input divided by s at run time
    (the pre-hook that `quantize_activations` later also rounds with). Returns the model."""
    mods = linear_modules(model)
    for name, s in scales.items():
        m = mods[name]
        if hasattr(m, "_wb_input_quantizer"):
            raise ValueError(f"{name} already has an input quantizer: remove_activation_quantization(model) first")
        m.weight.mul_(s.to(m.weight.device, m.weight.dtype))
        _install(m, InputQuantizer(None, s.to(m.weight.device)))
    return model


def smooth_for(model: nn.Module, config: ActQuantConfig, calibration: torch.Tensor | None) -> nn.Module:
    """SmoothQuant in place as `config.smooth_alpha` asks (nothing when it is None, or when the
    model is already smoothed); its maxima come from `calibration`, token ids [n, seqlen]."""
    if config.smooth_alpha is None or _hooked(model):
        return model
    if calibration is None:
        raise ValueError("SmoothQuant's scales come from calibration activations: pass calibration="
                         "calibration_batch(tokenizer, n_samples=64, seqlen=512), or set smooth_alpha=None")
    return smooth(model, smooth_scales(model, calibration, config.smooth_alpha, config.skip))


# -----------------------------------------------------------------------------
# the model-level entry points


def quantize_activations(model: nn.Module, config: ActQuantConfig, calibration: torch.Tensor | None = None,
                         inplace: bool = False) -> nn.Module:
    """Round every linear's input per token at run time (forward pre-hooks), smoothing first when
    `config.smooth_alpha` is set (that needs `calibration`, token ids [n, seqlen]); linears
    already smoothed by `smooth` keep their s. Linears matching `config.skip` (the LM head) are
    left alone. The model is copied unless `inplace`; its `runtime_quant["activations"]` records
    the config (part of `workbench.abilities.model_fingerprint`, so caches tell the models apart)."""
    if not isinstance(config, ActQuantConfig):
        raise TypeError(f"config must be an ActQuantConfig, got {type(config).__name__}")
    qmodel = model if inplace else copy.deepcopy(model)
    smooth_for(qmodel, config, calibration)
    targets = {n: m for n, m in linear_modules(qmodel).items() if not re.search(config.skip, n)}
    if not targets:
        raise ValueError(f"this {type(qmodel).__name__} has no nn.Linear outside skip={config.skip!r}: no input to quantize")
    for m in targets.values():
        if hasattr(m, "_wb_input_quantizer"):
            m._wb_input_quantizer.config = config
        else:
            _install(m, InputQuantizer(config))
    qmodel.runtime_quant = {**getattr(qmodel, "runtime_quant", {}), "activations": config.to_json()["activations"]}
    return qmodel


@torch.no_grad()
def remove_activation_quantization(model: nn.Module) -> nn.Module:
    """Undo `quantize_activations` and `smooth` in place: hooks removed, smoothed weights divided
    by s again (up to float rounding; a weight quantized after smoothing stays as quantized)."""
    for m in _hooked(model).values():
        q = m._wb_input_quantizer
        if q.smooth is not None:
            m.weight.div_(q.smooth.to(m.weight.dtype))
        for key in [k for k, h in m._forward_pre_hooks.items() if h is q]:   # found by identity: survives deepcopy
            del m._forward_pre_hooks[key]
        del m._wb_input_quantizer
    state = dict(getattr(model, "runtime_quant", {}))
    state.pop("activations", None)
    model.runtime_quant = state
    return model
