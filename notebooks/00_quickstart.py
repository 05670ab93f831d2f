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
# # Quickstart: what does 8/4/3/2-bit quantization do to a language model?
#
# **quant-workbench** answers questions like *"what does 2-, 3- or 4-bit quantization do to this model, where, and can fine-tuning win it back?"* with analyses you can rerun in minutes on a CPU. This notebook is the five-minute tour:
#
# 1. load the default model (SmolLM2-135M-Instruct) offline, with a record of where it came from;
# 2. measure its perplexity on held-out news text;
# 3. quantize every linear layer with round-to-nearest (RTN) at 8, 4, 3 and 2 bits and measure again;
# 4. look at where the weight error lands.
#
# Everything expensive is cached on disk (`$WORKBENCH_HOME/results`), keyed by the model, the quantization settings, the data and the library version, so a second run of this notebook takes seconds.

# %% [markdown]
# ## Parameters
# Change these and rerun. `MODEL` accepts a registry name (`smollm2-135m`, `gemma3-270m`), a local Hugging Face folder, or a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` if you can reach the hub. `MAX_WINDOWS=None` evaluates the whole evaluation split (the number a paper would report); the default keeps the notebook quick.

# %%
MODEL = "smollm2-135m"
CORPUS = "lee"          # news articles; also "wiki", "botchan", "text8"
SEQLEN = 512            # tokens per perplexity window
MAX_WINDOWS = 8         # first 8 windows = 4,096 tokens; None for the whole split
BITS = [8, 4, 3, 2]
GROUP_SIZE = 128

# %%
import matplotlib.pyplot as plt
import pandas as pd

from workbench.data import evaluation_text, load_split
from workbench.evaluate import perplexity_sweep
from workbench.models import load_model
from workbench.quant import QuantConfig, quantize_model
from workbench.report import save_figure, save_table

pd.set_option("display.float_format", "{:.4g}".format)

# %% [markdown]
# ## 1. Load the model
# `load_model` returns the model, its tokenizer and a record of provenance and precision.

# %%
model, tokenizer, record = load_model(MODEL)
print(f"{record.name}: {record.architecture}, {record.n_params / 1e6:.1f}M parameters, {record.dtype}")
print(f"source: {record.source}, original format: {record.source_format}")
print("caveat:", record.caveat)

# %% [markdown]
# **Read the caveat.** No full-precision decoder-only model can be had offline here, so the bundled SmolLM2 is a GGUF checkpoint whose linear layers were stored at 4 bits (Q4_1, blocks of 32) and dequantized to fp32. Its "full precision" baseline already sits on a 4-bit grid; re-quantizing at 8 bits is therefore almost free, and the 4-bit numbers below measure a *second* quantization onto a different grid (groups of 128 instead of 32). Point `MODEL` at the hub id to see true full-precision behaviour.

# %% [markdown]
# ## 2. The evaluation text
# Each corpus has a fixed calibration/evaluation split (every fifth document is held out). Perplexity is the GPTQ convention: the held-out documents joined into one string, cut into non-overlapping windows of `SEQLEN` tokens.

# %%
docs = load_split(CORPUS, "evaluation")
text = evaluation_text(CORPUS)
n_tokens = len(tokenizer(text).input_ids)
print(f"{CORPUS}: {len(docs)} evaluation documents, {len(text.split()):,} words, {n_tokens:,} tokens")
print(docs[0][:300], "...")

# %% [markdown]
# ## 3. Perplexity at 8, 4, 3 and 2 bits
# Round-to-nearest, asymmetric, one scale and integer zero point per group of 128 inputs, every linear layer except the LM head (tied to the token embedding in SmolLM2).

# %%
specs = {"fp32 (dequantized Q4_1)": None}
specs.update({f"RTN W{b} g{GROUP_SIZE}": QuantConfig(bits=b, group_size=GROUP_SIZE) for b in BITS})
results = perplexity_sweep(model, tokenizer, record, specs, corpus=CORPUS, seqlen=SEQLEN,
                           max_windows=MAX_WINDOWS, progress=False)
results = results[["label", "bits", "perplexity", "rel_weight_error", "quantized_modules", "tokens"]]
results["ppl_ratio"] = results.perplexity / results.perplexity.iloc[0]
save_table(results, "quickstart_perplexity")
results

# %%
quant = results.dropna(subset=["bits"])
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.plot(quant.bits, quant.perplexity, "o-", label=f"RTN, group {GROUP_SIZE}")
ax.axhline(results.perplexity.iloc[0], color="gray", ls="--", label="unquantized (dequantized Q4_1)")
ax.set(xlabel="bits per weight", ylabel=f"perplexity ({CORPUS}, {SEQLEN}-token windows)", yscale="log",
       xticks=BITS, title=f"{record.name}: perplexity vs bits")
ax.invert_xaxis()
ax.legend(fontsize=8)
save_figure(fig, "quickstart_perplexity")
plt.show()

# %% [markdown]
# Perplexity barely moves at 8 bits, degrades visibly at 4, badly at 3, and the model is destroyed at 2 bits. The rest of the workbench asks *why* (outliers and spectra, notebooks 02 and 03), whether better quantizers help (GPTQ, binary coding, outlier-aware and mixed precision, notebook 01), what happens to abilities such as in-context learning (notebook 04), and how much fine-tuning wins back (notebook 06).

# %% [markdown]
# ## 4. Where does the error land?
# The quantizer's report has one row per module. The relative weight error ‖W − Ŵ‖ / ‖W‖ at 3 bits, averaged per component and per block of ten layers:

# %%
_, report = quantize_model(model, QuantConfig(bits=3, group_size=GROUP_SIZE))
print("rows split into groups:", sorted(report.groups.unique()))
report["layers"] = pd.cut(report.layer, [-1, 9, 19, 29], labels=["0-9", "10-19", "20-29"])
table = report.pivot_table(index="component", columns="layers", values="rel_weight_error", observed=True)
save_table(table.reset_index(), "quickstart_weight_error_w3")
table.loc[["q", "k", "v", "o", "gate", "up", "down"]]

# %% [markdown]
# The 576-wide rows of the attention projections do not divide into groups of 128; as in the GPTQ reference they end in one shorter group (4 × 128 + 64), which the report shows. The relative weight error is similar across components, so the large differences in *sensitivity* that later notebooks find come from how each component's error propagates, not from how well its weights fit the grid.
#
# **Next:** `01_quantizers.ipynb` compares quantizers, `02_outliers.ipynb` and `03_stable_rank.ipynb` probe why some layers suffer more.
