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
# # 04 · Emergent abilities under quantization
#
# Liu et al., *Do Emergent Abilities Exist in Quantized Large Language Models: An Empirical Study* (LREC-COLING 2024), asked whether the abilities that appear only in large models survive low-bit weights: **in-context learning** (ICL), **chain-of-thought reasoning** (CoT) and **instruction following** (IF). Their answer, on LLaMA models of 7B–65B parameters: 4-bit weights keep all three, 2-bit weights lose them, and the loss can be partly won back by fine-tuning the quantized model.
#
# This notebook runs the same study with the same machinery on the bundled SmolLM2-135M-Instruct, sized so that its answers carry a conclusion:
# 1. the abilities at 16/8/4/3/2 bits with RTN and GPTQ, every item of each task, each score with its 95% interval and the majority-class baseline, each quantized model tested against the base on the same items;
# 2. whether a 135M model has any chain of thought to lose;
# 3. example generations side by side (widget);
# 4. LoRA fine-tuning of the 3-bit model over three seeds, with the same LoRA on the unquantized model as the control;
# 5. Gemma-3-270M as a second model;
# 6. weights, activations and the KV cache rounded together (W8A8KV8, W4A8, W4A8KV4, W16KV4), as QLLM-Eval does;
# 7. a findings table: the paper's claims against what this model shows.
#
# Every score comes from **lm-eval** with the model object handed to it (`HFLM(pretrained=model)`): lm-eval builds the prompts, batches generation with the KV cache, extracts the answers and scores them. The tasks are built offline from pinned PyPI packages (`workbench.abilities.tasks.build_ability_tasks`; all of them in `abilities.task_table()`). ICL is BIG-bench's 1-digit addition, subtraction and multiplication (100 items each) at k = 0, 1, 3, 5 shots, each k > 0 over three draws of exemplars (a k-shot score depends on which examples were drawn); IF is the 124 IFEval-style prompts written for this project, scored by lm-eval's IFEval checkers, generating up to the task's own 256 tokens.
#
# *Caveat:* SmolLM2's "16-bit" baseline here is a dequantized 4-bit GGUF checkpoint (see notebook 00), so 8- and 4-bit re-quantization start from weights already on a 4-bit grid.

# %% [markdown]
# ## Parameters
# The sweeps below take about an hour on 2 CPU cores, so their results are committed with the repository (`data/snapshots/`, with the exact arguments and versions that produced them and every scored item) and shown from there when every argument matches. Each model is one point of a sweep (`workbench.experiments`). Change any parameter (or set `WORKBENCH_RECOMPUTE=1`, as `make reproduce` does) and the cell computes the points that do not match, each stored as it finishes, and rewrites the snapshot. `make test` re-scores a random sample of every snapshot's items and windows from scratch and checks them against the records (`tests/test_snapshots.py`).

# %%
MODEL = "smollm2-135m"
BITS = [8, 4, 3, 2]                        # RTN
GPTQ_BITS = [4, 3]                         # GPTQ (act-order), where RTN and GPTQ can differ
SHOTS = [0, 1, 3, 5]                       # ICL shot counts
FEWSHOT_SEEDS = [0, 1, 2]                  # exemplar draws for each k > 0
LIMIT = None                               # items per task: None = every item
MAX_GEN_TOKS = None                        # None = each task's own (8 tokens for arithmetic, 256 for IF and CoT)
SUITES = {"icl": ["wb_icl_arith_1d_add", "wb_icl_arith_1d_sub", "wb_icl_arith_1d_mul"],
          "if": ["wb_ifeval"]}
COT_SUITES = {"cot": ["wb_cot_bbh_sports_understanding", "wb_direct_bbh_sports_understanding"]}
COT_LIMIT = 200                            # items of the CoT probe (base model only, see section 2)
PERPLEXITY = ["lee", "botchan"]            # whole held-out splits: news and prose
CALIBRATION = {"corpus": "lee", "n_samples": 32, "seqlen": 512, "seed": 0}    # GPTQ
LORA_SEEDS = [0, 1, 2]
LORA = [{"task": {"kind": "corpus", "corpus": "lee", "n_train": 40, "seqlen": 128, "seed": 0},   # 40 windows of 128 tokens
         "args": {"r": 8, "steps": 10, "lr": 1e-3, "batch_size": 4, "seed": s}}                  # workbench.adapt.lora
        for s in LORA_SEEDS]
