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
# # 07 · Decompositions and structured tickets: the MPO family and EarlyBERT
#
# Two families of papers change the *shape* of a pre-trained model's matrices rather than their precision:
# * **Matrix product operators** (RUCAIBox: Gao, Liu, Zhao et al.). A weight W [out, in] is written as a chain of small local tensors (out = ∏ oₖ, in = ∏ iₖ; `workbench.decompose.mpo`), one *central* tensor carrying most parameters and the spectrum, the *auxiliary* tensors around it small. **MPOP** (ACL 2021) truncates the bonds to compress and then fine-tunes only the auxiliary tensors; **OPF** (ACL 2023) over-parameterizes chosen matrices with more factors during fine-tuning and contracts them back, so inference costs what it did; **MPOBERT** (2023) shares one central tensor across layers; **MPOE** (COLING 2022) turns each FFN into experts that share the central tensor.
# * **EarlyBERT** (Chen et al., ACL 2021): slimming coefficients on every attention head and FFN neuron, trained with an L1 penalty; the top coefficients draw a *structured* ticket, found early (the "early bird": the mask stops changing), and the ticket is cut out as really smaller matrices and trained.
#
# Each method runs on the fp32 MiniLM encoder (`workbench.adapt`) on two labelled tasks, over three seeds, against the controls that make a number mean something: a linear probe (*head only*), *full* fine-tuning, LoRA at the auxiliary tensors' parameter count, and a *random* structured ticket of the same size as EarlyBERT's.

# %% [markdown]
# ## Parameters
# Every run trains for real (about 40 s each on 2 cores), so each is a point of a sweep whose records are committed (`data/snapshots/decompositions_*.json.gz`: the arguments with every default, the versions, the record with per-item outcomes and per-step losses) and read back when all of those match; `make test` re-runs a sample of them and checks them, `make reproduce` recomputes them.

# %%
ENCODER = "minilm-l6"                 # all-MiniLM-L6-v2, 22.7M parameters, fp32
DATASET = "polarity"                  # 200 movie-review sentences: 140 train / 60 held out per seed, stratified
BIGBENCH_SET = "navigate"             # BIG-bench navigate: 700 train / 300 held out per seed
SEEDS = [0, 1, 2]                     # the split, the head's initialization, the data order
STEPS = 60                            # optimizer steps per run, batch 16 (EarlyBERT: as many again to search)
BONDS = [64, 32]                      # MPOP's truncations (64 is full for MiniLM's square matrices with 3 tensors)
PARTS = 3                             # local tensors per matrix (MPOP, MPOBERT, MPOE); OPF uses 5
OPF_MATRICES = 6                      # matrices OPF over-parameterizes
EXPERTS = 4                           # MPOE's experts per FFN
HEAD_RATIO, NEURON_RATIO = 1 / 3, 0.4 # EarlyBERT: share of heads and FFN neurons pruned in each layer (the paper's)
MARGIN = 0.05                         # an accuracy loss below this counts as "keeps" in the findings

# %%
import statistics

import matplotlib.pyplot as plt
import pandas as pd

from workbench import adapt, stats
from workbench.adapt import mpo_methods, sweeps
from workbench.decompose.mpo import factorize, truncation_table
from workbench.plots import accuracy_vs_params
from workbench.report import paired_cell, project_dir, save_table
from workbench.widgets import mpo_explorer

pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 160)
FIG = project_dir() / "figures"
task_desc = {"kind": "classification", "dataset": DATASET, "seed": SEEDS[0]}
model, tokenizer, record = sweeps.load_model_for(ENCODER, task_desc)
task = sweeps.task_for(ENCODER, task_desc)
n_params = sum(p.numel() for p in model.parameters())
print(record.name, f"{n_params / 1e6:.1f}M parameters with the head; {adapt.target_params(model):,} projection weights")

# %% [markdown]
# ## 1. What truncation costs
# Every projection of the encoder (query, key, value, attention output, FFN in and out; 36 matrices) as an MPO of `PARTS` tensors, at decreasing maximum bond dimensions: the mean relative reconstruction error ‖W − Ŵ‖/‖W‖, the parameters of all the MPOs against the dense matrices', and how many of them the auxiliary tensors hold (what MPOP trains). At full bond the MPO is exact (the error is float rounding).

