# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Outliers: where they are, and what they cost under quantization
#
# A uniform quantizer spends its levels evenly over each group's range, so a single large weight (or a large input activation that multiplies a weight) decides how coarse the grid is for everything around it. This notebook finds the outliers of two models, in the weights and in the activations, and measures how much of the quantization error they cause:
#
# * **weights** — kurtosis, max/σ and the share beyond 3σ and 6σ of every matrix, the per-input-channel maxima, and `outlier_error_share`: the share of a matrix's squared RTN error that disappears when its top 1% of weights are kept in full precision (PreQuant, SpQR);
# * **activations** — per-channel maxima of each linear layer's input over calibration text, and the **outlier feature dimensions** of LLM.int8 (Dettmers et al., 2022): hidden dimensions reaching magnitude 6 in at least 6% of the tokens, in at least 25% of the layers;
# * **what keeping them buys** — RTN at 3 bits with and without the top 1% of weights, or the 1% of input channels with the largest activations, kept in full precision.
#
# Two models, on purpose: the bundled causal LM **SmolLM2-135M** comes from a 4-bit GGUF checkpoint dequantized to fp32, so its weights already sit on a grid (the linear layers were Q4_1: blocks of 32 weights with at most 16 distinct values; the embedding was Q8_0); the encoder **all-MiniLM-L6-v2** is a real fp32 checkpoint. The grid shapes the weight statistics of the first (tails cut at the block maxima, few levels per block); the second shows what continuous weights look like.

# %% [markdown]
# ## Parameters
# Sized for 2 CPU cores; the committed outputs are exactly what these values produce. The perplexities of section 4 cover the whole held-out split and are a committed snapshot (`data/snapshots/outliers_retention.json.gz`), read back when every argument matches; `make test` re-scores a sample of its windows. The per-matrix tables of sections 1 and 4 (weight statistics, output errors of each kind of retention) are snapshots too (`outliers_weight_stats`, `outliers_retention_errors`); `make test` re-computes a random sample of their matrices.

# %%
MODELS = {"causal": "smollm2-135m", "encoder": "minilm-l6"}
CORPUS = "lee"
CALIBRATION = {"n_samples": 8, "seqlen": 256, "seed": 0}     # activation statistics: 2,048 tokens
BITS = 3                                                      # for error shares and outlier retention
GROUP_SIZE = 64                                               # divides every row of both models
OUTLIER_FRACTION = 0.01
MAX_WINDOWS = None                                            # perplexity: the whole held-out split (28 x 512 tokens)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from workbench import probes, stats
from workbench.data import calibration_batch
from workbench.evaluate import perplexity_sweep
from workbench.models import load_model
from workbench.plots import activation_depth, layer_component_heatmap, scatter_trend, tail_histogram
from workbench.quant import QuantConfig
from workbench.report import project_dir, save_table
from workbench.widgets import outlier_explorer

pd.set_option("display.float_format", "{:.4g}".format)
pd.set_option("display.width", 140)
FIG = project_dir() / "figures"
config = QuantConfig(bits=BITS, group_size=GROUP_SIZE)
models, calibration = {}, {}
for kind, name in MODELS.items():
    models[kind] = load_model(name)
    calibration[kind] = calibration_batch(models[kind].tokenizer, CORPUS, **CALIBRATION)
    rec = models[kind].record
    print(f"{kind:8s} {rec.name:14s} {rec.architecture:22s} {rec.n_params / 1e6:6.1f}M  {rec.caveat or 'fp32 checkpoint'}")

# %% [markdown]
# ## 1. Weight statistics
# One row per weight matrix (the tied LM head of SmolLM2 is its embedding, counted once). `levels_per_block` is the median number of distinct values in 32 consecutive weights of a row: the fingerprint of a dequantized checkpoint.

# %%
weights = probes.probe_sweep(models.values(), "weight_stats", {f"W{BITS}": config},
                             options={"outlier_fraction": OUTLIER_FRACTION}, name="outliers_weight_stats",
                             snapshot=True, progress=False)
weights = {kind: weights[weights.model == m.record.name].drop(columns="model").reset_index(drop=True)
           for kind, m in models.items()}
