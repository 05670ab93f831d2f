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
# 2. measure its perplexity on the whole held-out split of a news and a prose corpus, with 95% intervals;
# 3. quantize every linear layer with round-to-nearest (RTN) at 8, 4, 3 and 2 bits, measure again, and test each against the unquantized model on the same windows;
# 4. look at where the weight error lands;
# 5. a findings table: what the literature says RTN does, against what this model shows.
#
# Each quantized model is one point of a sweep (`workbench.experiments`) that keeps every window's loss; the results are committed with the repository (`data/snapshots/quickstart_*.json.gz`) and read from there when every argument matches, and `make test` re-scores a random sample of their windows from scratch. Change a parameter and the points that no longer match are computed (a few seconds each).

# %% [markdown]
# ## Parameters
# Change these and rerun. `MODEL` accepts a registry name (`smollm2-135m`, `gemma3-270m`), a local Hugging Face folder, or a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` if you can reach the hub. `MAX_WINDOWS=None` evaluates the whole evaluation split, the number a paper would report; a number of windows gives a quick look.

# %%
MODEL = "smollm2-135m"
CORPORA = ["lee", "botchan"]   # news articles and a novel; also "wiki", "text8"
SEQLEN = 512            # tokens per perplexity window
MAX_WINDOWS = None      # None: the whole held-out split
BITS = [8, 4, 3, 2]
GROUP_SIZE = 128
MARGINS = {8: 0.01, 4: 0.05}   # "keeps": perplexity within 1% (8 bits) or 5% (4 bits) of the unquantized

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd

from workbench import stats
from workbench.data import evaluation_text, load_split
from workbench.evaluate import perplexity_sweep
from workbench.models import load_model
from workbench.plots import perplexity_vs_bits
from workbench.quant import QuantConfig, quantize_model
from workbench.report import save_figure, save_table

pd.set_option("display.float_format", "{:.4g}".format)
pd.set_option("display.width", 160)

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
# Each corpus has a fixed calibration/evaluation split (every fifth document is held out). Perplexity is the GPTQ convention: the held-out documents joined into one string, cut into non-overlapping windows of `SEQLEN` tokens. Its 95% interval comes from the bootstrap over those windows.

# %%
for corpus in CORPORA:
    docs = load_split(corpus, "evaluation")
    text = evaluation_text(corpus)
    n_tokens = len(tokenizer(text).input_ids)
    print(f"{corpus}: {len(docs)} evaluation documents, {len(text.split()):,} words, {n_tokens:,} tokens "
          f"= {n_tokens // SEQLEN} windows of {SEQLEN}")
print(load_split(CORPORA[0], "evaluation")[0][:300], "...")

# %% [markdown]
# ## 3. Perplexity at 8, 4, 3 and 2 bits
# Round-to-nearest, asymmetric, one scale and integer zero point per group of 128 inputs, every linear layer except the LM head (tied to the token embedding in SmolLM2).

# %%
BASE = "unquantized"
specs = {BASE: None, **{f"RTN W{b}": QuantConfig(bits=b, group_size=GROUP_SIZE) for b in BITS}}
tables, windows = [], []
for corpus in CORPORA:
    table, w = perplexity_sweep(model, tokenizer, record, specs, corpus=corpus, seqlen=SEQLEN, max_windows=MAX_WINDOWS,
                                name=f"quickstart_{corpus}", snapshot=True, return_windows=True, progress=False)
    tables.append(table.assign(corpus=corpus, ratio=table.perplexity / table.perplexity.iloc[0]))
    windows.append(w)
results = pd.concat(tables, ignore_index=True)[["corpus", "label", "bits", "perplexity", "low", "high", "ratio",
                                                "rel_weight_error", "windows", "tokens"]]
windows = pd.concat(windows, ignore_index=True)
save_table(results, "quickstart_perplexity")
results

# %% [markdown]
# `low`–`high` is the 95% interval over windows, `ratio` the perplexity over the unquantized model's. Guessing uniformly over the vocabulary gives a perplexity equal to its size: a model above that line has lost more than all it knew, and how far above means nothing.