LORA_ON = ["base", "RTN W3"]               # the unquantized model is the control
LORA_SHOTS = [0, 5]                        # the tuned models' ICL shot counts (k = 1, 3 would add 60% to their ICL time)
LORA_SUITES = {"icl": SUITES["icl"]}       # what the tuned models are scored on (see section 4)
MARGIN = 0.05                              # a loss below this counts as "kept" in the findings table

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd

from workbench import abilities, stats
from workbench.models import load_model
from workbench.quant import precision_spec
from workbench.plots import abilities_vs_bits
from workbench.report import interval_cells, project_dir, save_table
from workbench.widgets import generations_explorer

pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 80)
FIG = project_dir() / "figures"
model, tokenizer, record = load_model(MODEL)
print(record.name, f"{record.n_params / 1e6:.1f}M parameters;", record.caveat or "")

# %% [markdown]
# ## The tasks
# Every local task with the number of items it holds; the sweep scores all of them (`LIMIT = None`).

# %%
tasks = abilities.task_table()
tasks[tasks.task.isin(sum(SUITES.values(), []) + sum(COT_SUITES.values(), []))]

# %% [markdown]
# ## 1. The bits sweep
# Each model is quantized (group size 128; GPTQ with act-order and 32 × 512 calibration tokens of the news corpus) and scored on every item of every task; perplexity is over the whole held-out splits of the news (lee) and prose (botchan) corpora.

# %%
specs = {**abilities.bits_sweep_specs(BITS, ["rtn"]), **abilities.bits_sweep_specs(GPTQ_BITS, ["gptq"])}
t = time.perf_counter()
sweep = abilities.ability_sweep(model, tokenizer, record, specs, suites=SUITES, shots=SHOTS, limit=LIMIT,
                                calibration=CALIBRATION, max_gen_toks=MAX_GEN_TOKS, fewshot_seeds=FEWSHOT_SEEDS,
                                perplexity_corpora=PERPLEXITY, name="abilities_bits_sweep", snapshot=True)
print(f"{len(specs)} models, {time.perf_counter() - t:.0f} s")
intervals = abilities.ability_intervals(sweep)
save_table(intervals, "abilities_bits_sweep")
interval_cells(intervals)

# %% [markdown]
# One row per model, each cell the estimate and its 95% interval over items (Wilson for 0/1 items; ICL items are first averaged over their three exemplar draws, then bootstrapped over items; perplexity bootstrapped over 512-token windows). `icl k=…` pools the three arithmetic tasks (300 items); `if strict`/`if loose` are IFEval's prompt-level accuracies (every instruction of a prompt followed). The baselines: always giving a task's most common answer (`majority`), per column:

# %%
intervals[intervals.label == "base"].set_index("column")[["n", "majority"]].T

# %%
fig = abilities_vs_bits(intervals, ["icl k=0", "icl k=1", "icl k=5", "if strict", "if loose"],
                        title=f"{record.name}: abilities against bits (95% intervals; dotted: majority class)",
                        path=FIG / "abilities_vs_bits.png")
plt.show()

# %% [markdown]
# **Does each quantized model score differently from the base on the same items?** Paired over items (each ICL item averaged over its draws): the difference base − quantized, its 95% interval and the p-value (exact McNemar for IF's 0/1 items, the paired bootstrap for the averaged ICL items).

# %%
columns = ["icl k=1", "icl k=3", "icl k=5", "if strict", "if loose"]
paired = pd.DataFrame([abilities.paired_items(sweep.samples, "base", label, col)
                       for label in specs if label != "base" for col in columns])
save_table(paired, "abilities_bits_sweep_paired")
paired.pivot(index="b", columns="column", values="difference").loc[[k for k in specs if k != "base"], columns].round(3)

# %%
paired.assign(cell=[f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] p={p:.2g}" for d, lo, hi, p in
                    zip(paired.difference, paired.low, paired.high, paired.p_value)]
              ).pivot(index="b", columns="column", values="cell").loc[[k for k in specs if k != "base"], columns]

