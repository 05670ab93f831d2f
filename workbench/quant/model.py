"""Quantize a whole model: pick each linear layer's config, run each method over its layers, report.

    from workbench.quant import QuantConfig, quantize_model
    qmodel, report = quantize_model(model, QuantConfig(bits=4, group_size=128))
    qmodel, report = quantize_model(model, {r"self_attn": QuantConfig(bits=4),
                                            r"mlp": QuantConfig(bits=2)})

Fake quantization writes the dequantized weights back into a copy of the model: the analysis
mode, in which every workbench analysis runs. Modules named like `lm_head` are left alone by
default (SmolLM2 ties it to the token embedding, so quantizing it would quantize that too).
`quantize_model` is one loop over the method registry (registry.py): each method quantizes its
share of the layers and returns one row per layer, which keeps every diagnostic it measured.
"""

from __future__ import annotations

import copy
import re
import time

import pandas as pd
import torch
from torch import nn

from workbench.modules import LM_HEAD, linear_modules, module_info, select_modules, to_linear
from workbench.quant import awq, bcq, gptq, rtn  # noqa: F401  (each registers its method)
from workbench.quant.activations import ActQuantConfig, quantize_activations, smooth_for
from workbench.quant.by_frequency import FrequencyBits, apply_frequency_bits
from workbench.quant.gptq import collect_hessians
from workbench.quant.grid import QuantConfig, relative_output_error
from workbench.quant.kv_cache import KVQuantConfig, quantize_kv_cache
from workbench.quant.registry import METHODS
from workbench.quant.rtn import as_rtn, rtn_quantize_weight


Spec = QuantConfig | dict[str, "QuantConfig | None"]
DEFAULT_SKIP = LM_HEAD                     # workbench.modules: the one head rule


def resolve_spec(model: nn.Module, spec: Spec, skip: str | None = DEFAULT_SKIP) -> dict[str, QuantConfig]:
    """Map each linear module to its config. A dict spec is {regex: config or None}, first match
    wins, None leaves the module alone; every pattern must match some module."""
    linears = linear_modules(model)
    if skip:
        linears = {n: m for n, m in linears.items() if not re.search(skip, n)}
    if not linears:
        skipped = f" outside skip={skip!r}" if skip and linear_modules(model) else ""
        raise ValueError(f"nothing to quantize: this {type(model).__name__} has no nn.Linear (or transformers "
                         f"Conv1D) layer{skipped}; quantize_model quantizes linear layers only "
                         "(quantize_embeddings does the embedding)")
    if isinstance(spec, QuantConfig):
        return {name: spec for name in linears}
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a QuantConfig or a dict of regex -> QuantConfig/None, got {type(spec).__name__}")
    chosen: dict[str, QuantConfig | None] = {}
    for pattern, cfg in spec.items():
        if cfg is not None and not isinstance(cfg, QuantConfig):
            raise TypeError(f"spec[{pattern!r}] must be a QuantConfig or None, got {type(cfg).__name__}")
        for name in select_modules(model, pattern, linears):
            chosen.setdefault(name, cfg)
    return {n: c for n, c in chosen.items() if c is not None}


def _row(name: str, cfg: QuantConfig, shape, **measures) -> dict:
    info = module_info(name)
    return dict(module=name, layer=info.layer, component=info.component, method=cfg.method, bits=cfg.bits,
                granularity=cfg.granularity,
                group_size=cfg.group_len(shape[1]) if cfg.granularity == "group" else None,
                groups=cfg.describe_groups(shape[1]), symmetric=cfg.symmetric,
                outlier_fraction=getattr(cfg, "outlier_fraction", 0.0), shape=tuple(shape), **measures)


RUNTIME_KEYS = {"weights", "activations", "kv"}


def is_runtime_spec(spec) -> bool:
    """Whether `spec` is the W x A x KV form {"weights": a weight spec or None, "activations":
    ActQuantConfig or None, "kv": KVQuantConfig or None} (see `precision_spec`)."""
    return isinstance(spec, dict) and bool(spec) and set(spec) <= RUNTIME_KEYS and "weights" in spec


_PRECISION = re.compile(r"^W(\d+)(?:A(\d+))?(?:KV(\d+))?$", re.IGNORECASE)


