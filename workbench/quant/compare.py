"""The workbench's RTN next to HQQ, optimum-quanto and torchao: same model, same data, on the CPU.

    from workbench.quant.compare import LIBRARIES, compare_libraries, library_dequantized_weight, matching_config
    from workbench.models import load_model
    model, tokenizer, record = load_model("smollm2-135m")
    table = compare_libraries(model, tokenizer, record, corpus="lee", bits=4, group_size=64,
                              seqlen=512, max_windows=8)
    w_lib = library_dequantized_weight(w, "hqq", bits=4, group_size=64)     # the library's Ŵ
    w_wb = fake_quantize(w, matching_config("hqq", bits=4, group_size=64))  # equal up to ties

All three libraries run here on the CPU (`pip install .[compare]`; each is imported only when
used), each through its own quantized module: `HQQLinear` (PyTorch backend, which dequantizes
on every forward), quanto's frozen `QLinear` (a `WeightQBitsTensor` weight) and torchao's
`quantize_` with `IntxWeightOnlyConfig` (an `IntxUnpackedToInt8Tensor` weight). Every library
is asked for plain round-to-nearest: HQQ with `optimize=False` (no half-quadratic refinement),
quanto with its default `MaxOptimizer`, torchao with `MappingType.ASYMMETRIC` and the AFFINE
qparams algorithm. Bits each one offers: HQQ 1-8 (not 7), quanto 2 and 4, torchao 1-8; the
workbench starts at 2.

Each library's grid, and the workbench config that reproduces it (`matching_config`), for
fp32 weights (the workbench's models load in fp32):

    hqq      plain min..max; works with the inverse scale s' = (2^b-1)/(max-min) and
             zero = -min·s' in fp32, codes round(w·s' + zero), Ŵ = (q - zero)/s'. Its
             BaseQuantizeConfig rounds the zero at 4 bits only (round_zero=True iff nbits == 4).
             Scale and zero are kept at HQQLinear's compute_dtype, set here to the weight's
             dtype.  -> QuantConfig(zero_in_range=False, round_zero=(bits == 4), scale_dtype="float32")
    quanto   plain min..max; scale = (max-min)/(2^b-1) and a float shift = -min, both in the
             weight's dtype; codes round((w + shift)/scale), Ŵ = q·scale - shift (a real zero
             point, never rounded by QLinear).
             -> QuantConfig(zero_in_range=False, round_zero=False, scale_dtype="float32")
    torchao  GPTQ's range [min(w,0), max(w,0)] with an integer zero point; scale in the
             weight's dtype (IntxWeightOnlyConfig.scale_dtype=None); codes round(w·(1/scale)) + zp
             on the signed range [-2^(b-1), 2^(b-1)-1] (the same grid shifted by 2^(b-1)).
             -> QuantConfig(zero_in_range=True, round_zero=True, scale_dtype="float32"): the
             workbench default but for fp32 instead of fp16 scales.

"Up to ties": each library computes the same grid with different float operations (multiply
by an inverse scale, add the zero before or after rounding, shift in weight units), so a
weight whose w/scale + zero lies within an ulp of k + 1/2 may round the other way, and the two
Ŵ then differ by exactly one step; every other weight agrees to a few ulps. `agreement`
measures both. The workbench's default fp16 scales are *not* a tie-level difference: rounding
the scale (relative error up to 2^-11) moves every grid point a little and flips the codes of
weights near a half-way point, so the matching configs use fp32 scales.

What the existing QuantConfig cannot express (the matches above need none of it):
  * HQQ's default compute_dtype=float16: codes are chosen with the fp32 scale/zero, which are
    rounded to fp16 only afterwards and used in fp16 arithmetic; QuantConfig.scale_dtype rounds
    the scale *before* choosing the codes. It would need an option such as
    `round_qparams_after_codes: bool` (and an fp16 dequantization).
  * quanto on bf16/fp16 weights: its shift is -min in weight units at the weight's dtype, the
    workbench's real zero is in code units (-min/scale); it would need a `zero_domain="float"`
    option (Ŵ = q·scale + min, the tinygemm/quanto form).
  * HQQ's guards: s' = 1 when max-min <= 1e-4 and s' clamped to 2e4 (groups narrower than
    (2^b-1)/2e4); the workbench only widens groups whose max == min. No real weight group is
    that narrow.

Groups: all three form groups of `group_size` consecutive inputs of a row (HQQ axis=1 and quanto
axis=0 reshape W to [-1, group_size], torchao uses block (1, group_size)), the workbench's own
layout, as long as the row length divides by the group size. SmolLM2's rows are 576 wide
(q, k, v, o, gate, up) and 1536 (down), so group 64 divides every row and is the primary
setting of a comparison. At group 128 with 576-wide rows:
  * hqq runs silently but forms groups *across rows* (the flattened weight is cut every 128
    values, so row 0's last 64 inputs share a group with row 1's first 64); the workbench would
    need a `group_layout="flat"` option to reproduce it. It refuses only when out·in is not a
    multiple of the group size.
  * quanto raises "Group size (128) must be a divisor of (576)"; its QLinear left to itself
    picks the group size (128, else 96 or 64, the largest that divides) and would use 96.
  * torchao raises an AssertionError ("Expecting input size ... to be divisible by block_size").
  * the workbench uses 4 x 128 + one group of 64.
`compare_libraries` reports the refusals as rows with a note and no perplexity.
"""