# %%
def mpo_summary(max_bond):
    m, report = mpo_methods.mpo_model(model, parts=PARTS, max_bond=max_bond)
    aux = sum(t.numel() for layer in mpo_methods._mpo_layers(m).values()
              for k, t in enumerate(layer.tensors) if k != layer.central)
    return {"max bond": "full" if max_bond is None else max_bond, "mean rel. error": report.rel_error.mean(),
            "max rel. error": report.rel_error.max(), "MPO params": int(report.params.sum()),
            "of dense": report.params.sum() / report.dense_params.sum(), "auxiliary params": aux, "matrices": len(report)}


truncation = pd.DataFrame([mpo_summary(b) for b in [None, *BONDS, 16, 8]])
save_table(truncation, "decompositions_truncation")
truncation

# %% [markdown]
# The error falls off a cliff, not a slope: at a bond of 64 the square matrices are still exact and only the FFN matrices (384 × 1536, bond up to 96) are cut; at 32 the mean error is already most of the norm. The spectrum of these matrices is flat (notebook 03: stable ranks of tens to a hundred), and a bond cut drops whole singular directions. One FFN matrix at every bond:

# %%
w = model.bert.encoder.layer[2].intermediate.dense.weight.detach()           # [1536, 384]
one = truncation_table(w, factorize(w.shape[0], PARTS), factorize(w.shape[1], PARTS), [4, 8, 16, 32, 64, 96])
one

# %% [markdown]
# ## 2. Every method on polarity
# The runs, each from the same pre-trained encoder and the same seeded head, for `STEPS` steps of 16 sentences (each method's own default learning rate: MPOP 5e-4 like the paper's lightweight tuning, LoRA 1e-3, full fine-tuning, OPF, MPOBERT, MPOE and the tickets 5e-5). LoRA runs at the rank whose adapter count is closest to MPOP's auxiliary tensors at full bond (printed below).

# %%
kw = dict(steps=STEPS)
MATCHED_R = min(range(1, 17), key=lambda r: abs(adapt.lora_params(model, r) - truncation["auxiliary params"].iloc[0]))
print(f"LoRA r{MATCHED_R}: {adapt.lora_params(model, MATCHED_R):,} adapter weights; MPOP's auxiliary tensors: "
      + ", ".join(f"{n:,} at bond {b}" for b, n in zip(truncation["max bond"], truncation["auxiliary params"])))