def precision_spec(label: str, method: str = "rtn", group_size: int = 128, smooth_alpha: float | None = None,
                   kv_group_size: int | None = None, kv_options: dict | None = None,
                   **weight_options) -> dict | None:
    """The spec that a label such as "W4A8KV4" names: weights at 4 bits (`method`, groups of
    `group_size`, any other QuantConfig field in `weight_options`), every linear's input at 8
    bits per token (SmoothQuant first when `smooth_alpha` is set), keys and values at 4 bits per
    token and head (groups of `kv_group_size`; any other KVQuantConfig field in `kv_options`, e.g.
    KIVI's {"key_axis": "channel", "token_group": 32, "residual": 128}). 16 leaves a part alone; a
    part not named stays at 16 ("W4" is weight-only, "W16A8" activations only); "W16" (or
    "W16A16KV16") is None, the unquantized model. Returns {"weights", "activations", "kv"} for
    `quantize_for_spec`."""
    m = _PRECISION.match(label.strip()) if isinstance(label, str) else None
    if m is None:
        raise ValueError(f"{label!r} is not a precision label: write W<bits>[A<bits>][KV<bits>], e.g. 'W4A8KV4', "
                         "'W8A8', 'W16KV4' (16: that part unquantized)")
    w, a, kv = (int(x) if x else 16 for x in m.groups())
    if w == 16 and a == 16 and kv == 16:
        return None
    extra = {"act_order": True} if method == "gptq" and "act_order" not in weight_options else {}
    return {"weights": None if w == 16 else QuantConfig(bits=w, group_size=group_size, method=method,
                                                        **extra, **weight_options),
            "activations": None if a == 16 and smooth_alpha is None else ActQuantConfig(bits=a, smooth_alpha=smooth_alpha),
            "kv": None if kv == 16 else KVQuantConfig(bits=kv, group_size=kv_group_size, **(kv_options or {}))}


def spec_configs(spec) -> list:
    """Every config in a spec (weights, embeddings, activations, KV), for what they have in common."""
    if spec is None:
        return []
    if is_runtime_spec(spec):
        return spec_configs(spec["weights"]) + [c for c in (spec.get("activations"), spec.get("kv")) if c is not None]
    if isinstance(spec, dict) and set(spec) == {"linears", "embeddings"}:
        return [c for c in [*spec["linears"].values(), spec["embeddings"]] if c is not None]
    if isinstance(spec, dict):
        return [c for c in spec.values() if c is not None]
    return [spec]


def spec_needs_calibration(spec) -> bool:
    """Whether applying `spec` needs calibration data (GPTQ, AWQ, channel outliers, SmoothQuant)."""
    return any(getattr(c, "needs_calibration", False) or getattr(c, "smooth_alpha", None) is not None
               for c in spec_configs(spec))


def spec_to_json(spec) -> dict | None:
    """A spec as plain data for a sweep point: None (unquantized); a QuantConfig as
    `QuantConfig.to_json()`; {regex: config or None} as {"patterns": [[regex, config or None], ...]}
    (order kept: the first match wins); the component spec of `workbench.abilities.component_specs`
    ({"linears": {...}, "embeddings": config, FrequencyBits or None}) with its linears in the same
    form; the W x A x KV spec of `precision_spec` as {"weights": ..., "activations": ..., "kv": ...}."""
    if spec is None:
        return None
    if isinstance(spec, (ActQuantConfig, KVQuantConfig)):
        return spec.to_json()
    if is_runtime_spec(spec):
        return {"runtime": {k: spec_to_json(spec.get(k)) for k in ("weights", "activations", "kv")}}
    if isinstance(spec, (QuantConfig, FrequencyBits)):
        return spec.to_json()
    if isinstance(spec, dict) and set(spec) == {"linears", "embeddings"}:
        return {"linears": spec_to_json(spec["linears"])["patterns"], "embeddings": spec_to_json(spec["embeddings"])}
    if isinstance(spec, dict):
        return {"patterns": [[k, spec_to_json(v)] for k, v in spec.items()]}
    raise TypeError(f"a spec is None, a QuantConfig or a dict of regex -> QuantConfig/None, got {type(spec).__name__}")


def spec_from_json(obj: dict | None):
    """The spec that `spec_to_json` wrote."""
    if obj is None:
        return None
    if "runtime" in obj:
        return {k: spec_from_json(v) for k, v in obj["runtime"].items()}
    if "activations" in obj:
        return ActQuantConfig.from_json(obj)
    if "kv" in obj:
        return KVQuantConfig.from_json(obj)
    if "patterns" in obj:
        return {k: spec_from_json(v) for k, v in obj["patterns"]}
    if "linears" in obj:
        return {"linears": {k: spec_from_json(v) for k, v in obj["linears"]}, "embeddings": spec_from_json(obj["embeddings"])}
    if "by_frequency" in obj:
        return FrequencyBits.from_json(obj)
    return QuantConfig.from_json(obj)