from __future__ import annotations

import copy
import re
import time

import pandas as pd
import torch
from torch import nn

from workbench.modules import linear_modules
from workbench.quant import DEFAULT_SKIP, QuantConfig, choose_qparams, fake_quantize, quantize_model
from workbench.stats import perplexity_of

LIBRARIES = ("hqq", "quanto", "torchao")
LIBRARY_BITS = {"hqq": (2, 3, 4, 5, 6, 8), "quanto": (2, 4), "torchao": (2, 3, 4, 5, 6, 7, 8)}


def _check(library: str, bits: int) -> None:
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; available: {', '.join(LIBRARIES)}")
    if bits not in LIBRARY_BITS[library]:
        raise ValueError(f"{library} does not quantize to {bits} bits here; it offers "
                         f"{', '.join(map(str, LIBRARY_BITS[library]))}")


def matching_config(library: str, bits: int, group_size: int) -> QuantConfig:
    """The workbench QuantConfig whose grid is the library's plain RTN grid for fp32 weights.

    HQQ and quanto use the plain min..max of each group, torchao widens it to include 0 as
    GPTQ does; HQQ rounds the zero point at 4 bits only (its BaseQuantizeConfig), quanto never,
    torchao always; all three keep the scale at the weight's precision (fp32). The module
    docstring gives each library's formulas and what no QuantConfig field can express.
    """
    _check(library, bits)
    if library == "hqq":
        return QuantConfig(bits=bits, group_size=group_size, zero_in_range=False, round_zero=bits == 4,
                           scale_dtype="float32")
    if library == "quanto":
        return QuantConfig(bits=bits, group_size=group_size, zero_in_range=False, round_zero=False,
                           scale_dtype="float32")
    return QuantConfig(bits=bits, group_size=group_size, zero_in_range=True, round_zero=True,
                       scale_dtype="float32")


def _library_linear(linear: nn.Linear, library: str, bits: int, group_size: int) -> nn.Module:
    """The library's own quantized replacement for one nn.Linear, built by its plain RTN.

    A library's refusal (its AssertionError or ValueError, e.g. a group size that does not
    divide the row) is raised as a ValueError naming the library and quoting its message.
    HQQ's cross-row groups, which it forms without complaint, are left to the caller to flag.
    """
    _check(library, bits)
    try:
        if library == "hqq":
            from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

            config = BaseQuantizeConfig(nbits=bits, group_size=group_size, axis=1)
            config["weight_quant_params"]["optimize"] = False  # plain RTN, no half-quadratic refinement
            return HQQLinear(linear, config, compute_dtype=linear.weight.dtype, device=str(linear.weight.device))
        if library == "quanto":
            from optimum.quanto import QLinear, qint2, qint4

            qlinear = QLinear.from_module(linear, weights={2: qint2, 4: qint4}[bits])
            qlinear.weight_group_size = group_size  # quanto 0.2.7 picks 128/96/64 itself; no public argument
            with torch.inference_mode():  # else its weight's .t() fails inside workbench.evaluate's inference_mode
                qlinear.freeze()
            return qlinear
        from torchao.quantization import IntxWeightOnlyConfig, MappingType, PerGroup, quantize_

        quantize_(linear, IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"),
                                               granularity=PerGroup(group_size), mapping_type=MappingType.ASYMMETRIC))
        return linear
    except (AssertionError, ValueError) as e:
        shape = "x".join(map(str, linear.weight.shape))
        raise ValueError(f"{library} refuses a {shape} weight at group size {group_size}: {e}") from None


