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
# # 08 · Bits by word frequency: per-word embedding precision and bits per block
#
# Chung et al. ("Extremely Low Bit Transformer Quantization for On-Device Neural Machine Translation", Findings of EMNLP 2020) make two claims about where a low-bit budget should go:
# * **Inside the embedding**, words contribute very differently: rank them by frequency and give the frequent ones more bits. At the same average width this beats giving every word the same width.
# * **Across blocks**, embedding, attention and FFN need different widths, and an allocation by block under one model-size budget beats a uniform one.
#
# This notebook tests both on SmolLM2-135M (`workbench.quant.by_frequency`). The frequencies are counted on the calibration split of the news corpus; perplexity is measured on the whole held-out split of the same corpus (never the text the frequencies came from), each allocation paired window by window with its controls: the **same widths shuffled over the rows** (exactly the same size: what frequency adds) and the **uniform** width at the same mean.
#
# *Two caveats that shape the answer.* SmolLM2 ties its output head to the token embedding, so a row's width is also the width of that token's output logit: quantizing the embedding is quantizing the LM head, the group with the largest perplexity cost per parameter in notebook 05 (at 4 bits, 0.054 [0.050, 0.059] nats per token per 10M weights quantized alone, against attention's 0.030 [0.026, 0.034] and the FFN's 0.019 [0.018, 0.020]; intervals apart, not tested pairwise). And the bundled weights are a dequantized 4-bit GGUF checkpoint (notebook 00).

# %% [markdown]
# ## Parameters
# Every perplexity covers the whole held-out split (28 windows of 512 tokens) with its 95% bootstrap interval; the sweeps are committed snapshots (`data/snapshots/by_frequency_*.json.gz`) that `make test` re-scores in part, and `make reproduce` recomputes.

# %%
MODEL = "smollm2-135m"
CORPUS = "lee"                       # frequencies from its calibration split, perplexity on its held-out split
SEQLEN = 512
GROUP_SIZE = 128                     # groups along each embedding row (576 = 4 x 128 + 64)
CHOICES = (2, 3, 4, 8)               # the widths a row (or a block) may take
MEAN_BITS = [4.0, 3.0, 2.5]          # per-word budgets: the mean width over the 49,152 rows
SMOOTHING = 1.0                      # a variant: one pseudo-count per token before allocating
BLOCK_BUDGET = 3.0                   # bits per block: mean code bits per weight over embeddings, attention, FFN
BLOCK_FLOOR = 2.75                   # ... the allocations evaluated use at least this much of it

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from workbench import stats
from workbench.data import calibration_text, evaluation_text
from workbench.evaluate import perplexity_sweep
from workbench.models import load_model
from workbench.quant import FrequencyBits
from workbench.quant.by_frequency import (allocate_row_bits, block_allocations, block_parameters, block_spec,
                                          frequency_rank, token_frequencies)
from workbench.report import project_dir, save_table
from workbench.widgets import frequency_bits_explorer

pd.set_option("display.float_format", "{:.4g}".format)
pd.set_option("display.width", 160)
FIG = project_dir() / "figures"
model, tokenizer, record = load_model(MODEL)
vocab = model.get_input_embeddings().weight.shape[0]
print(record.name, f"{record.n_params / 1e6:.1f}M parameters; embedding {tuple(model.get_input_embeddings().weight.shape)}, "
      f"tied to the output head: {model.get_output_embeddings().weight is model.get_input_embeddings().weight}")

# %% [markdown]
# ## 1. The frequencies
# How concentrated is the news corpus's use of the vocabulary, and how much of the held-out text uses tokens the calibration split never saw?

# %%
freq = token_frequencies(tokenizer, [calibration_text(CORPUS)], vocab)                     # [vocab]
held_out = token_frequencies(tokenizer, [evaluation_text(CORPUS)], vocab)
ranked = freq[frequency_rank(freq)]
coverage = pd.DataFrame({"most frequent tokens": [10, 100, 1000, int((freq > 0).sum())],
                         "share of calibration tokens": [float(ranked[:k].sum() / freq.sum())
                                                         for k in (10, 100, 1000, int((freq > 0).sum()))]})