# %% [markdown]
# ## 2. Is there a chain of thought to lose?
# A model can only lose an ability it has. The CoT probe scores the **base** model on BIG-bench Hard's sports understanding (yes/no) with lm-eval's three CoT exemplars and with the same exemplars cut to their answers, on `COT_LIMIT` items, generating up to 256 tokens.

# %%
t = time.perf_counter()
cot = abilities.ability_sweep(model, tokenizer, record, {"base": None}, suites=COT_SUITES, shots=[], limit=COT_LIMIT,
                              max_gen_toks=MAX_GEN_TOKS, perplexity_corpora=[], name="abilities_cot_probe",
                              snapshot=True)
print(f"{time.perf_counter() - t:.0f} s")
cot_iv = abilities.ability_intervals(cot)
save_table(cot_iv, "abilities_cot_probe")
cot_iv[["column", "n", "estimate", "low", "high", "majority"]]

# %% [markdown]
# Where both intervals reach down to the majority-class line, the base model's yes/no answers are no better than always answering the more common label: this 135M model shows no chain of thought here, so whether quantization keeps CoT **cannot be tested** on it. (A 7B hub model with `abilities.HUB_SUITES` can.)

# %% [markdown]
# ## 3. Generations side by side
# Pick an ability, a task, a method and a bit width: the first items, with what the unquantized and the quantized model answered (✓ right, ✗ wrong; for IF, every instruction followed).

# %% tags=["nbval-ignore-output"]
generations_explorer(sweep.samples)

# %%
# the same comparison as a table: the first two IFEval prompts, base against RTN W4 and W3
s = sweep.samples
pick = s[(s.task == "wb_ifeval") & (s.doc_id < 2) & s.label.isin(["base", "RTN W4", "RTN W3"])]
pick.assign(prompt=pick.prompt.str.extract(r"user\n(.*?)<\|im_end", expand=False).str[:90],
            response=pick.response.str[:160])[["label", "doc_id", "prompt", "response", "score"]]

# %% [markdown]
# ## 4. Winning it back: LoRA on the quantized model, against LoRA on the unquantized one
# LoRA adapters (`workbench.adapt.lora`: rank 8 on every attention and FFN projection, through `peft`) are trained for 10 steps of next-token loss on 40 windows of the *calibration* split of the news corpus (`finetune.corpus_task`); the quantized weights stay frozen; three seeds (initialisation and batch order). The same LoRA on the unquantized model is the control: training on news text lowers news perplexity whether or not the model was quantized, so only the gap between the two says what fine-tuning won back from quantization. Perplexity on the prose corpus (botchan) is out of the training domain. The tuned models are scored on every ICL item as in section 1, at k = 0 and 5 shots (`LORA_SHOTS`), and on both perplexity corpora. Instruction following is left out of these runs (`LORA_SUITES`): ten steps of next-token loss on news text are not instruction tuning (the paper tuned on instruction data), and each IFEval pass costs as much as the rest of a point.

# %%
t = time.perf_counter()
tuned = abilities.ability_sweep(model, tokenizer, record, {k: specs[k] for k in LORA_ON}, suites=LORA_SUITES, shots=LORA_SHOTS,
                                limit=LIMIT, calibration=CALIBRATION, lora=LORA, max_gen_toks=MAX_GEN_TOKS,
                                fewshot_seeds=FEWSHOT_SEEDS, perplexity_corpora=PERPLEXITY, name="abilities_lora",
                                snapshot=True)
print(f"{len(LORA_ON) * len(LORA)} models fine-tuned and scored, {time.perf_counter() - t:.0f} s")
tuned_iv = abilities.ability_intervals(tuned)
both = pd.concat([intervals[intervals.label.isin(LORA_ON)], tuned_iv], ignore_index=True)
save_table(both, "abilities_lora")
interval_cells(both)

# %% [markdown]
# Over the seeds: the mean of each column over the three LoRA runs, its spread (min–max), and what the quantized model won back relative to the control, `recovery` = (after − before) / (base − before) per seed, where *after* is RTN W3 + LoRA and the base is **the unquantized model with the same LoRA** (log scale for perplexity).