summary = pd.concat({kind: ws.groupby("component", sort=False)[["kurtosis", "max_over_std", "beyond_3sigma",
                                                                 "beyond_6sigma", "levels_per_block",
                                                                 "rel_rtn_error", "outlier_error_share"]].median()
                     for kind, ws in weights.items()}, names=["model"])
save_table(pd.concat(weights, names=["model"]).reset_index(level=0), "outliers_weight_stats")
summary

# %% [markdown]
# Medians per component. Two things to read:
#
# * **The grid.** SmolLM2's linear layers have a median of 13 distinct values per block of 32 (at most 16: a 4-bit checkpoint), its 8-bit embedding 29; every MiniLM matrix has 32 — every weight distinct. Any statistic of SmolLM2 describes the GGUF checkpoint as much as the model.
# * **Tails.** A Gaussian has kurtosis 3 and 0.27% of its mass beyond 3σ. SmolLM2's matrices sit moderately above that (median kurtosis 3.5–4.8 per linear component, 8.3 for the embedding, a few matrices above 10); MiniLM's attention matrices are not far from Gaussian (3.3–4.4), while its FFN output projections (`down`) and embeddings are extremely heavy-tailed (median kurtosis above 100). `outlier_error_share` says what the tails cost: the share of the 3-bit squared error that goes away when the top 1% of weights are kept aside.

# %%
ws = weights["causal"]
layer_component_heatmap(ws, "kurtosis", log=True, title=f"{models['causal'].record.name}: weight kurtosis",
                        path=FIG / "outliers_kurtosis_heatmap.png")
plt.show()
top = ws.sort_values("kurtosis", ascending=False).head(5)[["module", "kurtosis", "max_over_std", "beyond_6sigma",
                                                            "outlier_error_share"]]
top

# %%
name = top.module.iloc[0]
tail_histogram(models["causal"].model.get_submodule(name).weight, k=6, title=f"{name}: the most heavy-tailed matrix",
               xlabel="weight", path=FIG / "outliers_tail_histogram.png")
plt.show()

# %% [markdown]
# ### Outlier input channels of the weights
# An outlier *input channel* (a column of W with large entries) is what LLM.int8 and PreQuant's channel variant target: `ratio` is a channel's max |W| over the median channel's.

# %%
channels = {kind: probes.weight_channel_max(m.model) for kind, m in models.items()}
top_channels = pd.concat({kind: ch.sort_values("ratio", ascending=False).groupby("component").head(1)
                          .sort_values("ratio", ascending=False).head(6)[["module", "channel", "abs_max", "ratio"]]
                          for kind, ch in channels.items()}, names=["model"]).reset_index(level=0)
top_channels

# %% [markdown]
# ## 2. Activation outliers
# Forward hooks on every linear layer's input over 8 × 256 calibration tokens (the hooks are removed afterwards, also on error). `channel_max_ratio` is the largest channel maximum over the median one.

# %%
acts = {kind: probes.activation_stats(m.model, calibration[kind], progress=False) for kind, m in models.items()}
per_module = pd.concat({kind: a[0] for kind, a in acts.items()}, names=["model"]).reset_index(level=0)
save_table(per_module, "outliers_activation_stats")
depth = per_module.dropna(subset=["layer"]).groupby(["model", "component"], sort=False).agg(
    abs_max=("abs_max", "max"), median_channel_max_ratio=("channel_max_ratio", "median"),
    outlier_channels=("outlier_channels", "sum"))
depth

# %%
fig = activation_depth({models[kind].record.name: pm for kind, (pm, _) in acts.items()},
                       path=FIG / "outliers_activation_depth.png")
plt.show()

# %% [markdown]
# The largest input activation of each linear layer across depth, per component (dotted: LLM.int8's threshold 6). The inputs of `q`/`k`/`v` and `gate`/`up` are the normalized residual stream (one curve each pair, since they share the input); `o` sees the attention output and `down` the FFN's hidden activations. In SmolLM2 the FFN hidden activations are by far the largest, hundreds of times the threshold in some layers (up to 3,347 against 6); in MiniLM the largest inputs are those of the FFN (`up`, `down`) at a few tens.
#
# ### LLM.int8 outlier features
# A hidden dimension counts when it reaches 6.0 on at least 6% of the tokens in the residual-stream inputs of at least 25% of the layers (the paper's defaults, all three are parameters):