unseen = held_out[freq == 0].sum() / held_out.sum()
print(f"{int(freq.sum()):,} calibration tokens use {int((freq > 0).sum()):,} of the {vocab:,} rows; "
      f"{float(unseen):.1%} of the {int(held_out.sum()):,} held-out tokens are rows the calibration split never saw")
coverage

# %% [markdown]
# ## 2. Per-word widths
# `allocate_row_bits` ranks the rows by count and raises widths greedily, most frequent first, by modelled error removed per bit (an error of 1/(2ᵇ − 1)² per row, weighted by count), until the mean reaches the budget: frequency buckets, a frequent token never narrower than a rarer one. With no smoothing every unseen token gets the narrowest width; one pseudo-count per token (`SMOOTHING`) spreads the budget.

# %%
hist = []
for mean_bits in MEAN_BITS:
    for smoothing in (0.0, SMOOTHING):
        bits = allocate_row_bits(freq, mean_bits, CHOICES, smoothing)
        hist.append({"mean bits": mean_bits, "smoothing": smoothing, **{f"{b}-bit rows": int((bits == b).sum()) for b in CHOICES},
                     "share of calibration tokens at the top width": float(freq[bits == bits.max()].sum() / freq.sum())})
pd.DataFrame(hist)

# %% [markdown]
# ## 3. Perplexity: frequency against the same widths at random and against uniform
# Only the embedding (and with it the tied head) is quantized; every linear layer stays as it is, so the comparison isolates the allocation. RTN, groups of `GROUP_SIZE` along each row.

# %%
specs = {"unquantized": None}
for mean_bits in MEAN_BITS:
    for rule in ("frequency", "random") + (("uniform",) if float(mean_bits).is_integer() else ()):
        specs[f"{rule} {mean_bits:g}"] = {"linears": {}, "embeddings": FrequencyBits(
            avg_bits=mean_bits, rule=rule, choices=CHOICES, corpus=CORPUS, group_size=GROUP_SIZE)}
    specs[f"frequency {mean_bits:g}, smoothed"] = {"linears": {}, "embeddings": FrequencyBits(
        avg_bits=mean_bits, choices=CHOICES, corpus=CORPUS, group_size=GROUP_SIZE, smoothing=SMOOTHING)}
ppl, windows = perplexity_sweep(model, tokenizer, record, specs, corpus=CORPUS, seqlen=SEQLEN, max_windows=None,
                                name="by_frequency_embeddings", snapshot=True, return_windows=True, progress=False)
ppl["mean bits"] = [None] + [s["embeddings"].avg_bits for s in list(specs.values())[1:]]
save_table(ppl.drop(columns=["quantize_time_s", "bits"]), "by_frequency_embeddings")
ppl[["label", "mean bits", "perplexity", "low", "high", "rel_weight_error", "windows", "tokens"]]

# %%
PAIRS = []
for mean_bits in MEAN_BITS:
    m = f"{mean_bits:g}"
    PAIRS += [(f"frequency {m}", "unquantized"), (f"frequency {m}", f"random {m}"),
              (f"frequency {m}, smoothed", f"frequency {m}")]
    if float(mean_bits).is_integer():
        PAIRS += [(f"frequency {m}", f"uniform {m}"), (f"frequency {m}, smoothed", f"uniform {m}")]
tests = pd.DataFrame([stats.paired_windows(windows, a, b, CORPUS) for a, b in PAIRS])
save_table(tests, "by_frequency_embeddings_tests")
tests[["a", "b", "n", "a_score", "b_score", "difference", "low", "high", "p_value"]]

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
base = ppl.set_index("label").loc["unquantized", "perplexity"]
for rule, marker in (("frequency", "o"), ("frequency, smoothed", "D"), ("random", "x"), ("uniform", "s")):
    rows = ppl[ppl.label.str.fullmatch(rf"{rule.split(',')[0]} [\d.]+" + (", smoothed" if "smoothed" in rule else ""))]
    ax.errorbar(rows["mean bits"], rows.perplexity, yerr=[rows.perplexity - rows.low, rows.high - rows.perplexity],
                marker=marker, capsize=3, label=rule, linestyle="-")
ax.axhline(base, color="grey", linestyle="--", label="unquantized")
ax.axhline(vocab, color="red", linestyle=":", label=f"uniform guessing ({vocab:,})")
ax.set(xlabel="mean bits per embedding row", ylabel="perplexity (whole held-out split)", yscale="log",
       title=f"{record.name}: embedding (= tied head) by word frequency, 95% intervals")