# %%
wide = both.pivot(index="label", columns="column", values="estimate")
cols = [c for c in ["icl k=5", "if strict", "if loose", "perplexity lee", "perplexity botchan"] if c in tuned_iv.column.values]
rec = pd.DataFrame([abilities.recovery(wide[cols].reset_index(), f"base + LoRA s{s}", "RTN W3", f"RTN W3 + LoRA s{s}")
                    for s in LORA_SEEDS],
                   index=pd.Index(LORA_SEEDS, name="seed"))
summary = pd.DataFrame({"mean": rec.mean(), "min": rec.min(), "max": rec.max()})
save_table(summary.reset_index(names="column"), "abilities_lora_recovery")
print("trainable parameters:", int(tuned.scores.trainable_params.dropna().iloc[0]),
      f"({tuned.scores.trainable_params.dropna().iloc[0] / record.n_params:.1%} of the model)")
summary

# %% [markdown]
# Paired over items, seed by seed: does RTN W3 + LoRA score differently from RTN W3 (what LoRA won), and from the control (what is still lost)?

# %%
lora_tests = pd.DataFrame([
    {"seed": s, "comparison": comp, **abilities.paired_items(pd.concat([sweep.samples, tuned.samples]), a, b, col)}
    for s in LORA_SEEDS for comp, a, b in (("won: W3+LoRA − W3", f"RTN W3 + LoRA s{s}", "RTN W3"),
                                           ("left: control − W3+LoRA", f"base + LoRA s{s}", f"RTN W3 + LoRA s{s}"))
    for col in ["icl k=5"]])
save_table(lora_tests, "abilities_lora_paired")
lora_tests[["seed", "comparison", "column", "n", "difference", "low", "high", "p_value", "test"]]

# %% [markdown]
# ## 5. A second model: Gemma-3-270M
# Is the loss of in-context learning at 4 bits a property of a 135M model? The same arithmetic items, exemplar draws and quantization (RTN, groups of 128) on Gemma-3-270M (`SCALE_MODEL`; its bundled checkpoint is a dequantized Q4_K_M GGUF too), at 0 and 5 shots. Both models answer the *same* items, so the difference of their losses (base − quantized) is paired item by item.

# %%
SCALE_MODEL = "gemma3-270m"
SCALE_BITS = [8, 4, 3]
SCALE_SHOTS = [0, 5]

gemma, gemma_tokenizer, gemma_record = load_model(SCALE_MODEL)
scale_specs = abilities.bits_sweep_specs(SCALE_BITS, ["rtn"])
scale = abilities.ability_sweep(gemma, gemma_tokenizer, gemma_record, scale_specs, suites={"icl": SUITES["icl"]},
                                shots=SCALE_SHOTS, limit=LIMIT, max_gen_toks=MAX_GEN_TOKS, fewshot_seeds=FEWSHOT_SEEDS,
                                perplexity_corpora=[], name="abilities_scale_gemma", snapshot=True)
del gemma
scale_intervals = abilities.ability_intervals(scale)
save_table(scale_intervals, "abilities_scale_gemma")
interval_cells(scale_intervals)

# %%
SCALE_COLUMNS = [f"icl k={k}" for k in SCALE_SHOTS]


def item_losses(samples, quantized, column):
    """base − quantized per item of `column` (averaged over exemplar draws), indexed by (task, doc_id)."""
    items = abilities.item_scores(samples)
    items = items[items.column == column]
    base, q = (items[items.label == x].set_index(["task", "doc_id"]).score for x in ("base", quantized))
    return (base - q).sort_index()


scale_rows = []
for label in scale_specs:
    if label == "base":
        continue
    for col in SCALE_COLUMNS:
        g, s_ = item_losses(scale.samples, label, col), item_losses(sweep.samples, label, col)
        t_g = abilities.paired_items(scale.samples, "base", label, col)
        cmp_ = stats.paired_bootstrap(g.to_numpy(), s_.loc[g.index].to_numpy())
        scale_rows.append({"model": label, "column": col, "n": len(g), "Gemma base": t_g["a_score"], "Gemma quantized": t_g["b_score"],
                           "Gemma loss": t_g["difference"], "low": t_g["low"], "high": t_g["high"], "p_value": t_g["p_value"],
                           "SmolLM2 loss": s_.mean(), "Gemma − SmolLM2 loss": cmp_["difference"], "diff low": cmp_["low"],
                           "diff high": cmp_["high"], "diff p": cmp_["p_value"]})
