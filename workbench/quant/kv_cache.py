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
agrees. The query is not rounded. By default every entry is rounded, as in QLLM-Eval's KV setting.

KIVI (Liu et al. 2024) rounds the keys per channel instead, because a few key channels are
large for every token:
    KVQuantConfig(bits=2, group_size=32, key_axis="channel", token_group=32, residual=128)
Each channel of a head is rounded over groups of `token_group` consecutive tokens, and the newest
tokens stay in full precision until a chunk of `residual` tokens is complete (KIVI's R, as in
transformers' QuantizedCache `residual_length`); `residual` also works with per-token keys. A
chunk is rounded once all its tokens exist, so a query at position t reads rounded keys and
values for the complete chunks up to t and full-precision ones for the rest of its own chunk.
In one pass over a prompt that differs from query to query: the attention is computed over both
copies of the keys and values, [rounded; full precision], with a mask that lets each query see
each key in exactly one of them, which is the attention a growing cache gives (tested). Chunks
are counted from each row's first real token (from `position_ids`, which transformers passes
to attention), so left padding in a batch does not move them.

The model must use transformers' attention interface (Llama/SmolLM2, Gemma 3, GPT-2 and most
models of transformers 5 do); `remove_kv_quantization` restores its own attention.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from workbench.quant.grid import _check_bool, fake_quantize_lastdim, json_fields

NAME = "workbench_kv"


@dataclass(frozen=True)
class KVQuantConfig:
    """How the keys and values that attention reads are rounded."""

    bits: int = 8                     # 2..8 (16: leave the cache alone, for a sweep's baseline)
    group_size: int | None = None     # None: one scale per token and head; g: groups of g channels (divides head_dim)
    symmetric: bool = False           # False: min..max per group (KIVI, QLLM-Eval); True: centred on 0
    keys: bool = True                 # round the keys
    values: bool = True               # round the values
    key_axis: str = "token"           # "token": a key rounded across its channels (groups of group_size), like a value;
                                      # "channel": each channel rounded across token_group tokens (KIVI)
    token_group: int = 32             # tokens per group of a key channel (key_axis="channel"; KIVI: 32)
    residual: int = 0                 # the newest tokens, up to a complete chunk of this many, stay in full
                                      # precision (KIVI's R: 128); a multiple of token_group for channel keys

    ADDED_LATER: ClassVar[tuple[str, ...]] = ("key_axis", "token_group", "residual")   # out of to_json at defaults

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (2 <= self.bits <= 8 or self.bits == 16):
            raise ValueError(f"KV-cache bits must be an integer in 2..8 (or 16: unquantized), got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer dividing head_dim, or None (the whole head); "
                             f"got {self.group_size!r}")
        for name in ("symmetric", "keys", "values"):
            _check_bool(self, name)
        if self.key_axis not in ("token", "channel"):
            raise ValueError(f'key_axis is "token" (per token, like the values) or "channel" (KIVI), got {self.key_axis!r}')
        for name in ("token_group", "residual"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "token_group" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'token_group' else 'non-negative'} integer "
                                 f"(tokens), got {v!r}")
        if self.key_axis == "channel" and (self.residual < self.token_group or self.residual % self.token_group):
            raise ValueError(f"per-channel keys are rounded over groups of token_group={self.token_group} tokens, so a "
                             "group can be rounded only once all its tokens exist: keep the newest tokens in full "
                             f"precision with residual a multiple of token_group, e.g. residual={4 * self.token_group} "
                             f"(KIVI: token_group=32, residual=128); got residual={self.residual}")

    def to_json(self) -> dict:
        return {"kv": json_fields(self)}

    @classmethod
    def from_json(cls, obj: dict) -> "KVQuantConfig":
        return cls(**obj["kv"])


