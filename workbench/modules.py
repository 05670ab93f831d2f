"""Find a model's weight matrices by name, and say which layer and component each one is.

    from workbench.modules import linear_modules, module_info, select_modules
    module_info("model.layers.3.self_attn.q_proj")   # ModuleInfo(layer=3, component="q")
    names = select_modules(model, r"self_attn")       # error if the pattern matches nothing

Components are named the same way across architectures (Llama, Gemma, BERT) so that results
group and pivot naturally: q k v o (attention), gate up down (FFN), embed, head, other.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from torch import nn

# (regex on the module's own name or its parent path, component) — first match wins.
_COMPONENTS = [
    (r"(q_proj|query|q_lin)$", "q"),
    (r"(k_proj|key|k_lin)$", "k"),
    (r"(v_proj|value|v_lin)$", "v"),
    (r"(o_proj|attention\.output\.dense|out_lin|out_proj)$", "o"),
    (r"(gate_proj|w1)$", "gate"),
    (r"(up_proj|intermediate\.dense|w3|lin1)$", "up"),
    (r"(down_proj|(?<!attention\.)output\.dense|w2|lin2)$", "down"),
    (r"(embed_tokens|word_embeddings|wte|embeddings)$", "embed"),
    (r"(lm_head|embed_out)$", "head"),
]


class ModuleInfo(NamedTuple):
    layer: int | None      # transformer block index, None outside the blocks
    component: str         # q k v o gate up down embed head other


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