scale_tests = pd.DataFrame(scale_rows)
save_table(scale_tests, "abilities_scale_gemma_paired")
scale_tests

# %% [markdown]
# **Gemma-3-270M has no arithmetic ability to lose here.** Its base model answers 13% of the 300 items at 0 shots and 14% [11%, 17%] at 5 shots, against a majority-class baseline of 13% (always the most common answer); SmolLM2-135M reaches 43% [38%, 48%] at 5 shots. Its answers are fluent and wrong (asked "What is 2 plus 3?" after five solved examples it answers "10"), so the gap is in the model (a 4-bit GGUF checkpoint of it), not in how lm-eval reads its answers. Quantization still moves its scores: RTN W4 takes 5-shot from 0.14 to 0.08 (−0.06 [−0.10, −0.02], p = 0.002) and W3 to 0.05, *below* the majority baseline: worse than always giving the most common answer. "Gemma loses less than SmolLM2" is true of the numbers (−0.23 [−0.29, −0.18] at W4) and meaningless as a finding: a model at the floor has nothing to lose. Both findings rows for Gemma read *cannot test here*. A scale axis for abilities needs a second model that has the ability; the causal models in this environment's assets are these two.

# %% [markdown]
# ## 6. Weights × activations × KV cache
# The paper quantizes weights only; a deployment also rounds every linear layer's input and the KV cache that generation reads. The same arithmetic items and exemplar draws, at 0 and 5 shots, for SmolLM2 with weights at 8 or 4 bits (RTN, groups of 128), every linear input rounded per token at run time, and keys and values rounded per token and head inside attention, so every generated answer is produced from a rounded cache (`workbench.quant.precision_spec`; notebook 01 section 10 has the perplexity of the whole grid). The unquantized model and weight-only W4 are section 1's (the same items and draws), so every comparison is paired item by item.

# %%
WAKV = ["W8A8KV8", "W4A8", "W4A8KV4", "W16KV4"]
WAKV_SHOTS = [0, 5]
wakv_specs = {x: precision_spec(x) for x in WAKV}
wakv = abilities.ability_sweep(model, tokenizer, record, wakv_specs, suites={"icl": SUITES["icl"]}, shots=WAKV_SHOTS,
                               limit=LIMIT, max_gen_toks=MAX_GEN_TOKS, fewshot_seeds=FEWSHOT_SEEDS,
                               perplexity_corpora=["lee"], name="abilities_wakv", snapshot=True)


def section_one(frame):
    """Section 1's unquantized and RTN W4 rows, W4 relabelled as here."""
    part = frame[frame.label.isin(["base", "RTN W4"])]
    return part.assign(label=part.label.replace({"RTN W4": "W4"}))


old_samples = section_one(sweep.samples)
wakv_samples = pd.concat([old_samples[old_samples.task.isin(SUITES["icl"]) & old_samples.shots.isin(WAKV_SHOTS)],
                          wakv.samples], ignore_index=True)
old_windows = section_one(sweep.windows)
wakv_intervals = abilities.ability_intervals(abilities.AbilityResult(
    wakv.scores, wakv_samples, pd.concat([old_windows[old_windows.corpus == "lee"], wakv.windows], ignore_index=True)))
save_table(wakv_intervals, "abilities_wakv")
interval_cells(wakv_intervals)

# %%
WAKV_COLUMNS = [f"icl k={k}" for k in WAKV_SHOTS]
wakv_paired = pd.DataFrame([abilities.paired_items(wakv_samples, a, b, col)
                            for a, b in [("base", x) for x in ["W4", *WAKV]] + [("W4", "W4A8"), ("W4A8", "W4A8KV4")]
                            for col in WAKV_COLUMNS])
save_table(wakv_paired, "abilities_wakv_paired")
wakv_paired[["a", "b", "column", "n", "a_score", "b_score", "difference", "low", "high", "p_value", "test"]]