def _inner_function(module: nn.Module, inner: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if inner == "eager":                           # each model file has its own eager attention
        return getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    return ALL_ATTENTION_FUNCTIONS[inner]


def _round_keys_per_channel(key: torch.Tensor, c: KVQuantConfig, pad: torch.Tensor) -> torch.Tensor:
    """Keys [batch, heads, tokens, head_dim] with each channel rounded over groups of c.token_group
    tokens, for the complete chunks of c.residual tokens counted from each row's first real token
    (after pad[b] padding tokens); the other entries are left as they are (the mask never reads them)."""
    out = key.clone()
    for b in range(key.shape[0]):
        start = int(pad[b])
        n = (key.shape[2] - start) // c.residual * c.residual                  # tokens in complete chunks
        if n:
            seg = key[b, :, start:start + n]                                     # [heads, n, d]
            g = seg.reshape(seg.shape[0], n // c.token_group, c.token_group, seg.shape[-1]).transpose(-1, -2)
            g = fake_quantize_lastdim(g, c.bits, None, c.symmetric)              # [heads, groups, d, token_group]
            out[b, :, start:start + n] = g.transpose(-1, -2).reshape(seg.shape)
    return out


def _with_residual(module: nn.Module, query, key, value, mask, rest: tuple, kwargs: dict):
    """Attention in which a query at position t reads the rounded keys and values of the complete
    chunks of c.residual tokens up to t and full-precision ones otherwise (the module docstring):
    the module's own attention over [rounded; full precision] keys and values, each key visible in
    exactly one copy."""
    c: KVQuantConfig = module.kv_quant
    b, q_len, k_len, device = query.shape[0], query.shape[2], key.shape[2], key.device
    pos_ids = kwargs.get("position_ids")                                         # [b or 1, q_len]: real positions
    pad = torch.zeros(b, dtype=torch.long, device=device) if pos_ids is None else \
        ((k_len - 1) - pos_ids[:, -1].to(device)).clamp(min=0).expand(b)       # left padding per row
    pos_k = torch.arange(k_len, device=device)[None] - pad[:, None]              # [b, k]
    pos_q = pos_k[:, k_len - q_len:]                                             # [b, q]
    chunk_end = (pos_k.div(c.residual, rounding_mode="floor") + 1) * c.residual - 1
    rounded = (chunk_end[:, None, :] <= pos_q[:, :, None]) & (pos_k[:, None, :] >= 0)   # [b, q, k]
    if mask is None:                                                            # the plain causal mask
        allowed = (torch.arange(k_len, device=device)[None] <= torch.arange(q_len, device=device)[:, None]
                   + (k_len - q_len))[None, None]
    elif mask.dtype == torch.bool:
        allowed = mask[..., :k_len]
    else:                                                                       # additive: 0 or a large negative
        allowed = mask[..., :k_len] > torch.finfo(mask.dtype).min / 2
    both = torch.cat([allowed & rounded[:, None], allowed & ~rounded[:, None]], dim=-1)   # [b, 1|h, q, 2k]
    if c.keys:
        key_q = _round_keys_per_channel(key, c, pad) if c.key_axis == "channel" else \
            fake_quantize_lastdim(key, c.bits, c.group_size, c.symmetric)
    else:
        key_q = key
    value_q = fake_quantize_lastdim(value, c.bits, c.group_size, c.symmetric) if c.values else value
    if module.kv_inner == "eager":                                              # eager adds its mask
        both = torch.zeros(both.shape, dtype=query.dtype, device=device).masked_fill(~both, torch.finfo(query.dtype).min)
    return _inner_function(module, module.kv_inner)(module, query, torch.cat([key_q, key], dim=2),
                                                     torch.cat([value_q, value], dim=2), both, *rest, **kwargs)


def kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    """The registered attention function: round key and value [batch, kv_heads, tokens, head_dim]
    by the module's `kv_quant` config, then run the module's own attention (`kv_inner`)."""
    c: KVQuantConfig = module.kv_quant
    if c.bits < 16:
        if c.group_size is not None and key.shape[-1] % c.group_size:
            raise ValueError(f"KV group_size {c.group_size} does not divide this model's head_dim {key.shape[-1]}: "
                             f"use a divisor of {key.shape[-1]} or None (the whole head)")
        if c.residual:
            mask, rest = (args[0], args[1:]) if args else (kwargs.pop("attention_mask", None), ())
            return _with_residual(module, query, key, value, mask, rest, kwargs)
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
