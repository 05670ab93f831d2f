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
# # 05 · Which components cannot take 2 bits?
#
# The second question of Liu et al. (LREC-COLING 2024): when a model is quantized to very few bits, which part of it is responsible for the collapse? Their answer on LLaMA: the feed-forward (**FFN**) weights matter most, and keeping them (or their outlier dimensions) in higher precision helps a 2-bit model most.
#
# Two complementary experiments, each at `BITS` bits with RTN:
# * **all but one group** — quantize everything except attention (or the FFN, or the embeddings/head); how much does sparing that group save?
# * **only one group** — quantize that group alone; how much does it cost by itself?
#
# Groups: attention (q, k, v, o projections), FFN (gate, up, down) and embeddings/head (SmolLM2 ties the output head to the token embedding, so they are one matrix; RTN, row by row). Scores come from lm-eval exactly as in notebook 04, with perplexity on held-out text alongside as a finer measure.
#
# *Caveat:* a 135M model has little ICL and no CoT to lose (notebook 04); chain-of-thought tasks are left out here for that reason. The baseline is a dequantized 4-bit GGUF checkpoint.

# %% [markdown]
# ## Parameters
# The sweeps below take minutes, so their results are committed with the repository (`data/snapshots/`, with the exact arguments and versions that produced them) and shown from there when every argument matches. Each model is one point of a sweep (`workbench.experiments`): its arguments with every default, its scores and every scored item. Change any parameter (or set `WORKBENCH_RECOMPUTE=1`, as `make reproduce` does) and the cell computes the points that do not match, each stored as it finishes, and rewrites the snapshot. `make test` recomputes a sample of every snapshot from scratch and checks it against the committed numbers (`tests/test_snapshots.py`).

# %%
MODEL = "smollm2-135m"
BITS = 2
METHOD = "rtn"                 # "gptq" also works (add CALIBRATION as in notebook 04)
SHOTS = [0, 5]
LIMIT = 6
MAX_GEN_TOKS = 48
SUITES = {"icl": ["wb_icl_arith_1d_add"], "if": ["wb_ifeval"]}   # no CoT: a 135M model has none to lose

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd

from workbench import abilities
from workbench.models import load_model
from workbench.plots import component_bars
from workbench.report import project_dir, save_table

pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 160)
FIG = project_dir() / "figures"
model, tokenizer, record = load_model(MODEL)
print(record.name, f"{record.n_params / 1e6:.1f}M parameters")

# %% [markdown]
# ## Parameters per group
# How much of the model each group holds: sparing a large group costs more memory than sparing a small one.

# %%
from workbench.modules import linear_modules, select_modules

sizes = {g: sum(linear_modules(model)[n].weight.numel() for n in select_modules(model, rx))
         for g, rx in abilities.COMPONENT_GROUPS.items() if rx}
sizes["embeddings"] = model.get_input_embeddings().weight.numel()
sizes = pd.Series(sizes, name="parameters").to_frame()
sizes["share"] = sizes.parameters / sizes.parameters.sum()
sizes

# %% [markdown]
# ## 1. Quantize all but one group, and only one group

# %%
specs = {"base": None, **abilities.component_specs(bits=BITS, method=METHOD)}
t = time.perf_counter()
res = abilities.ability_sweep(model, tokenizer, record, specs, suites=SUITES, shots=SHOTS, limit=LIMIT,
                              max_gen_toks=MAX_GEN_TOKS, name=f"component_sensitivity_w{BITS}", snapshot=True)
print(f"{len(specs)} models, {time.perf_counter() - t:.0f} s")
table = abilities.ability_table(res.scores).drop(columns=["bits", "method"])
save_table(table, f"component_sensitivity_w{BITS}")
table

# %%
fig = component_bars(table, ["perplexity", "icl k=5", "if loose"],
                     title=f"{record.name}: {METHOD.upper()} W{BITS} by component group",
                     path=FIG / f"component_sensitivity_w{BITS}.png")
plt.show()

# %% [markdown]
# Read the two halves together: *only X* says what quantizing X costs by itself; *all but X* says what sparing X saves when everything else is quantized. A group matters most when its *only* row is far from the base and its *all but* row is far from *all*.

# %%
ranked = table.set_index("label")
summary = pd.DataFrame({
    "perplexity when only this group is quantized": [ranked.loc[f"only {g}", "perplexity"] for g in sizes.index],
    "perplexity when all but this group is": [ranked.loc[f"all but {g}", "perplexity"] for g in sizes.index],
    "parameters": sizes.parameters.values}, index=sizes.index)
summary.sort_values("perplexity when only this group is quantized", ascending=False)

# %% [markdown]
# ## What to take away
# From the tables above (RTN, 2 bits, group 128; 6 items per task):
# * **Any one group at 2 bits is enough to erase the abilities this model has.** Every 2-bit variant scores 0 on 5-shot arithmetic, except "all" with one item of 6 right (a lucky answer, not a signal), and 0 on instruction following (where the base also has 0 of 6). The ability scores cannot rank the groups here; perplexity can.
# * **Quantized alone**, the tied embedding/head hurts most (perplexity 4.8e5 from 29), then the FFN (5.4e4), then attention (2.6e3).
# * **Spared**, the embedding/head saves the most too: everything else at 2 bits gives 3.3e6, against 8.0e6 when the FFN is spared, 1.3e8 when attention is, and 3.7e8 when nothing is.
# * Among the linear layers the FFN is the more sensitive group, as the paper found on LLaMA; but on this model the most sensitive single group is the 49152 × 576 embedding that is also the output head, a matrix many recipes (and `quantize_model`'s default) leave in 16 bits. Attention is the cheapest to quantize: about a fifth of the parameters, and alone it costs the least.
#
# With 6 items per task the ability columns are coarse; set `LIMIT = 100` for a finer reading, `BITS = 3` to look where the abilities are only partly lost (notebook 04), and `METHOD = "gptq"` (with calibration) to see whether a better quantizer changes the ranking.