# %% [markdown]
# **Rounding the KV cache costs in-context learning far more than it costs perplexity.** A 4-bit KV cache alone (W16KV4, one range per token and head) raises perplexity by 10% (notebook 01 section 10) but halves 5-shot arithmetic: 0.43 → 0.23 (−0.20 [−0.24, −0.17], p = 0.0002), while the 0-shot score, already at the floor (0.09), does not move. A 5-shot prompt is answered by attending to exemplars hundreds of tokens back, and those are exactly the cache entries that get rounded. Even W8A8KV8, a 3% perplexity cost, loses 0.06 [0.04, 0.09] of 5-shot accuracy. On top of 4-bit weights, which already take 5-shot ICL to 0.14, 8-bit activations add no measurable loss (0.01 [−0.00, +0.02], p = 0.17), and a 4-bit cache takes it to 0.09, below the majority-class baseline (0.13). Both findings rows read *contradicts*. The exemplar-to-answer distance, not the bit width alone, may be what matters here; this notebook does not vary it.

# %% [markdown]
# ### KIVI's cache on the same items
# Notebook 01 section 10 found that KIVI (each key channel rounded over groups of 32 tokens, values per token, the newest tokens in full precision until their chunk is complete) makes a 2-bit cache cost 12.5% of perplexity. KIVI's default window of 128 tokens is longer than these 5-shot prompts (98 to 103 tokens), so here it would round nothing at all. So the window is 32 tokens, one group, the smallest KIVI allows: the exemplars that the answer reads are rounded, and only the tokens since the last complete chunk of 32 are not. Each KIVI setting is paired with per-token keys (groups of 32 channels) with the same window, which separates KIVI's per-channel keys from its window.

# %%
KIVI_R32 = {"key_axis": "channel", "token_group": 32, "residual": 32}     # KIVI with a one-group window
kivi_specs = {}
for b in (4, 2):
    kivi_specs[f"W16KV{b} g32 R32"] = precision_spec(f"W16KV{b}", kv_group_size=32, kv_options={"residual": 32})
    kivi_specs[f"W16KV{b} KIVI R32"] = precision_spec(f"W16KV{b}", kv_group_size=32, kv_options=KIVI_R32)
kivi = abilities.ability_sweep(model, tokenizer, record, kivi_specs, suites={"icl": SUITES["icl"]}, shots=WAKV_SHOTS,
                               limit=LIMIT, max_gen_toks=MAX_GEN_TOKS, fewshot_seeds=FEWSHOT_SEEDS,
                               perplexity_corpora=["lee"], name="abilities_kivi", snapshot=True)
kivi_samples = pd.concat([wakv_samples, kivi.samples], ignore_index=True)
kivi_intervals = abilities.ability_intervals(abilities.AbilityResult(
    kivi.scores, pd.concat([wakv_samples[wakv_samples.label == "base"], kivi.samples], ignore_index=True),
    pd.concat([old_windows[(old_windows.corpus == "lee") & (old_windows.label == "base")], kivi.windows],
              ignore_index=True)))
save_table(kivi_intervals, "abilities_kivi")
interval_cells(kivi_intervals)

# %%
KIVI_PAIRS = ([("base", x) for x in ["W16KV4", *kivi_specs]]
              + [(f"W16KV{b} KIVI R32", f"W16KV{b} g32 R32") for b in (4, 2)])     # + : KIVI's keys help
kivi_paired = pd.DataFrame([abilities.paired_items(kivi_samples, a, b, col) for a, b in KIVI_PAIRS
                            for col in WAKV_COLUMNS])
save_table(kivi_paired, "abilities_kivi_paired")
kivi_paired[["a", "b", "column", "n", "a_score", "b_score", "difference", "low", "high", "p_value", "test"]]