def quantize_for_spec(model: nn.Module, spec, calibration: torch.Tensor | None = None, tokenizer=None,
                      progress: bool = False, inplace: bool = False) -> tuple[nn.Module, pd.DataFrame | None]:
    """Apply a sweep spec to a copy of `model` (to `model` itself with `inplace`): None (the model itself, unchanged), a
    `quantize_model` spec, or a component spec {"linears": {regex: config or None}, "embeddings":
    QuantConfig (`quantize_embeddings`), FrequencyBits (row widths by token frequency: needs
    `tokenizer`) or None}, or the W x A x KV spec of `precision_spec` {"weights": any of these,
    "activations": ActQuantConfig or None, "kv": KVQuantConfig or None}: SmoothQuant's scales
    (from `calibration`) first, then the weights, then the run-time rounding of activations and
    KV cache. Returns (model, report: one row per quantized module, or None)."""
    if spec is None:
        return model, None
    if is_runtime_spec(spec):
        return _quantize_runtime(model, spec, calibration, tokenizer, progress, inplace)
    if not (isinstance(spec, dict) and set(spec) == {"linears", "embeddings"}):
        return quantize_model(model, spec, calibration=calibration, inplace=inplace, progress=progress)
    linears = {rx: c for rx, c in spec["linears"].items() if c is not None}
    reports, qmodel = [], model
    if linears:
        qmodel, rep = quantize_model(model, linears, calibration=calibration, inplace=inplace, progress=progress)
        reports.append(rep)
    emb = spec["embeddings"]
    if isinstance(emb, FrequencyBits):
        if tokenizer is None:
            raise ValueError("an embeddings spec by token frequency needs the tokenizer to count tokens: "
                             "quantize_for_spec(model, spec, tokenizer=tokenizer)")
        qmodel, rep = apply_frequency_bits(qmodel, tokenizer, emb, inplace=inplace or qmodel is not model)
        reports.append(rep)
    elif emb is not None:
        qmodel, rep = quantize_embeddings(qmodel, emb, inplace=inplace or qmodel is not model)
        reports.append(rep)
    return qmodel, (pd.concat(reports, ignore_index=True) if reports else None)


def _quantize_runtime(model, spec, calibration, tokenizer, progress, inplace):
    act, kv = spec.get("activations"), spec.get("kv")
    for key, cls in (("activations", ActQuantConfig), ("kv", KVQuantConfig)):
        if spec.get(key) is not None and not isinstance(spec[key], cls):
            raise TypeError(f'spec["{key}"] must be a {cls.__name__} or None, got {type(spec[key]).__name__}')
    qmodel = model if inplace else copy.deepcopy(model)      # the one copy: every step below works in place
    if act is not None:
        smooth_for(qmodel, act, calibration)          # before the weights are rounded
    report = None
    if spec["weights"] is not None:
        if is_runtime_spec(spec["weights"]):
            raise TypeError('spec["weights"] is a weight spec (QuantConfig, {regex: config}, or a component spec), '
                            "not another W x A x KV spec")
        qmodel, report = quantize_for_spec(qmodel, spec["weights"], calibration, tokenizer=tokenizer, progress=progress,
                                           inplace=True)
    if act is not None:
        quantize_activations(qmodel, act, inplace=True)
    if kv is not None:
        quantize_kv_cache(qmodel, kv, inplace=True)
    return qmodel, report


