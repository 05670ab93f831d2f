"""Probes that explain where quantization hurts: weight and activation outliers, and spectra.

    from workbench.probes import weight_stats, activation_stats, outlier_features, spectra
    ws = weight_stats(model)                             # one row per weight matrix
    ch = weight_channel_max(model)                       # one row per (matrix, input channel)
    acts, act_ch = activation_stats(model, calibration)  # per module, and per (module, channel)
    feats = outlier_features(model, calibration)         # LLM.int8 outlier dimensions, one row per dim
    sp = spectra(model)                                  # stable rank, effective rank, sigma_max
    sq = spectra_under_quantization(model, {"W4": QuantConfig(bits=4)})
    qe = quantization_error(model, {"W4": QuantConfig(bits=4)}, calibration)  # weight and output error per matrix
    rel = relate(ws, report)                             # join with a quantize_model report
    correlations(rel, ["kurtosis", "stable_rank"], "rel_weight_error")

Every function returns a tidy pandas DataFrame with `module`, `layer` and `component` columns
(q k v o gate up down embed head), so results group and pivot naturally. Weight matrices are the
model's nn.Linear layers and its token embedding; an LM head tied to the embedding is the same
matrix and is reported once (as the embedding).

Definitions (W is [out, in], w its entries, sigma their standard deviation):
- kurtosis: Pearson's, E[(w - mean)^4] / sigma^4 (a Gaussian has 3; heavy tails push it up).
- max_over_std: max |w - mean| / sigma. beyond_3sigma, beyond_6sigma: share of entries past k sigma.
- outlier_error_share: the share of the squared RTN error ||W - Q(W)||^2 that goes away when the
  top `outlier_fraction` of weights by magnitude are kept in full precision (and the remaining
  groups' scales are re-chosen without them): how much of the error the outliers *cause*.
- levels_per_block: median number of distinct values in a block of 32 consecutive weights of a
  row. A real fp32 matrix has ~32; a matrix dequantized from a 4-bit checkpoint has <= 16.
- group_bias_share: the share of the squared quantization error that is each group's mean error
  (about 1/group size when errors are independent; see group_bias_share).
- stable rank: ||W||_F^2 / ||W||_2^2 = sum s_i^2 / s_1^2 (1 for rank one, n for an orthogonal n x n).
- effective rank (Roy & Vetterli 2007): exp(entropy of p_i = s_i / sum s_j).
- LLM.int8 outlier features (Dettmers et al. 2022): a hidden dimension whose magnitude reaches
  `threshold` (6.0) in at least `token_share` (6%) of the tokens, in the inputs of at least
  `layer_share` (25%) of the layers.
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.quant.gptq import _check_calibration
from workbench.modules import check_finite, linear_modules, module_info, select_modules
from workbench.quant import QuantConfig, Spec, fake_quantize, quantize_model
from workbench.quant.grid import relative_output_errors
from workbench.quant.rtn import as_rtn

LEVEL_BLOCK = 32          # block length for levels_per_block (the GGUF block size)
INT8_THRESHOLD = 6.0      # LLM.int8 defaults
INT8_LAYER_SHARE = 0.25
INT8_TOKEN_SHARE = 0.06


# ----------------------------------------------------------------------------- weight matrices

def weight_matrices(model: nn.Module, pattern: str | None = None) -> dict[str, torch.Tensor]:
    """The model's weight matrices by module name, in model order: every nn.Linear and nn.Embedding
    (a matrix shared by several modules, like a tied LM head, appears once under its first name).
    `pattern` keeps only names that `re.search` it; a pattern that matches nothing is an error."""
    mats, seen = {}, set()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.dim() == 2:
            if m.weight.data_ptr() in seen:
                continue
            seen.add(m.weight.data_ptr())
            mats[name] = m.weight.detach()
    if pattern is not None:
        mats = {n: mats[n] for n in select_modules(model, pattern, mats)}
    for name, w in mats.items():
        check_finite(w, name)
    return mats


def _ids(name: str) -> dict:
    info = module_info(name)
    return dict(module=name, layer=info.layer, component=info.component)


def levels_per_block(w: torch.Tensor, block: int = LEVEL_BLOCK) -> float:
    """Median number of distinct values in each run of `block` consecutive weights of a row
    (rows cut to a multiple of `block`); <= 2^b for a matrix dequantized from a b-bit grid."""
    cols = w.shape[1] // block * block
    if cols == 0:
        return float("nan")
    blocks = w[:, :cols].reshape(-1, block).float()
    s = blocks.sort(dim=1).values
    distinct = 1 + (s[:, 1:] != s[:, :-1]).sum(1)
    return float(distinct.median())


def outlier_error_share(w: torch.Tensor, config: QuantConfig, outlier_fraction: float = 0.01) -> float:
    """Share of the squared RTN error of `w` under `config` removed by keeping the top
    `outlier_fraction` of weights (by magnitude) in full precision: 1 - err_kept / err_all."""
    base = ((fake_quantize(w, config) - w) ** 2).sum()
    kept_cfg = as_rtn(config, outlier_fraction=outlier_fraction, outlier_mode="weight")
    kept = ((fake_quantize(w, kept_cfg) - w) ** 2).sum()
    return float(1 - kept / base) if base > 0 else 0.0


def weight_stats(model: nn.Module, pattern: str | None = None,
                 config: QuantConfig = QuantConfig(bits=4, group_size=128),
                 outlier_fraction: float = 0.01, progress: bool = True) -> pd.DataFrame:
    """One row per weight matrix: shape, std, kurtosis, max_abs, max_over_std, beyond_3sigma,
    beyond_6sigma, levels_per_block, rel_rtn_error (||W - Q(W)||/||W|| under `config`) and
    outlier_error_share (share of that error caused by the top `outlier_fraction` weights).
    Embeddings are included; error columns are computed for them too (at `config`)."""
    rows = []
    for name, w in tqdm(weight_matrices(model, pattern).items(), desc="weight stats", disable=not progress):
        w = w.float()
        x = w - w.mean()
        std = x.pow(2).mean().sqrt()
        z = x.abs() / std
        q = fake_quantize(w, config)
        rows.append(dict(**_ids(name), shape=tuple(w.shape), numel=w.numel(), std=float(std),
                         kurtosis=float((z ** 4).mean()), max_abs=float(w.abs().max()),
                         max_over_std=float(z.max()), beyond_3sigma=float((z > 3).float().mean()),
                         beyond_6sigma=float((z > 6).float().mean()), levels_per_block=levels_per_block(w),
                         rel_rtn_error=float((q - w).norm() / w.norm()),
                         outlier_error_share=outlier_error_share(w, config, outlier_fraction)))
    return pd.DataFrame(rows)


def weight_channel_max(model: nn.Module, pattern: str | None = r"^(?!.*lm_head)") -> pd.DataFrame:
    """One row per (linear module, input channel): abs_max = max_j |W[j, channel]| and
    ratio = abs_max / median over the module's channels (an outlier input channel stands out)."""
    frames = []
    linears = {n: m.weight for n, m in linear_modules(model).items()}
    names = select_modules(model, pattern, linears) if pattern else list(linears)
    for name in names:
        cmax = linears[name].detach().float().abs().amax(0)                            # [in]
        ids = _ids(name)
        frames.append(pd.DataFrame(dict(module=name, layer=ids["layer"], component=ids["component"],
                                        channel=np.arange(cmax.numel()), abs_max=cmax.numpy(),
                                        ratio=(cmax / cmax.median()).numpy())))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- activations

