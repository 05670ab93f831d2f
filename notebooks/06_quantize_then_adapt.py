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
# # 06 · Quantize, then adapt
#
# The claim behind PreQuant, AlphaTuning and their relatives: compress a pre-trained model *first*, then adapt it to a task *afterwards* with very few trainable parameters; and the weights' outliers and spectra tell you which parameters those should be. This notebook puts the methods of `workbench.adapt` side by side at comparable budgets:
#
# | method | what trains | on what base |
# |---|---|---|
# | head only | the classification head (a linear probe) | full precision |
# | full fine-tuning | everything (the reference) | full precision |
# | LoRA (`peft`) | rank-r adapters on every projection | full precision |
# | stable-rank LoRA | adapters whose rank per module follows the stable rank of its weight, same total; time-aware: the head trains alone first and the adapters join at step `START` | full precision |
# | L1 ticket | every projection, with an L1 penalty on W − W₀; then only the largest changes are kept | full precision |
# | DSEE | low-rank adapters plus a sparse update where the rank-r SVD explains W worst; optionally the merged weights are then magnitude-pruned | full precision |
# | QLoRA-style | LoRA adapters | RTN-quantized projections |
# | PreQuant | the outlier weights of each projection, restored to full precision (gradient masks) | RTN-quantized projections |
# | AlphaTuning | only the scales α of binary-coding quantization | BCQ-quantized projections |
#
# The head (a fresh linear layer) trains under every method, at its own learning rate (`adapt.HEAD_LR`), and is counted in each method's trainable parameters. LoRA, QLoRA and PreQuant also run at several budgets (ranks `RANKS`, shares `BUDGETS`), so the plot below has curves as well as points.

# %% [markdown]
# ## Parameters
# Every run below trains for real; together they take several minutes on 2 cores, so each run is a point of a sweep (`workbench.adapt.sweeps`, on the engine of `workbench.experiments`) whose records are committed as a snapshot (`data/snapshots/adapt_*.json.gz`: each run's arguments with every default, the model and library versions, its record and its per-step losses) and read from there when all of those match. Change any parameter (or set `WORKBENCH_RECOMPUTE=1`) and the runs are recomputed and the snapshot rewritten; `make test` re-runs a sample of them from scratch and checks the numbers (`tests/test_snapshots.py`).

# %%
ENCODER = "minilm-l6"                 # all-MiniLM-L6-v2, 22.7M parameters, fp32
DATASET = "polarity"                  # 200 movie-review sentences: 140 train / 60 held out, stratified
BIGBENCH_SET = "navigate"             # BIG-bench navigate: 1,000 items, 700 train / 300 held out
STEPS = 60                            # optimizer steps per method, batch 16
BITS = [4, 2]                         # widths for the quantize-then-adapt methods
BUDGET = 0.01                         # share of the projection weights for PreQuant / the L1 ticket
BUDGETS = [0.001, 0.01, 0.05]         # PreQuant's budget sweep (at BITS[0])
R = 8                                 # LoRA rank (stable-rank LoRA matches its parameter count)
RANKS = [2, 8, 32]                    # the rank sweep of LoRA and QLoRA (at BITS[0])
START = STEPS // 3                    # time-aware stable-rank LoRA: the adapters join at this step
FINAL_SPARSITY = 0.5                  # DSEE with a sparse final weight: share of each projection pruned
SEED = 0
CAUSAL = "smollm2-135m"               # the causal setting: one ability task, trained on its other items
CAUSAL_TASK = "wb_icl_arith_1d_add"   # BIG-bench 1-digit addition (100 items), scored by lm-eval
CAUSAL_SHOTS = 5                      # in-context examples when scoring
CAUSAL_BITS = [4, 3]
CAUSAL_LIMIT = 40                     # items scored; the other CAUSAL_TRAIN items are trained on
CAUSAL_TRAIN = 60
CAUSAL_STEPS = 20

# %%
import matplotlib.pyplot as plt
import pandas as pd

from workbench import adapt, probes, stats
from workbench.adapt import sweeps
from workbench.plots import accuracy_vs_params
from workbench.report import project_dir, save_table
from workbench.widgets import adaptation_explorer

pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 160)
FIG = project_dir() / "figures"
encoder_task = {"kind": "classification", "dataset": DATASET, "seed": SEED}   # plain data: a sweep point's task
model, tokenizer, record = sweeps.load_model_for(ENCODER, encoder_task)        # load_classifier, head seeded
task = sweeps.task_for(ENCODER, encoder_task)                                 # classification_task
n_params = sum(p.numel() for p in model.parameters())
print(record.name, f"{n_params / 1e6:.1f}M parameters with the head;", f"{task.n_train} training and {len(task.dev_labels)} held-out sentences")

# %% [markdown]
# ## 1. Every method on the encoder task
# Each run starts from the same pre-trained encoder and the same freshly initialized head (seeded), trains for `STEPS` steps of 16 sentences with AdamW (the learning rate each method's function defaults to), and is scored on the 60 held-out sentences.

# %%
kw = dict(steps=STEPS, seed=SEED)
runs = {
    "head only": ("head_only", kw),
    "full": ("full_finetune", kw),
    **{f"LoRA r{r}": ("lora", dict(r=r, **kw)) for r in RANKS},
    "stable-rank LoRA": ("stable_rank_lora", dict(r=R, **kw)),
    "stable-rank LoRA, time-aware": ("stable_rank_lora", dict(r=R, start=START, **kw)),
    "L1 ticket": ("l1_ticket", dict(ticket=BUDGET, **kw)),
    "DSEE": ("dsee", dict(r=R // 2, budget=BUDGET / 2, **kw)),
    f"DSEE, {FINAL_SPARSITY:.0%} pruned": ("dsee", dict(r=R // 2, budget=BUDGET / 2, final_sparsity=FINAL_SPARSITY, **kw)),
}
for b in BITS:
    for r in (RANKS if b == BITS[0] else [R]):
        runs[f"QLoRA W{b} r{r}"] = ("qlora", dict(bits=b, r=r, **kw))
    for budget in (BUDGETS if b == BITS[0] else [BUDGET]):
        runs[f"PreQuant W{b} {budget:.1%}"] = ("prequant", dict(bits=b, budget=budget, **kw))
    runs[f"AlphaTuning W{b}"] = ("alphatuning", dict(bits=b, **kw))
records = sweeps.run_methods(ENCODER, encoder_task, runs, name="adapt_encoder", snapshot=True)   # {label: record}
results = adapt.results_table(records, n_params=n_params)
save_table(results, "adapt_encoder")
results

# %%
fig = accuracy_vs_params(results, baseline=records["head only"]["accuracy"],
                         title=f"{record.name} on {DATASET}: held-out accuracy against adapted parameters",
                         path=FIG / "adapt_accuracy_vs_params.png")
plt.show()

# %% [markdown]
# In the plot, a line joins one method's runs at several budgets (LoRA, QLoRA W4 and PreQuant W4); the table above holds every number. Read it with the noise in mind: 60 held-out sentences make one sentence 1.7 points, and the binomial standard error near 70% is about ±6 points, so only large gaps mean anything.
# * **Full fine-tuning** is the reference at 0.733. A **linear probe** on the frozen encoder (the head only) reaches 0.583.
# * **The budget matters more than the method.** LoRA goes from 0.60 at rank 2 (83k adapted parameters) to 0.70 at rank 8 and 0.733 at rank 32 (1.3M, 5.8% of the model), level with full fine-tuning. On the 4-bit RTN model **QLoRA** follows the same curve (0.60, 0.683, 0.75), and at 2 bits rank 8 still reaches 0.683: on this task the adapters absorb the quantization error.
# * **PreQuant**'s curve at 4 bits: 0.55 with 0.1% of the weights (10.6k outliers restored and trained), 0.617 with 1%, 0.717 with 5% (531k). At similar parameter counts it lands within noise of LoRA (1%: 0.617 against LoRA r2's 0.60; 5%: 0.717 against r8's 0.70). At 2 bits its 1% reaches only 0.433 and its training loss stays near 0.6: training the outliers does not repair a model whose other weights are off by 52% (relative weight error), where QLoRA's adapters do.
# * **AlphaTuning** trains only the scales of binary-coding quantization: 0.70 at 4 bits and 0.633 at 2 bits, where it has half as many scales (one per plane and group).
# * **The L1 ticket**: under the penalty 45.5% of the projection weights moved at all, and the largest 1% of the changes carry 13.6% of the total change. Keeping only those gives 0.567, against 0.617 with every change kept. At this budget the change is not concentrated enough for a 1% ticket.
# * **Stable-rank LoRA** (LoRA r8's parameter count, ranks following the stable rank) reaches 0.65 against uniform LoRA's 0.70. **Time-aware**, with the adapters joining after 20 head-only steps, it reaches 0.60: its adapters get 40 steps instead of 60 and its loss ends at 0.19 rather than 0.002, so at this step budget the warm-up costs more than it gives.
# * **DSEE** reaches 0.617; magnitude-pruning half of every merged projection afterwards gives 0.70. That gap is within the noise, but pruning half the weights did not hurt here.
# * The `time_s` column is each run's wall time when the snapshot was made, on 2 cores, quantization and scoring included. Tests ran on the same cores for part of that time, so its spread (12 s to 240 s for 60 steps) says more about the machine than about the methods; `make benchmark-adapt` gives clean timings.

# %% [markdown]
# ## 2. What the methods chose
# PreQuant spends its budget on the largest weights of each projection (relative to the module's median), stable-rank LoRA gives each module a rank proportional to the stable rank of its weight. Next to each module, the statistics the probes of notebooks 02 and 03 compute:

# %%
targets = adapt.TARGETS
wstats = probes.weight_stats(model, pattern=targets, progress=False)[["module", "component", "kurtosis", "max_over_std"]]
spec = probes.spectra(model, pattern=targets, progress=False)[["module", "stable_rank"]]
chosen = wstats.merge(spec, on="module")
pq = records[f"PreQuant W{BITS[0]} {BUDGET:.1%}"]
chosen["prequant weights"] = chosen.module.map(pq["chosen"]).fillna(0).astype(int)
chosen["stable-rank LoRA rank"] = chosen.module.map(records["stable-rank LoRA"]["ranks"]).fillna(0).astype(int)
save_table(chosen, "adapt_chosen_modules")
chosen.groupby("component", sort=False)[["kurtosis", "max_over_std", "stable_rank", "prequant weights",
                                         "stable-rank LoRA rank"]].mean()

# %%
chosen[["kurtosis", "max_over_std", "stable_rank", "prequant weights", "stable-rank LoRA rank"]].corr(method="spearman").round(2)

# %% [markdown]
# The two criteria pick different modules. PreQuant's outliers sit mostly in the FFN: about 7,300 weights per `down` projection (kurtosis 394 on average) and 5,300 per `up`, against 700–2,200 per attention projection. Across modules, the number it trains follows kurtosis (Spearman 0.81). Stable-rank LoRA gives the higher ranks to the attention projections, `v` and `o` (stable rank about 50), and the lower ones to the FFN. Its ranks follow the stable rank by construction (0.99) and go against PreQuant's choice (−0.45).

# %% [markdown]
# ## 3. A BIG-bench task: navigate
# The same comparison on a second, larger labelled set from the assets: BIG-bench `navigate` (a sequence of steps and turns; does it end where it started?), 700 training and 300 held-out items, so one item is 0.33 points and the standard error near 60% about ±2.8 points. A subset of the methods, at the default budgets. (BIG-bench `sports_understanding`, the other binary set in `data.CLASSIFICATION_SETS`, is beyond this encoder: head-only and full fine-tuning both stay near chance on it.)

# %%
bb_task_desc = {"kind": "classification", "dataset": BIGBENCH_SET, "seed": SEED}
bb_task = sweeps.task_for(ENCODER, bb_task_desc)
bb_runs = {
    "head only": ("head_only", kw),
    "full": ("full_finetune", kw),
    f"LoRA r{R}": ("lora", dict(r=R, **kw)),
    f"QLoRA W{BITS[0]} r{R}": ("qlora", dict(bits=BITS[0], r=R, **kw)),
    f"PreQuant W{BITS[0]} {BUDGET:.1%}": ("prequant", dict(bits=BITS[0], budget=BUDGET, **kw)),
    f"AlphaTuning W{BITS[0]}": ("alphatuning", dict(bits=BITS[0], **kw)),
}
bb_records = sweeps.run_methods(ENCODER, bb_task_desc, bb_runs, name="adapt_navigate", snapshot=True)
bb_results = adapt.results_table(bb_records, n_params=n_params)
save_table(bb_results, "adapt_navigate")
print(f"{bb_task.n_train} training and {len(bb_task.dev_labels)} held-out items")
bb_results

# %% [markdown]
# Here one item is 0.33 points and the standard error about ±2.8, so gaps of 6 points or more are real.
# * The probe reaches 0.553 and **full fine-tuning** 0.627. At lr 5e-5, 60 steps are 1.4 passes over the 700 items, and its mean training loss over the last 10 steps is still 0.64 (0.70 at the start): the step budget, not the method, holds it back.
# * **LoRA** r8 reaches 0.69 and **QLoRA** on the 4-bit model 0.667 (last-10-step losses 0.60 and 0.61): at their higher learning rate the adapters get further in 60 steps than full fine-tuning does.
# * **PreQuant** (1% of the weights) reaches 0.577, near the probe, and **AlphaTuning** 0.50, chance: its loss never leaves 0.70. On this task, unlike on polarity, training only the outliers or only the scales does not adapt the 4-bit encoder within 60 steps.

# %% [markdown]
# ## 4. Explore a run
# Pick a method, a bit width and a budget: the run's training curve (a dashed line where the time-aware adapters join) and what it trained (per-module weights for PreQuant, ranks for stable-rank LoRA, the ticket's or the pruning's numbers otherwise). Live in JupyterLab; below, the first run.

# %% tags=["nbval-ignore-output"]
adaptation_explorer(records, n_params=n_params)

# %% [markdown]
# ## 5. The causal setting: win back an ability of a quantized LM
# The same functions on the bundled causal model: `CAUSAL_TASK` through the abilities machinery of notebook 04 (`abilities.ability_task`). The first `CAUSAL_LIMIT` items are scored by lm-eval with `CAUSAL_SHOTS` in-context examples; the other `CAUSAL_TRAIN` items are the training set, prompt and answer in the task's own format (no examples in front), loss on the answer tokens. The model is RTN-quantized to each of `CAUSAL_BITS` first; the LM head is tied to the embeddings and stays frozen, so these methods train nothing else. LoRA on the unquantized model is the reference for what this much training can do; the full-precision variants of section 1 (full fine-tuning, stable-rank LoRA, the L1 ticket, DSEE) follow, from their own snapshot.

# %%
lm_task = {"kind": "ability", "name": CAUSAL_TASK, "limit": CAUSAL_LIMIT, "n_train": CAUSAL_TRAIN, "shots": CAUSAL_SHOTS}
lm, lm_tokenizer, lm_record = sweeps.load_model_for(CAUSAL, lm_task)          # load_model
ckw = dict(steps=CAUSAL_STEPS, seed=SEED)
causal_runs = {"unquantized": ("unadapted", {}), f"LoRA r{R}": ("lora", dict(r=R, **ckw))}
for b in CAUSAL_BITS:
    causal_runs[f"RTN W{b}"] = ("unadapted", dict(bits=b))
    causal_runs[f"QLoRA W{b}"] = ("qlora", dict(bits=b, r=R, **ckw))
    causal_runs[f"PreQuant W{b}"] = ("prequant", dict(bits=b, budget=BUDGET / 10, **ckw))
    causal_runs[f"AlphaTuning W{b}"] = ("alphatuning", dict(bits=b, **ckw))
causal_runs[f"QLoRA W{CAUSAL_BITS[-1]}, {3 * CAUSAL_STEPS} steps"] = ("qlora", dict(bits=CAUSAL_BITS[-1], r=R, steps=3 * CAUSAL_STEPS, seed=SEED))
causal = sweeps.run_methods(CAUSAL, lm_task, causal_runs, name="adapt_causal", snapshot=True)
causal_fp_runs = {                                            # the full-precision variants, as on the encoder
    "full": ("full_finetune", ckw),
    f"stable-rank LoRA r{R}": ("stable_rank_lora", dict(r=R, **ckw)),
    "L1 ticket": ("l1_ticket", dict(ticket=BUDGET, **ckw)),
    "DSEE": ("dsee", dict(r=R // 2, budget=BUDGET / 2, **ckw)),
}
causal.update(sweeps.run_methods(CAUSAL, lm_task, causal_fp_runs, name="adapt_causal_fp", snapshot=True))
causal_results = adapt.results_table(causal, n_params=lm_record.n_params)
ci = [stats.wilson_interval(round(a * CAUSAL_LIMIT), CAUSAL_LIMIT)[1:] for a in causal_results.accuracy]
causal_results.insert(causal_results.columns.get_loc("accuracy") + 1, "low", [lo for lo, _ in ci])
causal_results.insert(causal_results.columns.get_loc("low") + 1, "high", [hi for _, hi in ci])
save_table(causal_results, "adapt_causal")
causal_results

# %% [markdown]
# **At 4 bits fine-tuning wins the ability back; at 3 bits, with this budget, it does not.** With 40 scored items one item is 2.5 points, and the Wilson 95% intervals (`low`, `high`) are ±10–15 points wide: one seed per run, so only the large gaps are findings (the adaptation comparisons over seeds with per-item paired tests are still to come).
# * Unquantized, SmolLM2-135M answers 0.55 of the 1-digit additions with 5 examples in context. RTN at 4 bits drops it to 0.175 and at 3 bits to 0.075, both intervals well below the unquantized one (notebook 04 measures the same drop on all 300 arithmetic items).
# * 20 steps of LoRA on the 60 other additions teach the unquantized model the task nearly completely (0.925): the reference for what this training can do. The other full-precision methods do too: full fine-tuning 0.90, stable-rank LoRA 0.925, DSEE 0.975. The L1 run reaches 0.925 with changes on 30% of the projection weights; its 1% ticket carries 12% of the change and scores 0.60, no better than the untrained model.
# * **At 4 bits**, **QLoRA** with the same 2.4M adapter parameters reaches 0.80: more than the unquantized model had, though below LoRA on full precision. **PreQuant**'s 0.1% of outliers (106k weights) stays at 0.175; its training loss only falls from 1.78 to 1.12 (mean of the last 5 steps). **AlphaTuning** starts from a worse binary-coding model (loss 2.47), trains to 0.69 and scores 0.00.
# * **At 3 bits** (relative weight error 22%) nothing recovers in 20 steps: QLoRA 0.125, PreQuant 0.10, AlphaTuning 0.00, against RTN's 0.075, all within one interval of each other. Given three times the steps, QLoRA's training loss falls to 0.001 but it scores 0.275: it has learned the 60 training additions far better than addition.
# * The adapted runs took 35–90 s each on 2 cores (`time_s`), scoring included: the snapshots hold them and `make test` re-runs the RTN W3 and stable-rank LoRA rows.

# %% [markdown]
# ## What these small models and data can and cannot say
# * **Noise.** 60 held-out polarity sentences and `CAUSAL_LIMIT` scored additions put a standard error of 6–8 points on those accuracies; navigate's 300 items about 3. The rankings above are suggestions; the large gaps are the findings.
# * **Budgets.** Every method gets the same number of steps and its own default learning rate, not a tuned one. A method that needs more steps (full fine-tuning at 5e-5, PreQuant's sparse updates, the L1 ticket's shrinking, the time-aware warm-up) is at a disadvantage at 60. One seed, one split.
# * **Time-aware start.** The calibration paper picks when the lightweight fine-tuning starts from the training dynamics; here `start` is a step count given by hand.
# * **Models.** MiniLM-L6 is a 22.7M sentence-embedding model and SmolLM2-135M's full precision is a dequantized 4-bit checkpoint (notebook 00). The papers work with BERT-base/large, RoBERTa and OPT/LLaMA on GLUE and generation tasks.
# * **Run it at scale.** Point the parameters at a hub model and a standard set. The functions are the same:
#   ```python
#   model, tokenizer, record = load_classifier("bert-base-uncased")             # or roberta-large, ...
#   from datasets import load_dataset                                         # GLUE SST-2 from the hub
#   sst2 = load_dataset("glue", "sst2")["train"].to_pandas().rename(columns={"sentence": "text"})
#   task = classification_task(tokenizer, sst2[["text", "label"]], dev_fraction=0.1)
#   tuned, rec = adapt.lora(model, task, r=8, steps=500)                      # each method, called directly
#   ```
#   Then raise `STEPS` (and set `BIGBENCH_SET` to another set, or drop that section). For the causal setting, set `CAUSAL = "meta-llama/Llama-2-7b-hf"` and `CAUSAL_TASK` to any lm-eval task whose documents you can load (e.g. `"arc_easy"`, `"gsm8k"`).
