"""Find a model's weight matrices by name, and say which layer and component each one is.

    from workbench.modules import linear_modules, module_info, select_modules
    module_info("model.layers.3.self_attn.q_proj")   # ModuleInfo(layer=3, component="q")
    names = select_modules(model, r"self_attn")       # error if the pattern matches nothing

    n = to_linear(model)                              # GPT-2's Conv1D layers become nn.Linear, in place

Components are named the same way across architectures (Llama, Gemma, BERT, GPT-2) so that
results group and pivot naturally: q k v o (attention; qkv when fused, as GPT-2's c_attn), gate
up down (FFN), embed, head, other.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import nn

# (regex on the module's own name or its parent path, component) — first match wins.
_COMPONENTS = [
    (r"(q_proj|query|q_lin)$", "q"),
    (r"(k_proj|key|k_lin)$", "k"),
    (r"(v_proj|value|v_lin)$", "v"),
    (r"(c_attn|qkv_proj|query_key_value|Wqkv)$", "qkv"),
    (r"(o_proj|attention\.output\.dense|out_lin|out_proj|attn\.c_proj)$", "o"),
    (r"(gate_proj|w1)$", "gate"),
    (r"(up_proj|intermediate\.dense|w3|lin1|c_fc)$", "up"),
    (r"(down_proj|(?<!attention\.)output\.dense|w2|lin2|mlp\.c_proj)$", "down"),
    (r"(embed_tokens|word_embeddings|wte|embeddings)$", "embed"),
    (r"(lm_head|embed_out)$", "head"),
]


# The one rule for heads, used by quantizers (what they skip) and by adaptation (what trains).
LM_HEAD = r"(^|\.)(lm_head|embed_out)$"                       # a language model's output layer: quantize_model skips it
TASK_HEAD = r"(^|\.)(classifier|score)(\.|$)"                 # a freshly initialized task head (module or parameter)
HEAD = r"(^|\.)(classifier|score|lm_head|embed_out)(\.|$)"    # either: never an adapter target, never quantized by adapt
# A model's components, for sensitivity analyses and bit budgets: name -> regex over linear-module
# names ("embeddings": the token embedding and the output head, quantized with `quantize_embeddings`).
COMPONENT_GROUPS = {"attention": r"self_attn|attention\.", "ffn": r"mlp|intermediate\.dense|(?<!attention\.)output\.dense",
                    "embeddings": None}


def is_task_head(name: str) -> bool:
    """Whether module or parameter `name` belongs to a freshly initialized task head (a
    classifier's `classifier` or `score` layer), which trains under every adaptation method at its
    own rate. An LM head (`lm_head`, `embed_out`) is pre-trained, often tied to the embeddings, and
    is not one: it stays frozen unless a method trains everything."""
    return re.search(TASK_HEAD, name) is not None


class ModuleInfo(NamedTuple):
    layer: int | None      # transformer block index, None outside the blocks
    component: str         # q k v qkv o gate up down embed head other


def module_info(name: str) -> ModuleInfo:
    """Layer index and component of a module from its dotted name."""
    m = re.search(r"\.(?:layers|layer|h|blocks)\.(\d+)\.", f".{name}.")
    layer = int(m.group(1)) if m else None
    for pattern, component in _COMPONENTS:
        if re.search(pattern, name):
            return ModuleInfo(layer, component)
    return ModuleInfo(layer, "other")


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Every `nn.Linear` in the model by its dotted name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _is_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 family): y = x @ W + b with W [in, out], a linear layer stored transposed."""
    return type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers")


def to_linear(model: nn.Module) -> int:
    """Replace every transformers `Conv1D` of `model` by the equal `nn.Linear`, in place; return how many.

    Conv1D computes x @ W + b with W stored [in, out]; the nn.Linear gets weight W.T [out, in] (a
    copy, same values) and the same bias, so the outputs are the same up to float summation order
    and every quantizer, probe and checkpoint sees the one [out, in] layout. The state dict's keys
    stay; the Conv1D weights appear transposed in it.
    """
    convs = [(n, m) for n, m in model.named_modules() if _is_conv1d(m)]
    for name, conv in convs:
        w = conv.weight.detach()                                    # [in, out]
        linear = nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        linear.weight = nn.Parameter(w.t().contiguous(), requires_grad=conv.weight.requires_grad)   # [out, in]
        if conv.bias is not None:
            linear.bias = conv.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    return len(convs)


def select_modules(model: nn.Module, pattern: str, candidates: dict[str, nn.Module] | None = None) -> list[str]:
    """Names of the linear modules whose name `re.search`es `pattern`; an error if none does."""
    candidates = linear_modules(model) if candidates is None else candidates
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"module pattern {pattern!r} is not a valid regular expression: {e}") from None
    names = [n for n in candidates if rx.search(n)]
    if not names:
        examples = ", ".join(list(candidates)[:4])
        raise ValueError(f"module pattern {pattern!r} matches no linear module of this model; "
                         f"names look like: {examples}, ...")
    return names


def check_finite(weights: torch.Tensor | nn.Module, name: str = "the weight", why: str = "") -> None:
    """Raise ValueError if a tensor, or any parameter of a module, holds NaN or inf.

    The one non-finite weight check of the workbench: the error names the tensor (for a module,
    its first non-finite parameter), how many values are bad, and what to check. `why` says what
    the caller would do wrong with them (e.g. "quantizing it would spread them").
    """
    tensors = weights.named_parameters() if isinstance(weights, nn.Module) else [(name, weights)]
    for tname, t in tensors:
        try:
            bad = ~torch.isfinite(t.detach())
        except (NotImplementedError, RuntimeError, TypeError):
            continue                           # a library's quantized tensor subclass (torchao) has no isfinite
        if bad.any():
            n_nan = int(torch.isnan(t.detach()).sum())
            raise ValueError(f"{tname} holds {n_nan} NaN and {int(bad.sum()) - n_nan} inf values of {t.numel()}"
                             f"{'; ' + why if why else ''}. Check the checkpoint or the step that produced it "
                             "(a diverged fine-tune, a broken quantization)")