# %%
features = {}
for kind, m in models.items():
    f = probes.outlier_features(acts[kind][1], hidden_size=m.model.config.hidden_size)
    features[kind] = f
    print(f"{m.record.name}: {int(f.is_outlier_feature.sum())} outlier feature dimensions "
          f"(of {m.model.config.hidden_size}); {len(f)} dimensions pass the threshold in at least one layer")
feature_table = pd.concat({k: f.head(8) for k, f in features.items()}, names=["model"]).reset_index(level=0)
save_table(pd.concat(features, names=["model"]).reset_index(level=0), "outliers_int8_features")
feature_table

# %% [markdown]
# ## 3. How much of the error the outliers carry
# Per matrix, the share of the 3-bit RTN squared error that disappears when the top 1% of weights by magnitude are kept in full precision. Where it is large, a handful of weights stretch the grid for everyone else.

# %%
gaussian = probes.outlier_error_share(torch.randn(576, 1536, generator=torch.Generator().manual_seed(0)), config,
                                     OUTLIER_FRACTION)
print(f"reference: a Gaussian 576 x 1536 matrix gives {gaussian:.3f} (dropping any distribution's top 1% narrows its groups)")
layer_component_heatmap(ws, "outlier_error_share", fmt=".2f",
                        title=f"{models['causal'].record.name}: share of W{BITS} error removed by keeping 1% outliers",
                        path=FIG / "outliers_error_share_heatmap.png")
plt.show()
scatter_trend(pd.concat(weights, names=["model"]).reset_index(level=0), "kurtosis", "outlier_error_share",
              hue="model", logx=True, title="heavier tails, larger share", path=FIG / "outliers_share_vs_kurtosis.png")
plt.show()

# %% [markdown]
# ## 4. What keeping them buys
# RTN at 3 bits (group 64) with nothing kept, with the top 1% of weights kept (by magnitude), and with the 1% of input channels with the largest calibration activation norm kept (LLM.int8-style). For both models, the mean relative output error of the linear layers on the calibration inputs; for the causal model also perplexity over the whole held-out split of the news corpus (lee), with its 95% interval over windows.

# %%
variants = {
    "RTN": QuantConfig(bits=BITS, group_size=GROUP_SIZE),
    "RTN + 1% weights kept": QuantConfig(bits=BITS, group_size=GROUP_SIZE, outlier_fraction=OUTLIER_FRACTION),
    "RTN + 1% channels kept": QuantConfig(bits=BITS, group_size=GROUP_SIZE, outlier_fraction=OUTLIER_FRACTION,
                                          outlier_mode="channel"),
}
reports = probes.probe_sweep(models.values(), "quantize_report", variants, {"corpus": CORPUS, **CALIBRATION},
                             name="outliers_retention_errors", snapshot=True, progress=False)
retention = (reports.groupby(["model", "label"], sort=False)[["rel_weight_error", "rel_output_error"]].mean()
             .reset_index().rename(columns={"label": "variant"}))
per_module = reports[["module", "rel_output_error", "model", "label"]].rename(columns={"label": "variant"})
causal = models["causal"]
ppl, ppl_windows = perplexity_sweep(causal.model, causal.tokenizer, causal.record, {"unquantized": None, **variants},
                                   corpus=CORPUS, max_windows=MAX_WINDOWS,
                                   calibration={"corpus": CORPUS, **CALIBRATION}, name="outliers_retention",
                                   snapshot=True, return_windows=True, progress=False)
retention = retention.merge(ppl[["label", "perplexity", "low", "high", "windows"]].assign(model=causal.record.name),
                            left_on=["model", "variant"], right_on=["model", "label"], how="left").drop(columns="label")
save_table(retention, "outliers_retention")
print(f"{causal.record.name} unquantized perplexity: {ppl.perplexity.iloc[0]:.2f}")
retention

# %% [markdown]
# Both kinds of retention lower the output error of both models, but not equally. On SmolLM2, keeping the 1% of input channels with the largest activations beats keeping the 1% largest weights, in output error and in perplexity: its activation outliers amplify the error of whatever weights they multiply. On MiniLM, whose heavy tails are in the weights themselves (`down`, above), keeping the largest weights does better. Storage is not equal either: 1% of weights kept as fp16 values with 32-bit positions adds about 0.48 bit per weight (16% on top of 3 bits); 1% of channels kept in fp16 adds 0.16 bit per weight and needs no positions.