# %% [markdown]
# **KIVI's per-channel keys keep 5-shot arithmetic with a 4-bit cache; at 2 bits they win back about a quarter of the loss, which is not enough.** With the 32-token window, a 4-bit KIVI cache scores 0.42 at 5 shots against the unquantized model's 0.43 (a loss of 0.01 [−0.01, +0.03], p = 0.40). Per-token keys with the same window lose 0.04 [0.02, 0.07] (p = 0.001), and per-token keys over the whole head with no window lose 0.20 (above). KIVI's keys against per-token keys: +0.04 [+0.01, +0.06] (p = 0.009). At 2 bits, per-token keys take 5-shot accuracy to 0.06, below the majority-class baseline (0.13). KIVI's keys give back 0.10 [0.07, 0.12] (p = 0.0002), to 0.15 [0.13, 0.18]: still 0.28 below the unquantized model, and its interval reaches the score of always answering the most common number. The 0-shot prompts are shorter than one 32-token chunk, so no setting here rounds anything in them and those scores cannot move. Perplexity on the whole lee split with this 32-token window: 29.85 (KV4 KIVI) and 36.3 (KV2 KIVI) against 29.78. So at 4 bits per-channel keys cut the loss from 0.04 to 0.01 (in-context learning survives either axis there, far above the majority line), and at 2 bits neither axis keeps it on this model.

# %% [markdown]
# ## 7. Findings
# The paper's claims against this model, each decided by the paired tests above: *agrees* when the test says so at p < 0.05 (or, for "keeps", when the whole interval of the loss lies below `MARGIN`); *contradicts* when it says the opposite; *cannot test here* when the interval is too wide to tell, or when the base model does not show the ability at all (its interval reaches the majority-class baseline).

# %%
base_iv = intervals[intervals.label == "base"].set_index("column")


def has(col):
    return stats.above_baseline(base_iv.loc[col, "low"], base_iv.loc[col, "majority"]) \
        if pd.notna(base_iv.loc[col, "majority"]) else True


def test_of(label, col):
    return paired[(paired.b == label) & (paired.column == col)].iloc[0]


def describe(t):
    return f"{t['a_score']:.2f} → {t['b_score']:.2f} ({t['difference']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}], {t['test']} p={t['p_value']:.2g}, n={t['n']})"


rows = []
for col, ability in (("icl k=5", "ICL (5-shot arithmetic)"), ("if strict", "IF (strict)")):
    for label, claim, judge in (("RTN W4", "4-bit keeps", lambda t: stats.keeps_verdict(t, MARGIN)),
                                ("GPTQ W4", "4-bit keeps", lambda t: stats.keeps_verdict(t, MARGIN)),
                                ("RTN W2", "2-bit loses", stats.loses_verdict)):
        t = test_of(label, col)
        verdict = judge(t) if has(col) else "cannot test here"
        rows.append({"paper's claim": f"{claim} {ability}", "model": label, "this workbench": describe(t),
                     "verdict": verdict})
cot_base = cot_iv.set_index("column")
cot_has = any(stats.above_baseline(cot_base.loc[c, "low"], cot_base.loc[c, "majority"]) for c in cot_base.index)
rows.append({"paper's claim": "4-bit keeps CoT, 2-bit loses it", "model": "base",
             "this workbench": "; ".join(f"{c}: {r.estimate:.2f} [{r.low:.2f}, {r.high:.2f}] vs majority {r.majority:.2f}"
                                         for c, r in cot_base.iterrows()),
             "verdict": "cannot test here" if not cot_has else "see section 2"})