runs = {
    "head only": ("head_only", kw),
    "full": ("full_finetune", kw),
    f"LoRA r{MATCHED_R}": ("lora", dict(r=MATCHED_R, **kw)),
    "MPOP, full bond": ("mpop", dict(max_bond=None, parts=PARTS, **kw)),
    **{f"MPOP, bond {b}": ("mpop", dict(max_bond=b, parts=PARTS, **kw)) for b in BONDS},
    "OPF, static": ("opf", dict(n_matrices=OPF_MATRICES, choice="static", **kw)),
    "OPF, dynamic": ("opf", dict(n_matrices=OPF_MATRICES, choice="dynamic", every=STEPS // 3, **kw)),
    "MPOBERT": ("mpobert", dict(parts=PARTS, **kw)),
    "MPOE": ("mpoe", dict(experts=EXPERTS, parts=PARTS, **kw)),
    "EarlyBERT": ("earlybert", dict(head_ratio=HEAD_RATIO, neuron_ratio=NEURON_RATIO, search_steps=STEPS, **kw)),
    "random ticket": ("random_structured_ticket", dict(head_ratio=HEAD_RATIO, neuron_ratio=NEURON_RATIO, **kw)),
}
records = sweeps.run_methods(ENCODER, task_desc, runs, name="decompositions_polarity", snapshot=True, seeds=SEEDS)
results = adapt.results_table(records, n_params=n_params)
save_table(results, "decompositions_polarity")
results[["label", "trainable_params", "adapted_params", "n", "accuracy", "low", "high", "per_seed", "final_loss", "time_s"]]

# %%
majority = stats.majority_share(task.dev_labels.tolist())
fig = accuracy_vs_params(results, baseline=results.set_index("label").loc["head only", "accuracy"], chance=0.5,
                         majority=majority, title=f"{record.name} on {DATASET}: held-out accuracy (mean of {len(SEEDS)} seeds, 95% intervals)",
                         path=FIG / "decompositions_accuracy_vs_params.png")
plt.show()

# %% [markdown]
# The paired tests (`adapt.comparisons`: a − b over the same held-out sentences seed by seed, two-level bootstrap over seeds and items):
# * controls: does each method beat the linear probe;
# * MPOP against LoRA at about the same count, and each truncation against no truncation (what compression costs);
# * OPF (static and dynamic) and MPOE against full fine-tuning, which they claim to beat; MPOBERT against full fine-tuning, which it claims to keep;
# * EarlyBERT against full fine-tuning (keeps?) and against the random ticket of the same size (the ticket matters?).

# %%
PAIRS = [(m, "head only") for m in ["full", f"LoRA r{MATCHED_R}", "MPOP, full bond", "OPF, static", "MPOBERT", "MPOE", "EarlyBERT"]]
PAIRS += [("MPOP, full bond", f"LoRA r{MATCHED_R}"), *[(f"MPOP, bond {b}", "MPOP, full bond") for b in BONDS],
          ("OPF, static", "full"), ("OPF, dynamic", "full"), ("OPF, dynamic", "OPF, static"),
          ("MPOBERT", "full"), ("MPOE", "full"), ("EarlyBERT", "full"), ("EarlyBERT", "random ticket")]
tests = adapt.comparisons(records, PAIRS)
save_table(tests, "decompositions_polarity_tests")
tests[["a", "b", "seeds", "n", "a_score", "b_score", "difference", "low", "high", "p_value"]]

# %% [markdown]
# Sixty held-out sentences per seed leave every accuracy about ±8 points wide over three seeds, and every difference about ±10; only the larger gaps decide anything.
# * **Controls.** Full fine-tuning (0.73), LoRA r6 (0.71), MPOP at full bond (0.72), OPF (0.73), MPOE (0.73) and EarlyBERT's ticket (0.73) all beat the linear probe (0.58) by 0.13–0.15 (p from 0.001 to 0.023). MPOBERT does not (0.59 [0.45, 0.76]; seeds 0.47, 0.77, 0.55): its shared central tensors start away from every layer's W, and 60 steps do not always bring it back.
# * **MPOP.** Training only the auxiliary tensors (267,648 weights) is level with LoRA at 248,832 (+0.01 [−0.07, +0.11]). Truncating to bond 64 (the MPOs then hold 80% of the projections' parameters, mean reconstruction error 0.17) costs nothing measurable (0.00 [−0.09, +0.10]; a loss of up to 0.09 is not ruled out); bond 32 (31% of the parameters, error 0.72) costs 0.11 [0.02, 0.19] (p = 0.02), to 0.61, near the probe's 0.58. No compression between the two was run.
# * **OPF and MPOE** are level with full fine-tuning (0.00 [−0.10, +0.11] and 0.00 [−0.05, +0.07]); the dynamic choice is −0.04 [−0.15, +0.08] behind it. No gain either paper reports is visible at this size, and none of 0.1 is ruled out.
# * **EarlyBERT's ticket** (a third of the heads and 40% of the FFN neurons pruned in every layer: 82% of the parameters kept) is level with full fine-tuning (−0.01 [−0.12, +0.14]) and ahead of a random ticket of the same size by +0.10 [−0.01, +0.21] (p = 0.08): suggestive, not decided here; navigate decides it (section 5).

# %% [markdown]
# ## 3. What each method built
# From seed 0's records: what MPOP compressed and how far from W it started, which matrices OPF over-parameterized and by how much (its contracted model has exactly the original modules and shapes: `tests/adapt/test_mpo_methods.py`), what MPOBERT's sharing saves and how far its shared central tensors start from each layer's W, MPOE's experts against a plain mixture of full experts, and the ticket EarlyBERT drew.

# %%
def first(label):
    return records[label][0]


built = pd.DataFrame([
    {"run": label, "params after": r.get("params_after"), "relative error at the start": r.get("rel_error", r.get("rel_error_own")),
     "note": note}
    for label, r, note in [
        *[(lbl, first(lbl), f"MPOs hold {first(lbl)['compression']:.2f} of the projections' parameters; trains "
                            f"{first(lbl)['auxiliary_params']:,} auxiliary") for lbl in runs if lbl.startswith("MPOP")],
        *[(lbl, first(lbl), f"{len(first(lbl)['chosen'])} matrices over-parameterized {first(lbl)['over_parameterization']:.1f}x: "
                            + ", ".join(n.replace("bert.encoder.layer.", "") for n in first(lbl)['chosen'])) for lbl in ("OPF, static", "OPF, dynamic")],
        ("MPOBERT", first("MPOBERT"), f"shares one central per matrix type: {first('MPOBERT')['saving']:.0%} of the unshared "
                                      f"MPO model's parameters saved; the shared centrals start at error "
                                      f"{first('MPOBERT').get('rel_error_shared', float('nan')):.2f}"),
        ("MPOE", first("MPOE"), f"{EXPERTS} experts per FFN: {first('MPOE')['mpoe_ffn_params'] / 1e6:.2f}M FFN parameters, "
                                f"a plain MoE of {EXPERTS} full experts {first('MPOE')['moe_ffn_params'] / 1e6:.2f}M, "
                                f"the dense FFNs {first('MPOE')['dense_ffn_params'] / 1e6:.2f}M"),
        *[(lbl, first(lbl), f"{first(lbl)['params_after'] / first(lbl)['params_before']:.0%} of the parameters kept; "
                            f"heads kept per layer {first(lbl)['heads_kept']}") for lbl in ("EarlyBERT", "random ticket")],
    ]])
built

# %% [markdown]
# ### The early bird
# EarlyBERT's search, seed by seed: the normalized Hamming distance between the ticket drawn at successive checkpoints (every 10 steps), and where it fell below 0.1 (the early-bird point, where the search stops).

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for s, r in zip(SEEDS, records["EarlyBERT"]):
    h = pd.DataFrame(r["hamming"])                                      # one row per checkpoint
    ax.plot(h.step, h[["hamming_heads", "hamming_neurons"]].max(axis=1), marker="o", label=f"seed {s}: early bird at step {r['early_bird_step']}")
ax.axhline(0.1, color="grey", linestyle=":")
ax.set(xlabel="search step", ylabel="mask distance to the previous checkpoint", title="EarlyBERT: when the ticket stops changing")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 4. Explore a decomposition
# Pick a matrix of the encoder, the number of tensors and a bond: the error against the parameter count, and where that bond sits on the curve.

# %% tags=["nbval-ignore-output"]
mpo_explorer(model)

# %% [markdown]
# ## 5. A second task: BIG-bench navigate
# The methods that decide the paper claims, on 700 training and 300 held-out items per seed.

# %%
bb_desc = {"kind": "classification", "dataset": BIGBENCH_SET, "seed": SEEDS[0]}
bb_task = sweeps.task_for(ENCODER, bb_desc)
BB_RUNS = ["head only", "full", f"LoRA r{MATCHED_R}", "MPOP, full bond", "OPF, static", "EarlyBERT", "random ticket"]
bb_records = sweeps.run_methods(ENCODER, bb_desc, {k: runs[k] for k in BB_RUNS}, name="decompositions_navigate",
                                snapshot=True, seeds=SEEDS)
bb_results = adapt.results_table(bb_records, n_params=n_params)
save_table(bb_results, "decompositions_navigate")
BB_PAIRS = [p for p in PAIRS if p[0] in bb_records and p[1] in bb_records]
bb_tests = adapt.comparisons(bb_records, BB_PAIRS)
save_table(bb_tests, "decompositions_navigate_tests")
print(f"majority class {stats.majority_share(bb_task.dev_labels.tolist()):.3f}")
bb_results[["label", "trainable_params", "n", "accuracy", "low", "high", "per_seed", "time_s"]]

# %%
bb_tests[["a", "b", "seeds", "n", "a_score", "b_score", "difference", "low", "high", "p_value"]]

# %% [markdown]
# Navigate is harder for this encoder: the probe is at 0.54, full fine-tuning at 0.61 [0.57, 0.65], and LoRA r6 and MPOP (0.60, 0.59) do not beat the probe significantly. **EarlyBERT's ticket reaches 0.72 [0.67, 0.75]**, ahead of full fine-tuning by +0.11 [+0.06, +0.16] and of the random ticket of the same size by +0.10 [+0.05, +0.14] (both p = 0.0002, on every seed). Two things make that more than pruning: the ticket's search trains the whole model for `STEPS` steps on the task before the ticket is cut from the *pre-trained* weights, so EarlyBERT has seen the training set twice as often as the others (the random ticket, which has not, scores like full fine-tuning: 0.62 against 0.61); and on 700 items structured pruning may regularize, as magnitude pruning did for DSEE in notebook 06. What the comparison with the random ticket isolates is the mask: the one the slimming coefficients found is worth 10 points here. MPOP is level with LoRA again (−0.02 [−0.07, +0.03]); OPF is +0.02 [−0.01, +0.05] over full fine-tuning, not significant.

# %% [markdown]
# ## 6. Wall time on 2 cores
# Each method's wall time per run (seconds, the `time_s` of its records: model preparation, search where there is one, training and scoring), the median over the three seeds (the first run of a sweep also pays for loading), and the ratio to full fine-tuning's.

# %%
times = pd.DataFrame({t: {label: statistics.median(r["time_s"] for r in recs) for label, recs in recs_.items()}
                      for t, recs_ in ((DATASET, records), (BIGBENCH_SET, bb_records))})
times["of full (polarity)"] = times[DATASET] / times.loc["full", DATASET]
save_table(times.rename_axis("label").reset_index(), "decompositions_time")
times.round(1)

# %% [markdown]
# On 2 cores at 60 steps every method costs about what full fine-tuning does (MiniLM is small, so the per-step cost is dominated by the forward and backward passes the methods share), except MPOE, whose four experts per FFN and their routing make it about 3 times as slow (112 s against 37 s, median over seeds), and EarlyBERT, which pays for its search (its smaller ticket then trains faster: the random ticket, without a search, takes about 0.6 of full fine-tuning's time). MPOP, which trains slightly more weights than LoRA r6 (267,648 against 248,832), is faster on polarity (34.6 s against 40.0 s) and slower on navigate (32.7 s against 23.3 s): every forward contracts the MPO chain into a dense matrix. `make benchmark-adapt` times the methods at 100 steps on their own (`benchmarks/bench_adapt.py --only mpobert,mpoe` for these two).

# %% [markdown]
# ## Findings

# %%
t_enc, t_bb = tests.set_index(["a", "b"]), bb_tests.set_index(["a", "b"])


def loss_of(t):                                  # a test of (method, reference) read as the reference's loss
    return {**t, "difference": -t["difference"], "low": -t["high"], "high": -t["low"]}


keeps = lambda t: stats.keeps_verdict(loss_of(t), MARGIN)                    # noqa: E731
CLAIMS = [
    ("MPOP: tuning only the auxiliary tensors matches LoRA-style lightweight tuning", "MPOP, full bond", f"LoRA r{MATCHED_R}", keeps),
    (f"MPOP: compressing by bond truncation (bond {BONDS[0]}) keeps accuracy", f"MPOP, bond {BONDS[0]}", "MPOP, full bond", keeps),
    (f"MPOP: compressing by bond truncation (bond {BONDS[1]}) keeps accuracy", f"MPOP, bond {BONDS[1]}", "MPOP, full bond", keeps),
    ("OPF: over-parameterizing during fine-tuning beats plain fine-tuning (static choice)", "OPF, static", "full", stats.beats_verdict),
    ("OPF: …with the dynamic choice", "OPF, dynamic", "full", stats.beats_verdict),
    ("MPOBERT: sharing the central tensor across layers keeps accuracy", "MPOBERT", "full", keeps),
    ("MPOE: MPO-based experts beat the dense model", "MPOE", "full", stats.beats_verdict),
    ("EarlyBERT: the structured ticket keeps full fine-tuning's accuracy", "EarlyBERT", "full", keeps),
    ("EarlyBERT: the found ticket beats a random ticket of the same size", "EarlyBERT", "random ticket", stats.beats_verdict),
]
rows = []
for where, tt in ((f"{DATASET}, {ENCODER}", t_enc), (f"{BIGBENCH_SET}, {ENCODER}", t_bb)):
    for claim, a, b, judge in CLAIMS:
        if (a, b) in tt.index:
            t = {"a": a, "b": b, **tt.loc[(a, b)].to_dict()}
            rows.append({"paper's claim": claim, "setting": where, "this workbench": paired_cell(t), "verdict": judge(t)})
findings = pd.DataFrame(rows)
save_table(findings, "decompositions_findings")
findings.style.hide(axis="index")

# %% [markdown]
# What the table allows. MPOP's lightweight tuning of the auxiliary tensors is never shown to differ from LoRA at the same count, and bond truncation shows no cost at bond 64 (a loss of up to 0.09 is not ruled out) and costs accuracy at bond 32, where the MPOs lose most of each matrix: *cannot test here* (level, within about ±0.1) and one *contradicts* for the deep cut. OPF, MPOE and MPOBERT are never shown to beat (or, for MPOBERT, to keep) full fine-tuning on these small tasks. EarlyBERT keeps full fine-tuning's accuracy and beats a random ticket of the same size on navigate (*agrees* twice), with the caveat above on its extra pass over the data. Not tested here: MPOBERT pre-trained with sharing (the paper's setting; here the sharing is imposed on a pre-trained encoder), MPOP's step-by-step squeezing with fine-tuning between steps, OPF at its paper's over-parameterization (1.1× here: five factors of MiniLM's matrices add few parameters), GLUE-sized tasks, and the same methods on SmolLM2.