@contextlib.contextmanager
def _input_hooks(modules: dict[str, nn.Module], observe):
    """Call observe(name, x) on the input of each module during forward passes; the hooks are
    removed when the block exits, also when a forward pass raised."""
    handles = []
    try:
        for name, m in modules.items():
            handles.append(m.register_forward_pre_hook(lambda mod, args, name=name: observe(name, args[0])))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def _run(model: nn.Module, calibration: torch.Tensor, batch_size: int, progress: bool, desc: str) -> None:
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(calibration), batch_size), desc=desc, disable=not progress):
        model(input_ids=calibration[i:i + batch_size].to(device))


def activation_stats(model: nn.Module, calibration: torch.Tensor, pattern: str | None = r"^(?!.*lm_head)",
                     threshold: float = INT8_THRESHOLD, batch_size: int = 4,
                     progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics of each linear layer's input over the calibration tokens, gathered by forward
    hooks (streaming: no activation is kept). Returns (per_module, per_channel):
    per_module has one row per module with tokens, abs_max, channel_max_ratio (largest channel
    maximum / median channel maximum) and outlier_channels (channels reaching `threshold` on
    any token); per_channel has one row per (module, input channel) with abs_max, rms and
    share_over (share of tokens where |x| >= threshold)."""
    _check_calibration(calibration)
    linears = linear_modules(model)
    names = select_modules(model, pattern, linears) if pattern else list(linears)
    acc = {}

    def observe(name, x):
        x = x.detach().float().reshape(-1, x.shape[-1])                               # [tokens, in]
        a = x.abs()
        s = acc.setdefault(name, dict(n=0, max=torch.zeros(x.shape[-1]), sq=torch.zeros(x.shape[-1]),
                                      over=torch.zeros(x.shape[-1])))
        s["n"] += x.shape[0]
        s["max"] = torch.maximum(s["max"], a.amax(0).cpu())
        s["sq"] += (x ** 2).sum(0).cpu()
        s["over"] += (a >= threshold).sum(0).cpu().float()

    with _input_hooks({n: linears[n] for n in names}, observe):
        _run(model, calibration, batch_size, progress, "activation stats")
    modules, channels = [], []
    for name in names:
        s = acc[name]
        ids = _ids(name)
        modules.append(dict(**ids, tokens=s["n"], abs_max=float(s["max"].max()),
                            channel_max_ratio=float(s["max"].max() / s["max"].median().clamp(min=1e-12)),
                            outlier_channels=int((s["max"] >= threshold).sum())))
        channels.append(pd.DataFrame(dict(module=name, layer=ids["layer"], component=ids["component"],
                                          channel=np.arange(len(s["max"])), abs_max=s["max"].numpy(),
                                          rms=(s["sq"] / s["n"]).sqrt().numpy(),
                                          share_over=(s["over"] / s["n"]).numpy())))
    return pd.DataFrame(modules), pd.concat(channels, ignore_index=True)


def outlier_features(channel_stats: pd.DataFrame, hidden_size: int, threshold: float = INT8_THRESHOLD,
                     layer_share: float = INT8_LAYER_SHARE, token_share: float = INT8_TOKEN_SHARE) -> pd.DataFrame:
    """LLM.int8 outlier feature dimensions from `activation_stats(...)[1]` (computed with the same
    `threshold`). Only inputs of width `hidden_size` (the residual stream fed to attention and
    FFN projections) count. A dimension is outlying in a layer when, in any of that layer's
    modules, at least `token_share` of the tokens reach `threshold`; it is an outlier feature
    when that holds in at least `layer_share` of the layers. One row per hidden dimension that
    is outlying in at least one layer: dim, layers (how many), layer_share, max_token_share,
    abs_max, is_outlier_feature; sorted by layers, then abs_max."""
    if not 0 < layer_share <= 1 or not 0 < token_share <= 1:
        raise ValueError(f"layer_share and token_share are fractions in (0, 1], got {layer_share}, {token_share}")
    df = channel_stats[(channel_stats.layer.notna())]
    widths = df.groupby("module").channel.max() + 1
    df = df[df.module.isin(widths[widths == hidden_size].index)]
    if df.empty:
        raise ValueError(f"no module in channel_stats has inputs of width hidden_size={hidden_size}; "
                         "pass model.config.hidden_size")
    n_layers = df.layer.nunique()
    per_layer = df.groupby(["channel", "layer"]).agg(share=("share_over", "max"), abs_max=("abs_max", "max"))
    hit = per_layer[per_layer.share >= token_share].reset_index()
    out = hit.groupby("channel").agg(layers=("layer", "nunique"), max_token_share=("share", "max"),
                                     abs_max=("abs_max", "max")).reset_index().rename(columns={"channel": "dim"})
    out["layer_share"] = out.layers / n_layers
    out["is_outlier_feature"] = out.layer_share >= layer_share
    out = out[["dim", "layers", "layer_share", "max_token_share", "abs_max", "is_outlier_feature"]]
    return out.sort_values(["layers", "abs_max"], ascending=False).reset_index(drop=True)


# ----------------------------------------------------------------------------- spectra

def singular_values(w: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Singular values of a matrix [out, in], descending, as float64 [min(out, in)].

    Default (fast): square roots of the eigenvalues of the float64 Gram matrix WᵀW (or WWᵀ),
    several times faster than an SVD on a CPU; singular values below ~1e-7 sigma_max are not
    resolved. (A float32 Gram matrix was faster still, but its small eigenvalues, and with them
    the effective rank, moved by 1e-5 from one CPU to another: a notebook's fourth digit.)
    `exact=True`: a float64 SVD."""
    w = w.detach()
    if exact:
        return torch.linalg.svdvals(w.double())
    w = w.double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T                              # [k, k], k = min(out, in)
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(0).double()


def stable_rank(w_or_s: torch.Tensor, is_spectrum: bool = False) -> float:
    """||W||_F^2 / ||W||_2^2 = sum s_i^2 / s_1^2 (0 for a zero matrix); pass singular values with is_spectrum."""
    s = w_or_s if is_spectrum else singular_values(w_or_s, exact=True)
    return float((s ** 2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def effective_rank(w_or_s: torch.Tensor, is_spectrum: bool = False) -> float:
    """exp(-sum p_i log p_i) with p_i = s_i / sum s_j (Roy & Vetterli 2007); 0 for a zero matrix."""
    s = w_or_s if is_spectrum else singular_values(w_or_s, exact=True)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectra(model: nn.Module, pattern: str | None = None, keep_singular_values: bool = False,
            exact: bool = False, progress: bool = True) -> pd.DataFrame:
    """One row per weight matrix: shape, sigma_max, frobenius, stable_rank, effective_rank,
    stable_rank_ratio (stable rank / min(out, in)), and with keep_singular_values the full
    spectrum in a `singular_values` column (a numpy array). `exact`: float64 SVDs (slower),
    see `singular_values`."""
    rows = []
    for name, w in tqdm(weight_matrices(model, pattern).items(), desc="spectra", disable=not progress):
        s = singular_values(w, exact)
        row = dict(**_ids(name), shape=tuple(w.shape), sigma_max=float(s[0]), frobenius=float(s.norm()),
                   stable_rank=stable_rank(s, True), effective_rank=effective_rank(s, True),
                   stable_rank_ratio=stable_rank(s, True) / min(w.shape))
        if keep_singular_values:
            row["singular_values"] = s.float().numpy()
        rows.append(row)
    return pd.DataFrame(rows)


def spectra_under_quantization(model: nn.Module, specs: dict[str, Spec], calibration: torch.Tensor | None = None,
                               pattern: str | None = None, exact: bool = False, progress: bool = True) -> pd.DataFrame:
    """Stable and effective rank of every quantized matrix before and after each spec of `specs`
    (label -> spec for `quantize_model`). Long format, one row per (module, label): stable_rank,
    stable_rank_q, stable_rank_change (relative), effective_rank, effective_rank_q,
    sigma_max_change (relative) and the module's rel_weight_error from the quantizer report."""
    base = spectra(model, pattern, exact=exact, progress=False).set_index("module")
    frames = []
    for label, spec in specs.items():
        qmodel, report = quantize_model(model, spec, calibration, progress=progress)
        names = [n for n in report.module if n in base.index]
        mats = {n: qmodel.get_submodule(n).weight.detach() for n in names}
        rows = []
        for name, w in tqdm(mats.items(), desc=f"spectra {label}", disable=not progress):
            s = singular_values(w, exact)
            b = base.loc[name]
            sr = stable_rank(s, True)
            rows.append(dict(**_ids(name), label=label, stable_rank=b.stable_rank, stable_rank_q=sr,
                             stable_rank_change=sr / b.stable_rank - 1, effective_rank=b.effective_rank,
                             effective_rank_q=effective_rank(s, True),
                             sigma_max_change=float(s[0]) / b.sigma_max - 1))
        frame = pd.DataFrame(rows).merge(report[["module", "bits", "rel_weight_error"]], on="module")
        frames.append(frame)
        del qmodel
    return pd.concat(frames, ignore_index=True)


def group_bias_share(w: torch.Tensor, w_hat: torch.Tensor, group_size: int) -> float:
    """Share of the squared error ||Ŵ - W||² that is each group's mean error: sum over groups of
    g·mean(e_group)² / sum e², for groups of `group_size` consecutive inputs of a row (a row's last,
    shorter group counts with its own length). Errors that are independent across a group give
    about 1/group_size; a grid that sits off-centre in many groups gives more, and that part adds up
    coherently in x·(Ŵ - W)ᵀ for inputs with a non-zero mean."""
    e = (w_hat.float() - w.float())
    total = e.pow(2).sum()
    if total == 0:
        return 0.0
    biased = sum(part.sum(dim=1).pow(2).div(part.shape[1]).sum() for part in e.split(group_size, dim=1))
    return float(biased / total)


def quantization_error(model: nn.Module, specs: dict[str, QuantConfig], calibration: torch.Tensor,
                       pattern: str | None = r"^(?!.*lm_head)", progress: bool = True) -> pd.DataFrame:
    """Per matrix and per round-to-nearest config of `specs` (label -> QuantConfig), how far the
    fake-quantized weight is from the original, without quantizing the model: long format, one row
    per (module, label) with rel_weight_error ||W - Ŵ||/||W||, rel_output_error ||X(W - Ŵ)ᵀ||/||XWᵀ||
    on the calibration token ids [n, seqlen] (their inputs X collected once, as GPTQ's Hessians) and
    group_bias_share (see `group_bias_share`). Linear modules whose name matches `pattern` (default:
    all but the LM head); a config with a method other than RTN is an error (GPTQ needs the model)."""
    from workbench.quant.gptq import collect_hessians

    for label, config in specs.items():
        if not isinstance(config, QuantConfig) or config.method != "rtn":
            raise ValueError(f"spec {label!r}: quantization_error takes round-to-nearest QuantConfigs "
                             f"(method 'rtn'); got {config!r}. Use quantize_model's report for other methods")
    _check_calibration(calibration)
    names = select_modules(model, pattern or ".")
    hessians = collect_hessians(model, names, calibration)
    rows = []
    for name in tqdm(names, desc="quantization error", disable=not progress):
        w = model.get_submodule(name).weight.detach().float()            # [out, in]
        w_hats = [fake_quantize(w, config) for config in specs.values()]
        errors = relative_output_errors(w, w_hats, hessians[name])
        for (label, config), w_hat, error in zip(specs.items(), w_hats, errors):
            rows.append(dict(**_ids(name), label=label, bits=config.bits,
                             rel_weight_error=float((w - w_hat).norm() / w.norm()), rel_output_error=error,
                             group_bias_share=group_bias_share(w, w_hat, config.group_len(w.shape[1]))))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- relations

def relate(stats: pd.DataFrame, report: pd.DataFrame, columns=("rel_weight_error", "rel_output_error")) -> pd.DataFrame:
    """Join per-module statistics (weight_stats, spectra, activation_stats) with the per-module
    error columns of a `quantize_model` report (inner join on module; the report's error columns
    are renamed with a `q_` prefix where the statistics already have a column of that name)."""
    keep = ["module"] + [c for c in columns if c in report.columns and report[c].notna().any()]
    if len(keep) == 1:
        raise ValueError(f"the report has none of the error columns {list(columns)}; pass a quantize_model report")
    rep = report[keep].rename(columns={c: f"q_{c}" for c in keep[1:] if c in stats.columns})
    out = stats.merge(rep, on="module", how="inner")
    if out.empty:
        raise ValueError("no module is in both the statistics and the report; were they computed on the same model?")
    return out


def correlations(df: pd.DataFrame, xs, y: str) -> pd.DataFrame:
    """Spearman (rank) and Pearson correlation of each column in `xs` with `y`, one row per x,
    with the number of modules n. Rank correlation is the one to read: the statistics are heavy-tailed."""
    rows = []
    for x in xs:
        part = df[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
        rows.append(dict(x=x, y=y, n=len(part), spearman=part[x].corr(part[y], method="spearman"),
                         pearson=part[x].corr(part[y])))
    return pd.DataFrame(rows)


def probe_time(model: nn.Module, calibration: torch.Tensor) -> pd.DataFrame:
    """Wall time of each whole-model probe (weight_stats, spectra, activation_stats): the benchmark's core."""
    rows = []
    for label, fn in [("weight_stats", lambda: weight_stats(model, progress=False)),
                      ("weight_channel_max", lambda: weight_channel_max(model)),
                      ("spectra", lambda: spectra(model, progress=False)),
                      ("activation_stats", lambda: activation_stats(model, calibration, progress=False))]:
        t = time.perf_counter()
        fn()
        rows.append(dict(probe=label, seconds=time.perf_counter() - t))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- committed probe sweeps

PROBE_DEFAULTS = {         # every argument of `probe_point`, spelled out for its sweep key
    "probe": None,         # the name of one of PROBES: which per-matrix table is computed
    "specs": None,         # label -> workbench.quant.spec_to_json of each quantization the probe compares
    "calibration": None,   # calibration_batch arguments with the corpus, e.g. {"corpus": "lee", "n_samples": 8}
    "options": {},         # the probe function's own keyword arguments (plain JSON values)
    "weights": None,       # the model record's key: new weights make new points
}


def _exactly(modules: list[str] | None) -> str | None:
    """A regex that matches exactly these module names (None: no restriction)."""
    return None if modules is None else "^(?:" + "|".join(re.escape(m) for m in modules) + ")$"


def _probe_quantization_error(model, specs, calibration, modules, pattern=r"^(?!.*lm_head)"):
    return quantization_error(model, specs, calibration, pattern=_exactly(modules) or pattern, progress=False)


def _probe_quantize_report(model, specs, calibration, modules):
    """quantize_model's report per spec (one row per (module, label)), without its wall times."""
    from workbench.quant import DEFAULT_SKIP

    if not specs:
        raise ValueError("the quantize_report probe needs specs: pass {label: QuantConfig(...)}")
    skip = DEFAULT_SKIP if modules is None else "^(?!" + _exactly(modules)[1:] + ")"    # all but these
    frames = []
    for label, spec in specs.items():
        _, report = quantize_model(model, spec, calibration, skip=skip, progress=False)
        frames.append(report.drop(columns=["time_s"]).assign(label=label))
    return pd.concat(frames, ignore_index=True)


def _probe_spectra_under_quantization(model, specs, calibration, modules, pattern=None):
    return spectra_under_quantization(model, specs, calibration, pattern=_exactly(modules) or pattern, progress=False)


def _probe_weight_stats(model, specs, calibration, modules, pattern=None, outlier_fraction=0.01):
    if len(specs) != 1 or not isinstance(next(iter(specs.values())), QuantConfig):
        raise ValueError(f"the weight_stats probe takes one QuantConfig (the grid of its error columns); got {specs!r}")
    return weight_stats(model, _exactly(modules) or pattern, config=next(iter(specs.values())),
                        outlier_fraction=outlier_fraction, progress=False)


def _probe_activation_stats(model, specs, calibration, modules, pattern=r"^(?!.*lm_head)", threshold=INT8_THRESHOLD):
    if calibration is None:
        raise ValueError("the activation_stats probe needs calibration: pass calibration={'corpus': 'lee', "
                         "'n_samples': 8, 'seqlen': 256, 'seed': 0}")
    return activation_stats(model, calibration, _exactly(modules) or pattern, threshold, progress=False)[0]


PROBES = {   # name -> fn(model, specs {label: spec}, calibration ids or None, modules or None, **options)
    "activation_stats": _probe_activation_stats,
    "quantization_error": _probe_quantization_error,
    "quantize_report": _probe_quantize_report,
    "spectra_under_quantization": _probe_spectra_under_quantization,
    "weight_stats": _probe_weight_stats,
}


def _run_probe(p: dict, model: nn.Module, tokenizer, modules: list[str] | None) -> pd.DataFrame:
    from workbench.data import calibration_batch
    from workbench.quant import spec_from_json

    if p["probe"] not in PROBES:
        raise ValueError(f"unknown probe {p['probe']!r}; choose one of {', '.join(PROBES)}")
    specs = {label: spec_from_json(s) for label, s in (p["specs"] or {}).items()}
    calibration = calibration_batch(tokenizer, **p["calibration"]) if p["calibration"] else None
    return PROBES[p["probe"]](model, specs, calibration, modules, **p["options"])


def probe_point(point: dict) -> dict:
    """A `workbench.experiments` measure: one probe of PROBES (`point["probe"]`) on
    `point["model"]`, with its specs, calibration and options, one item per row of its table (a
    matrix, or a (matrix, label) pair), so that a test can re-run any matrix alone
    (`rerun_probe_rows`). Run it with `defaults=PROBE_DEFAULTS`; the model is loaded once per process."""
    from workbench.experiments import frame_rows, loaded
    from workbench.models import load_model

    p = {**PROBE_DEFAULTS, **point}
    model, tokenizer, _ = loaded(("model", "probe", p["model"]), lambda: load_model(p["model"]))
    rows = frame_rows(_run_probe(p, model, tokenizer, None))
    return {"summary": {"rows": len(rows), "matrices": len({r["module"] for r in rows})}, "items": rows}


def rerun_probe_rows(point: dict, modules: list[str]) -> list[dict]:
    """Re-compute the rows of some matrices of a `probe_point` record from scratch: the model
    loaded again (its weights must still be the point's), the probe run on those matrices alone.
    Returns rows in the record's format."""
    import json

    from workbench.experiments import frame_rows
    from workbench.models import load_model

    if isinstance(modules, str):
        raise TypeError(f"modules must be a list of module names, got the string {modules!r}; pass [{modules!r}]")
    p = {**PROBE_DEFAULTS, **point}
    model, tokenizer, record = load_model(p["model"])
    if p["weights"] is not None and json.loads(json.dumps(record.key, default=str)) != p["weights"]:
        raise ValueError(f"{p['model']}: these weights are not the ones the record was computed on")
    rows = frame_rows(_run_probe(p, model, tokenizer, list(modules)))
    missing = sorted(set(modules) - {r["module"] for r in rows})
    if missing:
        raise ValueError(f"no rows for {missing}: not linear modules of {p['model']} that this probe measures "
                         "(module names as the record's rows spell them)")
    return rows


def probe_sweep(models, probe: str, specs: dict | None = None, calibration: dict | None = None,
                options: dict | None = None, name: str = "probes", snapshot: bool = False,
                progress: bool = True) -> pd.DataFrame:
    """One probe of PROBES on each of `models` (LoadedModels from `load_model`), through the sweep
    engine (workbench.experiments, measure `probe_point`): one point per model, stored as it
    finishes and read back on the next call; with `snapshot=True` from and to the committed
    snapshot data/snapshots/<name>.json.gz. `specs` maps labels to quantization specs,
    `calibration` is calibration_batch's arguments with the corpus ({"corpus": "lee",
    "n_samples": 8, "seqlen": 256, "seed": 0}), `options` the probe function's keyword arguments.
    Probes: "quantization_error" (`quantization_error`), "quantize_report" (`quantize_model`'s
    report per spec, with a label column, without times), "spectra_under_quantization" and
    "weight_stats" (one spec: its grid), "activation_stats" (its per-module table). Returns the probe's table for every model, with a
    `model` column (the record's name) first."""
    import json

    from workbench.experiments import provide, run_sweep
    from workbench.quant import spec_to_json

    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if hasattr(models, "record"):
        raise TypeError("models is a list of load_model results; got one: pass [loaded]")
    import inspect

    params = list(inspect.signature(PROBES[probe]).parameters.values())
    accepted = {q.name for q in params[4:] if q.kind is not q.VAR_KEYWORD}
    unknown = sorted(set(options or {}) - accepted)
    if unknown and not any(q.kind is q.VAR_KEYWORD for q in params):
        raise ValueError(f"the {probe} probe takes no option {unknown}; its options: {sorted(accepted) or 'none'}")
    points = []
    for loaded_model in models:
        model, tokenizer, record = loaded_model
        provide(("model", "probe", record.name), (model, tokenizer, record))
        points.append({"model": record.name, "probe": probe,
                       "specs": {label: spec_to_json(s) for label, s in (specs or {}).items()} or None,
                       "calibration": calibration, "options": options or {},
                       "weights": json.loads(json.dumps(record.key, default=str))})
    records = run_sweep(points, probe_point, name, defaults=PROBE_DEFAULTS, snapshot=name if snapshot else None,
                        progress=progress)
    frame = pd.DataFrame([{"model": r["point"]["model"], **row} for r in records for row in r["items"]])
    if "shape" in frame:
        frame["shape"] = frame["shape"].map(tuple)
    return frame