won = lora_tests[lora_tests.comparison.str.startswith("won") & (lora_tests.column == "icl k=5")]
tuned_w3 = tuned_iv[tuned_iv.label.str.startswith("RTN W3 + LoRA") & (tuned_iv.column == "icl k=5")]
majority = base_iv.loc["icl k=5", "majority"]
shown = (tuned_w3.low > majority).all()          # the tuned models show the ability (above always-majority)
rows.append({"paper's claim": "fine-tuning wins back the ability lost at low bits", "model": "RTN W3 + LoRA",
             "this workbench": "; ".join(f"seed {r.seed}: {r.difference:+.2f} [{r.low:+.2f}, {r.high:+.2f}] p={r.p_value:.2g}"
                                         for r in won.itertuples()) + " (5-shot ICL, W3+LoRA − W3); tuned: "
                               + ", ".join(f"{r.estimate:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in tuned_w3.itertuples())
                               + f" against majority {majority:.2f}",
             "verdict": "agrees" if (won.p_value < 0.05).all() and (won.difference > 0).all() and shown else
             "contradicts" if (won.high < MARGIN).all() else "cannot test here"})
left = lora_tests[lora_tests.comparison.str.startswith("left") & (lora_tests.column == "icl k=5")]
rows.append({"paper's claim": "fine-tuning closes the gap to the unquantized model (given the same fine-tuning)",
             "model": "RTN W3 + LoRA vs base + LoRA",
             "this workbench": "; ".join(f"seed {r.seed}: {r.difference:+.2f} [{r.low:+.2f}, {r.high:+.2f}] p={r.p_value:.2g}"
                                         for r in left.itertuples())
             + f" (5-shot ICL, control − W3+LoRA); recovery {summary.loc['icl k=5', 'mean']:.0%} of the loss "
               f"(mean of 3 seeds, {summary.loc['icl k=5', 'min']:.0%} to {summary.loc['icl k=5', 'max']:.0%})",
             "verdict": "contradicts" if (left.p_value < 0.05).all() and (left.difference > 0).all() else
             "agrees" if (left.high < MARGIN).all() else "cannot test here"})
g_base = scale_intervals[scale_intervals.label == "base"].set_index("column")
for t in scale_tests[(scale_tests.column == "icl k=5") & scale_tests.model.isin(["RTN W4", "RTN W3"])].to_dict("records"):
    g_has = stats.above_baseline(g_base.loc["icl k=5", "low"], g_base.loc["icl k=5", "majority"])
    cell = (f"{t['Gemma base']:.2f} → {t['Gemma quantized']:.2f} ({t['Gemma loss']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}], "
            f"p={t['p_value']:.2g}, n={t['n']})")
    if t["model"] == "RTN W4":
        rows.append({"paper's claim": "4-bit keeps ICL (5-shot arithmetic)", "model": f"Gemma-3-270M {t['model']}",
                     "this workbench": cell, "verdict": stats.keeps_verdict(
                         {"difference": t["Gemma loss"], "high": t["high"], "p_value": t["p_value"]}, MARGIN)
                     if g_has else "cannot test here"})
    rows.append({"paper's claim": "a larger model loses less of an ability at the same bits", "model": f"Gemma-3-270M vs SmolLM2, {t['model']}",
                 "this workbench": (f"5-shot ICL loss {t['Gemma loss']:+.2f} vs {t['SmolLM2 loss']:+.2f}: difference "
                                    f"{t['Gemma − SmolLM2 loss']:+.2f} [{t['diff low']:+.2f}, {t['diff high']:+.2f}], "
                                    f"p={t['diff p']:.2g}, paired over {t['n']} items"),
                 "verdict": stats.beats_verdict({"difference": -t["Gemma − SmolLM2 loss"], "p_value": t["diff p"]})
                 if g_has and has("icl k=5") else "cannot test here"})
for b, claim in (("W8A8KV8", "8-bit weights, activations and KV cache keep ICL (5-shot arithmetic; QLLM-Eval, Li et al. 2024)"),
                 ("W4A8KV4", "4-bit weights keep ICL (5-shot arithmetic) with 8-bit activations and a 4-bit KV cache "
                             "(QLLM-Eval's W×A×KV setting)")):
    t = wakv_paired[(wakv_paired.a == "base") & (wakv_paired.b == b) & (wakv_paired.column == "icl k=5")].iloc[0]
    rows.append({"paper's claim": claim, "model": b, "this workbench": describe(t),
                 "verdict": stats.keeps_verdict(t, MARGIN) if has("icl k=5") else "cannot test here"})
for b in ("W16KV4 KIVI R32", "W16KV2 KIVI R32"):
    t = kivi_paired[(kivi_paired.a == "base") & (kivi_paired.b == b) & (kivi_paired.column == "icl k=5")].iloc[0]
    rows.append({"paper's claim": f"a {b[5]}-bit KIVI cache (per-channel keys, full-precision window) keeps ICL "
                                  "(5-shot arithmetic; KIVI, Liu et al. 2024)",
                 "model": f"{b} (a 32-token window: these prompts are shorter than KIVI's 128)", "this workbench": describe(t),
                 "verdict": stats.keeps_verdict(t, MARGIN) if has("icl k=5") else "cannot test here"})
findings = pd.DataFrame(rows)
save_table(findings, "abilities_findings")
findings.style.hide(axis="index")
