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
# # 05 · Which components cannot take low bits?
#
# The second question of Liu et al. (LREC-COLING 2024): when a model is quantized to very few bits, which part of it is responsible for the loss? Their answer on LLaMA: the feed-forward (**FFN**) weights matter most, and keeping them (or their outlier dimensions) in higher precision helps a 2-bit model most.
#
# Two complementary experiments, each at `BITS` bits with RTN:
# * **only one group** — quantize that group alone; how much does it cost by itself?
# * **all but one group** — quantize everything except attention (or the FFN, or the embeddings/head); how much does sparing that group save?
#
# Groups: attention (q, k, v, o projections), FFN (gate, up, down) and embeddings/head (SmolLM2 ties the output head to the token embedding, so they are one matrix; RTN, row by row). The groups differ in size, so each cost is given **in total and per parameter**. Scores come from lm-eval exactly as in notebook 04 (every item, 95% intervals, paired tests against the base on the same items), with perplexity over the whole held-out splits of two corpora as the finer measure.
#
# **Why 4 bits, and why ICL.** At 2 bits RTN erases every ability this 135M model has and drives perplexity past uniform guessing (the vocabulary has 49,152 tokens; notebook 04), where a ranking of groups means nothing. At 4 bits notebook 04 finds RTN already costs most of the 5-shot arithmetic, and detects no loss of instruction following (+0.00 [−0.08, +0.07] on IFEval, though a loss of up to 0.07 is not ruled out), so at 4 bits there is an ICL loss to attribute and no detected IF loss: the sweep scores ICL (k = 0 and 5, three exemplar draws) and perplexity, and leaves IFEval out (add it to `SUITES` to check). Set `BITS = 2` to see the collapse.
#
# *Caveat:* a 135M model has no chain of thought to lose (notebook 04, section 2); CoT tasks are left out. The baseline is a dequantized 4-bit GGUF checkpoint.

# %% [markdown]
# ## Parameters
# The sweep below takes about half an hour, so its results are committed with the repository (`data/snapshots/`, with the exact arguments and versions that produced them) and shown from there when every argument matches. Change any parameter (or set `WORKBENCH_RECOMPUTE=1`, as `make reproduce` does) and the cell computes the points that do not match and rewrites the snapshot. `make test` re-scores a random sample of its items and windows from scratch (`tests/test_snapshots.py`).

# %%
MODEL = "smollm2-135m"
BITS = 4
METHOD = "rtn"                 # "gptq" also works (add CALIBRATION as in notebook 04)
SHOTS = [0, 5]
FEWSHOT_SEEDS = [0, 1, 2]      # exemplar draws for k > 0
LIMIT = None                   # every item
MAX_GEN_TOKS = None            # each task's own
SUITES = {"icl": ["wb_icl_arith_1d_add", "wb_icl_arith_1d_sub", "wb_icl_arith_1d_mul"]}   # add "if": ["wb_ifeval"] for IF
PERPLEXITY = ["lee", "botchan"]

# %%
SCORES = ["icl k=5"] + (["if strict"] if "if" in SUITES else [])     # the ability columns tested below

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workbench import abilities, stats
from workbench.models import load_model
from workbench.plots import component_bars
from workbench.report import interval_cells, interval_text, project_dir, save_table

pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 200)
FIG = project_dir() / "figures"
model, tokenizer, record = load_model(MODEL)
print(record.name, f"{record.n_params / 1e6:.1f}M parameters")

# %% [markdown]
# ## Parameters per group
# How much of the model each group holds: sparing a large group costs more memory than sparing a small one, and a large group has more weights to spoil.

# %%
from workbench.modules import linear_modules, select_modules

sizes = {g: sum(linear_modules(model)[n].weight.numel() for n in select_modules(model, rx))
         for g, rx in abilities.COMPONENT_GROUPS.items() if rx}
sizes["embeddings"] = model.get_input_embeddings().weight.numel()
sizes = pd.Series(sizes, name="parameters").to_frame()
sizes["share"] = sizes.parameters / sizes.parameters.sum()
sizes

# %% [markdown]
# ## 1. Quantize only one group, and all but one group

# %%
specs = {"base": None, **abilities.component_specs(bits=BITS, method=METHOD)}
t = time.perf_counter()
res = abilities.ability_sweep(model, tokenizer, record, specs, suites=SUITES, shots=SHOTS, limit=LIMIT,
                              max_gen_toks=MAX_GEN_TOKS, fewshot_seeds=FEWSHOT_SEEDS, perplexity_corpora=PERPLEXITY,
                              name=f"component_sensitivity_w{BITS}", snapshot=True)
print(f"{len(specs)} models, {time.perf_counter() - t:.0f} s")
intervals = abilities.ability_intervals(res)
save_table(intervals, f"component_sensitivity_w{BITS}")
interval_cells(intervals)

# %%
fig = component_bars(intervals, ["perplexity lee", "perplexity botchan", *SCORES],
                     title=f"{record.name}: {METHOD.upper()} W{BITS} by component group (95% intervals)",
                     path=FIG / f"component_sensitivity_w{BITS}.png")
plt.show()

# %% [markdown]
# **Each variant against the base, paired on the same items and windows**: the difference base − variant for the ability scores (positive: the variant lost), and the per-token NLL difference variant − base for perplexity (positive: the variant is worse; exp of it is the perplexity ratio), each with its 95% interval and p-value.

# %%
variants = [k for k in specs if k != "base"]
tests = pd.DataFrame([abilities.paired_items(res.samples, "base", v, c) for v in variants for c in SCORES]
                     + [abilities.paired_windows(res.windows, v, "base", c) for v in variants for c in PERPLEXITY])