ax.legend(fontsize=8)
fig.savefig(FIG / "by_frequency_embeddings.png", dpi=120, bbox_inches="tight")
plt.show()

# %% [markdown]
# The calibration split is small (59,520 tokens over 7,566 distinct rows; the 1,000 most frequent tokens carry 75% of it) and 7.0% of the held-out tokens are rows it never saw.
# * **Frequency against the same widths at random**: by a wide margin at every budget (−0.31 [−0.33, −0.29] nats per token at 4 bits, −3.8 and −3.2 at 3 and 2.5 bits, where the random control is past uniform guessing over the vocabulary and frequency's 2,461 and 7,014 are still 80 and 240 times the unquantized 29.8). The random control gives frequent tokens the narrowest rows; this only says that *which* rows get the bits matters, not that frequency is the best rule.
# * **Frequency against uniform at the same mean**: at 4 bits the frequency rule is level with uniform without smoothing (−0.010 [−0.025, +0.004]) and better with one pseudo-count per token (32.1 against 34.7: −0.078 [−0.088, −0.068], p = 0.0002): 577 frequent rows at 8 bits, most at 4, 2,308 rare ones at 3. At 3 bits uniform wins clearly: without smoothing the frequency rule puts every unseen token (37,830 rows) at 2 bits and perplexity reaches 2,461; smoothed (2,116 rows at 2 bits) it is still 0.54 [0.39, 0.70] nats worse than uniform 3-bit (100 against 58.6).
# * **Why the tied head changes the picture** (a reading these numbers are consistent with, not tested here: it needs a model with an untied head). In the NMT setting of the paper a rare word's row matters only when the word occurs. Here each row is also an output row: every position's softmax sums over all 49,152 logits, so a badly quantized rare row can take probability from the right token at *every* position. A few narrow rows cost more than the frequent rows' extra bits win back; the bits are better spent keeping every row at a moderate width, which is what uniform does.

# %% [markdown]
# ## 4. Bits per block under one size budget
# Every width per block (embeddings, attention, FFN) from `CHOICES` whose parameter-weighted mean is at most `BLOCK_BUDGET` code bits and at least `BLOCK_FLOOR` (scales and zeros add about (16 + b)/128 bits per weight for every block alike), each evaluated on the whole held-out split with RTN at groups of `GROUP_SIZE`; the uniform allocation is among them.

# %%
n_block = block_parameters(model)
allocs = block_allocations(model, BLOCK_BUDGET, choices=CHOICES)
allocs = allocs[allocs.mean_bits >= BLOCK_FLOOR].reset_index(drop=True)
print({b: f"{n / 1e6:.1f}M" for b, n in n_block.items()})
block_specs = {"unquantized": None}
for row in allocs.to_dict("records"):
    label = " / ".join(f"{b} {row[b]}" for b in n_block)
    block_specs[label] = block_spec({b: int(row[b]) for b in n_block}, group_size=GROUP_SIZE)
blocks, block_windows = perplexity_sweep(model, tokenizer, record, block_specs, corpus=CORPUS, seqlen=SEQLEN,
                                         max_windows=None, name="by_frequency_blocks", snapshot=True,
                                         return_windows=True, progress=False)
blocks["mean code bits"] = [None] + allocs.mean_bits.tolist()
save_table(blocks.drop(columns=["quantize_time_s", "bits"]), "by_frequency_blocks")
blocks[["label", "mean code bits", "perplexity", "low", "high", "rel_weight_error", "quantized_modules"]]

# %%
uniform_label = " / ".join(f"{b} {int(BLOCK_BUDGET)}" for b in n_block)
best = blocks.iloc[1:].sort_values("perplexity").label.iloc[0]
block_tests = pd.DataFrame([stats.paired_windows(block_windows, label, uniform_label, CORPUS)
                            for label in blocks.label.iloc[1:] if label != uniform_label])
save_table(block_tests, "by_frequency_blocks_tests")
print(f"best allocation: {best}")
block_tests[["a", "b", "n", "a_score", "b_score", "difference", "low", "high", "p_value"]]