# %%
fig, axes = plt.subplots(1, len(CORPORA), figsize=(5.2 * len(CORPORA), 3.6), squeeze=False)
for ax, corpus in zip(axes[0], CORPORA):
    part = results[results.corpus == corpus]
    perplexity_vs_bits(part.dropna(subset=["bits"]).assign(method=f"RTN, group {GROUP_SIZE}"), ax=ax,
                       baseline=float(part.perplexity.iloc[0]), uniform=len(tokenizer),
                       title=f"{record.name}: {corpus} ({int(part.windows.iloc[0])} windows)")
fig.tight_layout()
save_figure(fig, "quickstart_perplexity")
plt.show()

# %% [markdown]
# **Each quantized model against the unquantized one, on the same windows:** the added loss per token (positive: worse; exp of it is the perplexity ratio), its 95% interval and the paired-bootstrap p-value.

# %%
paired = pd.DataFrame([stats.paired_windows(windows, label, BASE, corpus)
                       for corpus in CORPORA for label in specs if label != BASE])
save_table(paired, "quickstart_perplexity_paired")
paired[["column", "a", "n", "a_score", "b_score", "difference", "low", "high", "p_value"]]

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
# The 576-wide rows of the attention projections do not divide into groups of 128; as in the GPTQ reference they end in one shorter group (4 × 128 + 64), which the report shows. The relative weight error is similar across components, so the large differences in *sensitivity* that later notebooks find do not come from how well each component's weights fit the grid; how each component's error propagates is the likely place to look (not tested here).

# %% [markdown]
# ## 5. Findings
# What the literature reports for round-to-nearest weight quantization, against this model, each decided by a paired test over the windows of both corpora: a "keeps" claim *agrees* when the whole interval of the added loss lies below the margin (`MARGINS`: log 1.01 or log 1.05 nats per token) and *contradicts* when the loss is significant and may exceed it; a "loses" claim agrees when the loss is significant (p < 0.05); *cannot test here* when the interval cannot tell.


# %%
def test(label, corpus, against=BASE):
    return stats.paired_windows(windows, label, against, corpus)


def cell(t):
    return (f"{t['a']} {t['a_score']:.4g} vs {t['b']} {t['b_score']:.4g}: {t['difference']:+.3g} nats/token "
            f"[{t['low']:+.3g}, {t['high']:+.3g}], p={t['p_value']:.2g}, n={t['n']} windows")


rows = []
for corpus in CORPORA:
    for bits, claim in ((8, "8-bit weights are lossless (LLM.int8, Dettmers et al. 2022)"),
                        (4, "4-bit weights in small groups are close to lossless (Dettmers & Zettlemoyer 2023)")):
        t = test(f"RTN W{bits}", corpus)
        rows.append({"claim": claim, "corpus": corpus, "this workbench": cell(t),
                     "verdict": stats.keeps_verdict(t, margin=math.log(1 + MARGINS[bits]))})
    t = test("RTN W3", corpus, against="RTN W4")
    rows.append({"claim": "round-to-nearest breaks down below 4 bits (GPTQ, Frantar et al. 2023): W3 loses against W4",
                 "corpus": corpus, "this workbench": cell(t), "verdict": stats.loses_verdict(t)})
    w2 = results[(results.corpus == corpus) & (results.bits == 2)].iloc[0]
    rows.append({"claim": "2-bit RTN destroys the model: worse than guessing uniformly over the vocabulary",
                 "corpus": corpus,
                 "this workbench": f"RTN W2 {w2.perplexity:.3g} [{w2.low:.3g}, {w2.high:.3g}] vs uniform {len(tokenizer):,}",
                 "verdict": "agrees" if w2.low > len(tokenizer) else "contradicts" if w2.high < len(tokenizer)
                 else "cannot test here"})
findings = pd.DataFrame(rows)
save_table(findings, "quickstart_findings")
findings.style.hide(axis="index")

# %% [markdown]
# *Caveat:* the unquantized model is itself a dequantized 4-bit GGUF checkpoint (blocks of 32), so 8-bit RTN re-quantizes weights that already sit on a coarser grid, and 4-bit RTN with groups of 128 moves them onto a different, coarser grid: a second quantization, not a first. A hub model (`MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"`) gives the first-quantization numbers the papers report.
#
# **Next:** `01_quantizers.ipynb` compares quantizers, `02_outliers.ipynb` and `03_stable_rank.ipynb` probe why some layers suffer more, `04_emergent_abilities.ipynb` asks what happens to abilities such as in-context learning, and `06_quantize_then_adapt.ipynb` how much fine-tuning wins back.