tests["variant"] = np.where(tests.a == "base", tests.b, tests.a)
save_table(tests, f"component_sensitivity_w{BITS}_paired")
tests.assign(cell=[f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] p={p:.2g}" for d, lo, hi, p in
                   zip(tests.difference, tests.low, tests.high, tests.p_value)]
             ).pivot(index="variant", columns="column", values="cell").loc[variants]

# %% [markdown]
# ## 2. In total and per parameter
# *Only X* says what quantizing X costs by itself; *all but X* says what sparing X saves when everything else is quantized (all but X against all, paired on the same items and windows). Per parameter divides each by the group's size (per 10 million weights), interval included: a group can cost most in total only because it is the largest. Each cell: the estimate [95% interval]; the p-values and n are in the saved table.

# %%
def sparing_test(g, c):
    """What sparing group g saves when the rest is quantized, paired: all but g against all (positive: it saves)."""
    if c.startswith("perplexity"):
        return abilities.paired_windows(res.windows, "all", f"all but {g}", c.removeprefix("perplexity "))
    return abilities.paired_items(res.samples, f"all but {g}", "all", c)


only = tests.set_index(["variant", "column"])
rows = []
for g in sizes.index:
    per = sizes.loc[g, "parameters"] / 1e7                        # the group's size in units of 10M weights
    for c, measure in [("icl k=5", "ICL 5-shot lost"), ("perplexity lee", "NLL/token added (lee)")]:
        for kind, t in (("only", only.loc[(f"only {g}", c)]), ("saved by sparing", sparing_test(g, c))):
            rows.append({"group": g, "parameters (M)": per * 10, "measure": measure, "kind": kind, "n": t["n"],
                         "total": t["difference"], "low": t["low"], "high": t["high"], "p_value": t["p_value"],
                         "per 10M": t["difference"] / per, "per 10M low": t["low"] / per, "per 10M high": t["high"] / per})
per_param = pd.DataFrame(rows)
save_table(per_param, f"component_sensitivity_w{BITS}_per_parameter")
per_param.assign(
    total=interval_text(per_param.total, per_param.low, per_param.high, "+.3f"),
    **{"per 10M": interval_text(per_param["per 10M"], per_param["per 10M low"], per_param["per 10M high"], "+.3f")}
).pivot(index=["measure", "kind"], columns="group", values=["total", "per 10M"]).T

# %% [markdown]
# **Which group costs more: the FFN or attention?** Paired directly on the same items and windows (only FFN against only attention; positive: the FFN alone costs more).

# %%
ffn_vs_attn = pd.DataFrame([abilities.paired_items(res.samples, "only attention", "only ffn", c) for c in SCORES]
                           + [abilities.paired_windows(res.windows, "only ffn", "only attention", c) for c in PERPLEXITY])
save_table(ffn_vs_attn, f"component_sensitivity_w{BITS}_ffn_vs_attention")
ffn_vs_attn[["column", "a", "b", "n", "a_score", "b_score", "difference", "low", "high", "p_value", "test"]]

# %% [markdown]
# **Per parameter**, paired over the same windows: the NLL each group adds when quantized alone, divided by its size (per 10M weights), FFN against attention (positive: the FFN costs more per weight). And **sparing**: all but the FFN against all but attention on the same items and windows (positive: sparing the FFN keeps more).

# %%
per10m = {g: sizes.loc[g, "parameters"] / 1e7 for g in sizes.index}
per_param_tests = pd.DataFrame([abilities.paired_costs(res.windows, "base", "only ffn", "only attention", c,
                                                       per_a=per10m["ffn"], per_b=per10m["attention"])
                                for c in PERPLEXITY])
sparing = pd.DataFrame([abilities.paired_items(res.samples, "all but ffn", "all but attention", c)
                        for c in SCORES]
                       + [abilities.paired_windows(res.windows, "all but attention", "all but ffn", c) for c in PERPLEXITY])
save_table(pd.concat([per_param_tests.assign(comparison="per 10M parameters, only FFN vs only attention"),
                      sparing.assign(comparison="sparing FFN vs sparing attention")]),
           f"component_sensitivity_w{BITS}_per_parameter_tests")
pd.concat([per_param_tests, sparing])[["column", "a", "b", "n", "difference", "low", "high", "p_value", "test"]]

# %% [markdown]
# ## 3. Findings
# The paper's claims against this model, each decided by its paired test: *agrees* when the difference goes the claimed way at p < 0.05, *contradicts* when it goes the other way at p < 0.05, *cannot test here* when the interval cannot tell (or when the base model does not show the ability: its interval reaches the majority-class line).

# %%
base_iv = intervals[intervals.label == "base"].set_index("column")


def shown(col):
    """The base model shows the ability (perplexity always counts)."""
    if col.startswith("perplexity") or pd.isna(base_iv.loc[col, "majority"]):
        return True
    return stats.above_baseline(base_iv.loc[col, "low"], base_iv.loc[col, "majority"])


def describe(t):
    unit = " nats/token" if t["column"].startswith("perplexity") else ""
    return f"{t['difference']:+.3g}{unit} [{t['low']:+.3g}, {t['high']:+.3g}], p={t['p_value']:.2g}, n={t['n']}"


rows = []
for claim, table in (("the FFN costs more than attention when quantized alone (in total)", ffn_vs_attn),
                     ("the FFN costs more than attention per parameter", per_param_tests),
                     ("keeping the FFN in higher precision saves more than keeping attention", sparing)):
    for t in table.to_dict("records"):
        rows.append({"paper's claim": claim, "measure": t["column"], "this workbench": describe(t),
                     "verdict": stats.loses_verdict(t) if shown(t["column"]) else "cannot test here"})
findings = pd.DataFrame(rows)
save_table(findings, f"component_sensitivity_w{BITS}_findings")
findings.style.hide(axis="index")