# %% [markdown]
# **Paired:** for SmolLM2, each variant against another on the same windows (added loss per token of the first, its 95% interval and the paired-bootstrap p); for both models, the output error of keeping channels minus that of keeping weights, matrix by matrix (negative: channels are better), with its interval over matrices.

# %%
window_tests = pd.DataFrame([stats.paired_windows(ppl_windows, a, b, CORPUS) for a, b in
                             (("RTN", "RTN + 1% weights kept"), ("RTN", "RTN + 1% channels kept"),
                              ("RTN + 1% weights kept", "RTN + 1% channels kept"))])
errors = per_module.pivot_table(index=["model", "module"], columns="variant", values="rel_output_error")
matrix_tests = pd.DataFrame([{"model": name, **stats.paired_bootstrap(part["RTN + 1% channels kept"],
                                                                      part["RTN + 1% weights kept"])}
                             for name, part in errors.groupby(level="model", sort=False)])
save_table(window_tests, "outliers_retention_paired")
save_table(matrix_tests, "outliers_retention_matrices")
display(window_tests[["column", "a", "b", "n", "a_score", "b_score", "difference", "low", "high", "p_value"]])
matrix_tests

# %% [markdown]
# ## 5. Explore
# Pick a layer, a component, a bit width and a method: the histogram, the weight's outlier input channels with the share of the error they carry, and the activation maxima of that layer's input update live in JupyterLab.

# %% tags=["nbval-ignore-output"]
outlier_explorer(models["causal"].model, acts["causal"][1], group_size=GROUP_SIZE)

# %% [markdown]
# ## Findings
# Each claim decided by a paired test: over the windows of the whole held-out split for SmolLM2's perplexity, over weight matrices for the output error; *agrees* when the test says so at p < 0.05, *contradicts* when it says the opposite, *cannot test here* when it cannot tell.

# %%
def window_cell(t):
    return (f"{t['a']} {t['a_score']:.4g} vs {t['b']} {t['b_score']:.4g}: {t['difference']:+.3g} nats/token "
            f"[{t['low']:+.3g}, {t['high']:+.3g}], p={t['p_value']:.2g}, n={t['n']} windows")


def matrix_cell(t):
    return (f"output error, channels − weights kept: {t['difference']:+.3g} [{t['low']:+.3g}, {t['high']:+.3g}], "
            f"p={t['p_value']:.2g}, n={t['n']} matrices")


wt = window_tests.to_dict("records")
rows = [{"claim": "keeping the 1% largest weights in full precision wins back part of the low-bit loss (SpQR; PreQuant)",
         "model": models["causal"].record.name, "this workbench": window_cell(wt[0]), "verdict": stats.loses_verdict(wt[0])},
        {"claim": "the input channels of outlier activations matter more than outlier weights (LLM.int8, AWQ)",
         "model": models["causal"].record.name, "this workbench": window_cell(wt[2]), "verdict": stats.loses_verdict(wt[2])}]
for t in matrix_tests.to_dict("records"):
    verdict = stats.loses_verdict({**t, "difference": -t["difference"]})   # channels lower error: agrees
    rows.append({"claim": "the input channels of outlier activations matter more than outlier weights (LLM.int8, AWQ)",
                 "model": t["model"], "this workbench": matrix_cell(t), "verdict": verdict})
findings = pd.DataFrame(rows)
save_table(findings, "outliers_findings")
findings.style.hide(axis="index")

# %% [markdown]
# ## What to take away
# * The dequantized causal checkpoint and the fp32 encoder look different before any quantization: grid-bound blocks with at most 16 levels, against continuous weights. Statistics of the first describe the GGUF checkpoint as much as the model; load a hub model for full-precision SmolLM2.
# * 1% of the weights carry about a fifth of the 3-bit error almost everywhere (a Gaussian matrix gives a similar floor) and far more in the heavy-tailed matrices the heatmap points to; the share follows kurtosis closely (the scatter's rank correlation).
# * What to keep in full precision depends on the model: activation-outlier channels for SmolLM2, the largest weights for MiniLM — the premise of PreQuant's outlier-aware fine-tuning (notebook 06).
# * The statistics come from 2,048 calibration tokens (`CALIBRATION`); the perplexities from the whole held-out split, with intervals. Differences inside those intervals are not findings.
