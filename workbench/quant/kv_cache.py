"""KV-cache quantization: the keys and values attention reads, rounded per token and head (KV8/4/2).

    from workbench.quant.kv_cache import KVQuantConfig, quantize_kv_cache
    qmodel = quantize_kv_cache(model, KVQuantConfig(bits=4, group_size=32))

A quantized KV cache stores each token's key and value vectors (after RoPE, one per KV head) in
a few bits. Here the rounding happens inside attention: a transformers attention function
(registered with `AttentionInterface` as "workbench_kv_<inner>") rounds the key and value states
it is handed, per token, per head, in groups of `group_size` of the head's channels
(`grid.fake_quantize_lastdim`), then calls the model's own attention (`inner`: sdpa or eager).
Because every token's groups are rounded on their own and the rounding is idempotent, this is
what a cache holding rounded entries gives: a prompt scored in one pass (lm-eval's
log-likelihoods) and a generation that reads a growing cache (lm-eval's generate_until) see the
same rounded keys and values, and a test checks that generation with and without the cache
agrees. The query is not rounded. Unlike transformers' QuantizedCache, no recent tokens are kept
in full precision (its `residual_length`): every entry is rounded, as in QLLM-Eval's KV setting.

The model must use transformers' attention interface (Llama/SmolLM2, Gemma 3, GPT-2 and most
models of transformers 5 do); `remove_kv_quantization` restores its own attention.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

from workbench.quant.grid import _check_bool, fake_quantize_lastdim

NAME = "workbench_kv"


@dataclass(frozen=True)
class KVQuantConfig:
    """How the keys and values that attention reads are rounded."""

    bits: int = 8                     # 2..8 (16: leave the cache alone, for a sweep's baseline)
    group_size: int | None = None     # None: one scale per token and head; g: groups of g channels (divides head_dim)
    symmetric: bool = False           # False: min..max per group (KIVI, QLLM-Eval); True: centred on 0
    keys: bool = True                 # round the keys
    values: bool = True               # round the values

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (2 <= self.bits <= 8 or self.bits == 16):
            raise ValueError(f"KV-cache bits must be an integer in 2..8 (or 16: unquantized), got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer dividing head_dim, or None (the whole head); "
                             f"got {self.group_size!r}")
        for name in ("symmetric", "keys", "values"):
            _check_bool(self, name)

    def to_json(self) -> dict:
        return {"kv": asdict(self)}

    @classmethod
    def from_json(cls, obj: dict) -> "KVQuantConfig":
        return cls(**obj["kv"])


def _inner_function(module: nn.Module, inner: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if inner == "eager":                           # each model file has its own eager attention
        return getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    return ALL_ATTENTION_FUNCTIONS[inner]


def kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    """The registered attention function: round key and value [batch, kv_heads, tokens, head_dim]
    by the module's `kv_quant` config, then run the module's own attention (`kv_inner`)."""
    c: KVQuantConfig = module.kv_quant
    if c.bits < 16:
        if c.group_size is not None and key.shape[-1] % c.group_size:
            raise ValueError(f"KV group_size {c.group_size} does not divide this model's head_dim {key.shape[-1]}: "
                             f"use a divisor of {key.shape[-1]} or None (the whole head)")
        if c.keys:
            key = fake_quantize_lastdim(key, c.bits, c.group_size, c.symmetric)
        if c.values:
            value = fake_quantize_lastdim(value, c.bits, c.group_size, c.symmetric)
    return _inner_function(module, module.kv_inner)(module, query, key, value, *args, **kwargs)


def _register(inner: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = f"{NAME}_{inner}"
    AttentionInterface.register(name, kv_attention)
    if inner in ALL_MASK_ATTENTION_FUNCTIONS:       # the masks the inner attention expects
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "config")]


def quantize_kv_cache(model: nn.Module, config: KVQuantConfig, inplace: bool = False) -> nn.Module:
    """Round the keys and values every attention layer reads, by `config` (see the module
    docstring). The model is copied unless `inplace`; its `runtime_quant["kv"]` records the config
    (part of `workbench.abilities.model_fingerprint`). A model outside transformers' attention
    interface is an error that says so."""
    if not isinstance(config, KVQuantConfig):
        raise TypeError(f"config must be a KVQuantConfig, got {type(config).__name__}")
    qmodel = model if inplace else copy.deepcopy(model)
    current = getattr(getattr(qmodel, "config", None), "_attn_implementation", None)
    layers = _attention_modules(qmodel)
    if current is None or not layers or not hasattr(qmodel, "set_attn_implementation"):
        raise ValueError(f"KV-cache quantization works through transformers' attention interface; this "
                         f"{type(qmodel).__name__} has no attention layers that use it")
    inner = current.removeprefix(f"{NAME}_") if current.startswith(NAME) else current
    if inner not in ("sdpa", "eager"):
        raise ValueError(f"the model's attention is {inner!r}; KV-cache quantization wraps 'sdpa' or 'eager': "
                         "load the model with attn_implementation='sdpa'")
    for m in layers:
        m.kv_quant, m.kv_inner = config, inner
    qmodel.set_attn_implementation(_register(inner))
    if qmodel.config._attn_implementation != f"{NAME}_{inner}":
        raise ValueError(f"{type(qmodel).__name__} does not let its attention be replaced (transformers kept "
                         f"{qmodel.config._attn_implementation!r}): KV-cache quantization cannot run on it")
    qmodel.runtime_quant = {**getattr(qmodel, "runtime_quant", {}), "kv": config.to_json()["kv"]}
    return qmodel


def remove_kv_quantization(model: nn.Module) -> nn.Module:
    """Undo `quantize_kv_cache` in place: the model's own attention again."""
    layers = [m for m in _attention_modules(model) if hasattr(m, "kv_quant")]
    if layers:
        model.set_attn_implementation(layers[0].kv_inner)
        for m in layers:
            del m.kv_quant, m.kv_inner
    state = dict(getattr(model, "runtime_quant", {}))
    state.pop("kv", None)
    model.runtime_quant = state
    return model