# %% [markdown]
# Every allocation other than the uniform one, under 3 code bits per weight with widths {2, 3, 4, 8}, has to put some block at 2 bits, and on this model any block at 2 bits collapses it (perplexity 4e4 to 4e6, against 318 for 3 bits everywhere, each p = 0.0002 in the paired test). So uniform wins here, and the test is narrow: a budget that allows an allocation without 2-bit blocks (e.g. 3.5 bits: embeddings 4 / attention 4 / FFN 3) would ask the question the paper asks; the embedding block, with the largest perplexity cost per parameter in notebook 05, is the natural one to widen.

# %% [markdown]
# ## 5. Explore the allocation
# Pick a mean width, a rule and the smoothing: each embedding row's width by its token's calibration frequency rank, the plain and frequency-weighted error, and the packed size (live in JupyterLab).

# %% tags=["nbval-ignore-output"]
frequency_bits_explorer(model, freq, group_size=GROUP_SIZE, choices=CHOICES)

# %% [markdown]
# ## Findings
# Each row a paired bootstrap over the 28 windows of the whole held-out split (difference in nats per token, a − b; negative: a is better).

# %%
def cell(t):
    return (f"{t['a']} {t['a_score']:.4g} vs {t['b']} {t['b_score']:.4g}: {t['difference']:+.3g} nats/token "
            f"[{t['low']:+.3g}, {t['high']:+.3g}], p={t['p_value']:.2g}, n={t['n']} windows")


def beats(t):                      # a beats b: significantly lower NLL
    return stats.beats_verdict({**t, "difference": -t["difference"], "low": -t["high"], "high": -t["low"]})


t_emb = tests.set_index(["a", "b"])
rows = []
for mean_bits in MEAN_BITS:
    m = f"{mean_bits:g}"
    t = t_emb.loc[(f"frequency {m}", f"random {m}")].to_dict() | {"a": f"frequency {m}", "b": f"random {m}"}
    rows.append({"paper's claim": "frequent words at more bits beat the same widths spread without regard to frequency",
                 "setting": f"SmolLM2 embedding (tied head), mean {m} bits", "this workbench": cell(t), "verdict": beats(t)})
    if float(mean_bits).is_integer():
        for a in (f"frequency {m}", f"frequency {m}, smoothed"):
            t = t_emb.loc[(a, f"uniform {m}")].to_dict() | {"a": a, "b": f"uniform {m}"}
            rows.append({"paper's claim": "frequency-based widths beat a uniform width at the same mean",
                         "setting": f"SmolLM2 embedding (tied head), mean {m} bits{', smoothed' if 'smoothed' in a else ''}",
                         "this workbench": cell(t), "verdict": beats(t)})
tb = block_tests.set_index("a")
t = None
if best != uniform_label:                     # chosen on these windows: Bonferroni over the allocations compared
    t = tb.loc[best].to_dict() | {"a": best, "b": uniform_label}
    t["p_value"] = min(1.0, t["p_value"] * len(block_tests))
others = allocs[[" / ".join(f"{b} {r[b]}" for b in n_block) != uniform_label for r in allocs.to_dict("records")]]
narrow = bool((others[list(n_block)] == min(CHOICES)).any(axis=1).all())   # every alternative has a block at the floor
rows.append({"paper's claim": "bits allocated by block under a size budget beat a uniform width",
             "setting": f"SmolLM2, ≤ {BLOCK_BUDGET:g} code bits per weight, the best of {len(blocks) - 1} allocations "
                        f"(p Bonferroni-adjusted ×{len(block_tests)})"
                        + (f"; every other allocation puts a block at {min(CHOICES)} bits" if narrow else ""),
             "this workbench": cell(t) if t else f"the uniform allocation ({uniform_label}) is the best",
             "verdict": beats(t) if t else "cannot test here" if narrow else "contradicts"})
findings = pd.DataFrame(rows)
save_table(findings, "by_frequency_findings")
findings.style.hide(axis="index")

# %% [markdown]
# What the table allows: per-word widths by frequency beat the same widths at random (every budget), and beat a uniform width at 4 bits once unseen tokens are smoothed; they lose to uniform at 3 bits on this tied-head model. Per-block allocation at a 3-bit budget cannot beat uniform here because every alternative contains a 2-bit block, so the row reads *cannot test here*. Not tested: an untied embedding (the paper's NMT setting), budgets above 3 bits per block, and frequencies from a larger calibration corpus (7,566 of 49,152 rows seen).