@torch.no_grad()
def _dequantized(module: nn.Module, library: str) -> torch.Tensor:
    """The dequantized weight [out, in] held by a module from `_library_linear`, in float32."""
    if library == "hqq":
        return module.dequantize().float()
    return module.weight.dequantize().detach().float()  # quanto WeightQBitsTensor / torchao IntxUnpackedToInt8Tensor


def library_dequantized_weight(weight: torch.Tensor, library: str, bits: int, group_size: int) -> torch.Tensor:
    """Quantize one weight matrix [out, in] with the library's own plain RTN; return its Ŵ in float32.

    The weight goes through the same quantized module that `library_quantize_model` builds
    (HQQLinear, quanto's QLinear, torchao's quantize_), so the test of this function is a test
    of the models that `compare_libraries` evaluates. Raises ValueError where the library
    refuses the group size.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix [out, in], got shape {tuple(weight.shape)}")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.copy_(weight.float())
    return _dequantized(_library_linear(linear, library, bits, group_size), library)


def agreement(weight: torch.Tensor, library_weight: torch.Tensor, config: QuantConfig) -> dict:
    """How far a library's Ŵ is from the workbench's `fake_quantize(weight, config)`, in steps.

    A weight differs when |Ŵ_lib - Ŵ_wb| exceeds 1/1000 of its group's step (the workbench's
    scale), which leaves out the few-ulp noise of different float operations. Returns
    max_abs_diff, n_weights, n_differing, share_differing, and n_not_one_step: how many of
    the differing weights are not exactly one step apart (a tie broken the other way is one
    step; anything else means the grids do not match).
    """
    reference = fake_quantize(weight.float(), config)
    scale, _ = choose_qparams(weight.float(), config)
    cols = weight.shape[1]
    step = scale.repeat_interleave(config.group_len(cols), dim=1)[:, :cols]  # group_len: the row, unless grouping
    diff = (library_weight.float() - reference).abs()
    differing = diff > 1e-3 * step
    not_one_step = differing & ((diff / step - 1).abs() > 1e-3)
    return dict(max_abs_diff=diff.max().item(), n_weights=diff.numel(), n_differing=int(differing.sum()),
                share_differing=differing.float().mean().item(), n_not_one_step=int(not_one_step.sum()))


@torch.no_grad()
def library_quantize_model(model: nn.Module, library: str, bits: int, group_size: int,
                           skip: str | None = DEFAULT_SKIP) -> tuple[nn.Module, float]:
    """A deep copy of `model` with every nn.Linear not matching `skip` replaced by the library's module.

    The replacements are the libraries' real quantized modules, not fake quantization:
    HQQLinear (compute dtype = the weight's), quanto's frozen QLinear, torchao's Linear with an
    IntxUnpackedToInt8Tensor weight; all three run on the CPU. Returns the model and the wall
    time of the quantization alone (the copy and the library import are not counted).
    """
    _check(library, bits)
    _library_linear(nn.Linear(group_size, 8, bias=False), library, bits, group_size)  # import and warm up
    qmodel = copy.deepcopy(model)
    names = [n for n in linear_modules(qmodel) if not (skip and re.search(skip, n))]
    t0 = time.perf_counter()
    for name in names:
        qmodel.set_submodule(name, _library_linear(qmodel.get_submodule(name), library, bits, group_size))
    return qmodel, time.perf_counter() - t0


COMPARE_DEFAULTS = {          # every argument of `library_point`, spelled out for its sweep key
    "method": "unquantized",  # "unquantized", "workbench" (its RTN under `config`) or one of LIBRARIES
    "config": None,           # QuantConfig.to_json() of the workbench's RTN (method "workbench")
    "bits": 4,                # the library's bits and group size (method a library)
    "group_size": 128,
    "corpus": "lee",          # workbench.data corpus whose evaluation split is scored
    "seqlen": 512,            # window length in tokens
    "max_windows": None,      # None: the whole evaluation split
    "skip": DEFAULT_SKIP,     # linear layers left alone (the LM head)
}


def _build(p: dict, model: nn.Module) -> tuple[nn.Module | None, dict]:
    """The model a `library_point` evaluates, and its summary fields before evaluation (None: refused)."""
    info = dict(quantize_time_s=0.0, max_abs_diff=float("nan"), share_of_weights_differing=float("nan"),
                n_differing_not_one_step=None, note="")
    if p["method"] == "unquantized":
        return model, info
    if p["method"] == "workbench":
        qmodel, report = quantize_model(model, QuantConfig.from_json(p["config"]), skip=p["skip"], progress=False)
        return qmodel, {**info, "quantize_time_s": float(report.time_s.sum()),
                        "note": "groups " + ", ".join(sorted(set(report.groups)))}
    library, bits, group_size, skip = p["method"], p["bits"], p["group_size"], p["skip"]
    try:
        config = matching_config(library, bits, group_size)
        lmodel, qtime = library_quantize_model(model, library, bits, group_size, skip=skip)
    except (ValueError, AssertionError) as e:
        return None, {**info, "quantize_time_s": float("nan"), "note": f"refused: {str(e).splitlines()[0]}"}
    totals = dict(max_abs_diff=0.0, n_weights=0, n_differing=0, n_not_one_step=0)
    for name, m in linear_modules(model).items():
        if skip and re.search(skip, name):
            continue
        a = agreement(m.weight.detach(), _dequantized(lmodel.get_submodule(name), library), config)
        totals["max_abs_diff"] = max(totals["max_abs_diff"], a["max_abs_diff"])
        for key in ("n_weights", "n_differing", "n_not_one_step"):
            totals[key] += a[key]
    odd_rows = sorted({m.weight.shape[1] for n, m in linear_modules(model).items()
                       if not (skip and re.search(skip, n)) and m.weight.shape[1] % group_size})
    return lmodel, {**info, "quantize_time_s": qtime, "max_abs_diff": totals["max_abs_diff"],
                    "share_of_weights_differing": totals["n_differing"] / totals["n_weights"],
                    "n_differing_not_one_step": totals["n_not_one_step"],
                    "note": f"groups straddle rows of {odd_rows} inputs" if library == "hqq" and odd_rows else ""}


def library_point(point: dict) -> dict:
    """A `workbench.experiments` measure: the perplexity of `point["model"]` unquantized, under the
    workbench's RTN (`config`) or under a library's own quantized modules, with one item per
    window (its summed NLL), the quantization time, the evaluation time and, for a library, the
    agreement of its Ŵ with the workbench's `matching_config` (see `agreement`). A library's
    refusal is a record with a note and no windows. Run it with `defaults=COMPARE_DEFAULTS`."""
    from workbench.experiments import loaded
    from workbench.models import load_model

    p = {**COMPARE_DEFAULTS, **point}
    model, tokenizer, _ = loaded(("model", "causal-lm", p["model"]), lambda: load_model(p["model"]))
    qmodel, summary = _build(p, model)
    if qmodel is None:
        return {"summary": {**summary, "perplexity": float("nan"), "eval_time_s": float("nan")}, "items": []}
    t0 = time.perf_counter()
    items = _scored_windows(p, qmodel, tokenizer)
    etime = time.perf_counter() - t0
    ppl = perplexity_of(sum(i["nll"] for i in items), sum(i["tokens"] for i in items))
    return {"summary": {**summary, "perplexity": ppl, "eval_time_s": etime},
            "items": items}


def _scored_windows(p: dict, qmodel: nn.Module, tokenizer, index: list[int] | None = None) -> list[dict]:
    """The summed NLL of the point's windows (all, or those numbered in `index`), as record items."""
    from workbench.data import evaluation_text
    from workbench.evaluate import token_windows, window_nll

    seqs = token_windows(tokenizer, evaluation_text(p["corpus"]), p["seqlen"], p["max_windows"])
    index = list(range(len(seqs))) if index is None else sorted(int(w) for w in index)
    nll = window_nll(qmodel, seqs[index], progress=False)
    return [{"window": i, "nll": float(v), "tokens": p["seqlen"] - 1} for i, v in zip(index, nll.tolist())]


def rerun_library_windows(point: dict, windows: list[int]) -> list[dict]:
    """Re-score some windows of a `library_point` record from scratch (the model loaded and
    quantized again by the workbench or the library); items in the record's format, in window order."""
    from workbench.models import load_model

    p = {**COMPARE_DEFAULTS, **point}
    model, tokenizer, _ = load_model(p["model"])
    qmodel, summary = _build(p, model)
    if qmodel is None:
        raise ValueError(f"{p['method']} refused this point ({summary['note']}); it has no windows to re-score")
    return _scored_windows(p, qmodel, tokenizer, windows)


def compare_libraries(model: nn.Module, tokenizer, record, corpus: str = "lee", bits: int = 4, group_size: int = 128,
                      libraries=LIBRARIES, seqlen: int = 512, max_windows: int | None = None,
                      skip: str | None = DEFAULT_SKIP, baseline: bool = True, name: str = "libraries",
                      snapshot: bool = False, return_windows: bool = False, progress: bool = True):
    """Perplexity and time of the workbench's RTN and of each library's at the same bits and group size.

    One point of the sweep `name` (workbench.experiments, measure `library_point`) per row, each
    stored with its windows' NLL as it finishes and read back on the next call; with
    `snapshot=True` from and to the committed snapshot data/snapshots/<name>.json.gz. `record`
    is load_model's record of `model`, `corpus` names the evaluation split. Rows: the
    unquantized model (if `baseline`), the workbench with its default config, then per library
    the workbench with `matching_config` (where the library offers these bits) and the library
    itself. Columns: method, library, bits, group_size, perplexity with its 95% bootstrap
    interval over windows (low, high; NaN with one window or none), windows, quantize_time_s (the
    quantization alone), eval_time_s (the perplexity run, which for the libraries goes through
    their own CPU kernels; both times are those of the run that made the record), and for
    library rows the agreement of their Ŵ with the workbench's matching config summed over all
    quantized modules: max_abs_diff, share_of_weights_differing, n_differing_not_one_step;
    note says where a library refused or formed other groups. With `return_windows=True` it
    returns (table, windows): one row per window (label = method, corpus, window, nll, tokens),
    for paired tests (`stats.paired_windows`).
    """
    from workbench.evaluate import perplexity_versions
    from workbench.experiments import provide, run_sweep

    if isinstance(libraries, str):
        raise TypeError(f"libraries must be a list of names, got the string {libraries!r}; pass ({libraries!r},)")
    unknown = [lib for lib in libraries if lib not in LIBRARIES]
    if unknown:
        raise ValueError(f"unknown libraries {unknown}; choose from {', '.join(LIBRARIES)}")
    provide(("model", "causal-lm", record.name), (model, tokenizer, record))
    base = {"model": record.name, "bits": bits, "group_size": group_size, "corpus": corpus, "seqlen": seqlen,
            "max_windows": max_windows, "skip": skip}
    rows = [("unquantized", "none", {"method": "unquantized"})] if baseline else []
    rows.append(("workbench RTN (default config)", "workbench",
                 {"method": "workbench", "config": QuantConfig(bits=bits, group_size=group_size).to_json()}))
    for library in libraries:
        try:
            rows.append((f"workbench RTN matching {library}", "workbench",
                         {"method": "workbench", "config": matching_config(library, bits, group_size).to_json()}))
        except ValueError:
            pass                      # the library's own point records the refusal
        rows.append((f"{library} RTN", library, {"method": library}))
    records = run_sweep([{**base, **p} for _, _, p in rows], library_point, name, defaults=COMPARE_DEFAULTS,
                        versions=perplexity_versions(record, tokenizer), snapshot=name if snapshot else None,
                        progress=progress)
    from workbench.stats import window_bounds

    table = [{"method": method, "library": library, "bits": bits, "group_size": group_size,
              "perplexity": r["summary"]["perplexity"], **dict(zip(("low", "high"), window_bounds(r["items"]))),
              "windows": len(r["items"]), "quantize_time_s": r["summary"]["quantize_time_s"],
              "eval_time_s": r["summary"]["eval_time_s"], "max_abs_diff": r["summary"]["max_abs_diff"],
              "share_of_weights_differing": r["summary"]["share_of_weights_differing"],
              "n_differing_not_one_step": r["summary"]["n_differing_not_one_step"], "note": r["summary"]["note"]}
             for (method, library, _), r in zip(rows, records)]
    frame = pd.DataFrame(table)
    frame["n_differing_not_one_step"] = frame["n_differing_not_one_step"].astype("Int64")
    if return_windows:
        windows = pd.DataFrame([{"label": method, "corpus": corpus, **i} for (method, _, _), r in zip(rows, records)
                                for i in r["items"]], columns=["label", "corpus", "window", "nll", "tokens"])
        return frame, windows
    return frame