@torch.no_grad()
def quantize_model(model: nn.Module, spec: Spec, calibration: torch.Tensor | None = None,
                   inplace: bool = False, skip: str | None = DEFAULT_SKIP,
                   progress: bool = True) -> tuple[nn.Module, pd.DataFrame]:
    """Quantize the linear layers of `model` by `spec`; return the model and a per-module report.

    `spec` is one QuantConfig for every linear layer, or {module regex: QuantConfig or None}
    (first matching pattern wins; None leaves a module alone; a pattern that matches nothing is
    an error). Layers matching `skip` (default: the LM head) are left alone. `calibration`
    (token ids [n, seqlen], see `workbench.data.calibration_batch`) is required by GPTQ and by
    channel outliers; when given, the report also has each layer's relative output error on
    those inputs. RTN and BCQ layers are done first, then GPTQ runs block by block on the
    partly quantized model. transformers `Conv1D` layers (GPT-2) are first replaced by the equal
    nn.Linear (`workbench.modules.to_linear`); a model with no linear layer to quantize is an
    error. The model is copied unless `inplace`; its `quant_state` attribute
    maps module names to what `save_quantized` stores. Report columns: module, layer,
    component, method, bits, groups (e.g. '4x128+64': a shorter last group), symmetric,
    outlier_fraction, rel_weight_error ||W - Ŵ||/||W||, rel_output_error, time_s, note.
    """
    qmodel = model if inplace else copy.deepcopy(model)
    n_conv1d = to_linear(qmodel)               # GPT-2's Conv1D layers: the equal nn.Linear, weight [out, in]
    plan = resolve_spec(qmodel, spec, skip)
    need = sorted({n for n, c in plan.items() if c.needs_calibration})
    if need and calibration is None:
        raise ValueError(f"{len(need)} modules (e.g. {need[0]}) use GPTQ or channel outliers, which need "
                         "calibration data: pass calibration=calibration_batch(tokenizer, n_samples=32, seqlen=512)")
    modules = linear_modules(qmodel)
    original = {n: modules[n].weight.detach().clone() for n in plan}
    hessians = {}
    one_shot = [n for n, c in plan.items() if not METHODS[c.method].sequential]
    if calibration is not None and one_shot:   # for channel outliers and the output error of one-shot methods
        hessians = collect_hessians(qmodel, one_shot, calibration)
    state = dict(getattr(qmodel, "quant_state", {}))
    rows = []
    for method in sorted(METHODS.values(), key=lambda m: m.sequential):   # registration order, GPTQ-like last
        share = {n: c for n, c in plan.items() if c.method == method.name}
        if not share:
            continue
        for r in method.quantize(qmodel, share, calibration=calibration, hessians=hessians, progress=progress):
            name = r.pop("module")
            state[name] = r.pop("state")
            rows.append(_row(name, plan[name], original[name].shape, **r))
    current = {n: m.weight for n, m in qmodel.named_modules() if n in original}
    for row in rows:
        name = row["module"]
        w, w_hat = original[name].float(), current[name].detach().float()
        row["rel_weight_error"] = (torch.linalg.norm(w - w_hat) / torch.linalg.norm(w)).item()
        if name in hessians:
            row["rel_output_error"] = relative_output_error(w, w_hat, hessians[name])
    qmodel.quant_state = state
    order = {n: i for i, n in enumerate(plan)}
    report = pd.DataFrame(rows)
    if len(report):
        report = report.sort_values("module", key=lambda s: s.map(order)).reset_index(drop=True)
        first = ["module", "layer", "component", "method", "bits", "groups", "rel_weight_error"]
        report = report[first + [c for c in report.columns if c not in first]]
    report.attrs["conv1d_to_linear"] = n_conv1d
    return qmodel, report


@torch.no_grad()
def quantize_embeddings(model: nn.Module, config: QuantConfig, inplace: bool = False) -> tuple[nn.Module, pd.DataFrame]:
    """Round-to-nearest quantize the token embedding (and an untied output head); return model, report.

    The embedding matrix [vocab, hidden] is quantized like a linear weight, one row per token
    with groups along the hidden dimension. Only RTN applies (an embedding lookup has no input
    activations for GPTQ to use), so a GPTQ or BCQ `config` is quantized with RTN at the same
    bits and groups, and the report's note says so. When the output head is tied to the
    embedding (SmolLM2, Gemma) quantizing one quantizes both; an untied head is quantized too.
    """
    note = f"RTN (embeddings have no activations for {config.method})" if config.method != "rtn" else ""
    if config.method != "rtn":
        config = as_rtn(config)
    qmodel = model if inplace else copy.deepcopy(model)
    mats = {}
    emb = qmodel.get_input_embeddings()
    mats[next(n for n, m in qmodel.named_modules() if m is emb)] = emb
    head = qmodel.get_output_embeddings() if hasattr(qmodel, "get_output_embeddings") else None
    if head is not None and head.weight is not emb.weight:
        mats[next(n for n, m in qmodel.named_modules() if m is head)] = head
    rows = []
    for name, module in mats.items():
        w = module.weight
        t0 = time.perf_counter()
        try:
            w_hat, _ = rtn_quantize_weight(w.data, config)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        err = (torch.linalg.norm(w.data.float() - w_hat.float()) / torch.linalg.norm(w.data.float())).item()
        w.data.copy_(w_hat)
        tied = " (tied to the output head)" if head is not None and head.weight is emb.weight else ""
        rows.append(_row(name, config, w.shape, rel_weight_error=err, time_s=time.perf_counter() - t0,
                         note=(note + tied).strip()))
    return qmodel, pd.DataFrame(rows)
