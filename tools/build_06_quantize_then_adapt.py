"""Writes notebooks/06_quantize_then_adapt.ipynb (unexecuted); execute it with jupyter nbconvert."""
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def widget(source):
    """A cell showing a live widget: its output depends on the front end, so nbval does not compare it."""
    return code(source, metadata={"tags": ["nbval-ignore-output"]})


cells = [
md("""# 06 · Quantize, then adapt

The claim behind PreQuant, AlphaTuning and their relatives: compress a pre-trained model *first*, then adapt it to a task *afterwards* with very few trainable parameters; and the weights' outliers and spectra tell you which parameters those should be. This notebook puts the methods of `workbench.adapt` side by side at comparable budgets:

| method | what trains | on what base |
|---|---|---|
| head only | the classification head (a linear probe) | full precision |
| full fine-tuning | everything (the reference) | full precision |
| LoRA (`peft`) | rank-r adapters on every projection | full precision |
| stable-rank LoRA | adapters whose rank per module follows the stable rank of its weight, same total | full precision |
| L1 ticket | every projection, with an L1 penalty on W − W₀; then only the largest changes are kept | full precision |
| DSEE | low-rank adapters plus a sparse update where the rank-r SVD explains W worst | full precision |
| QLoRA-style | LoRA adapters | RTN-quantized projections |
| PreQuant | the outlier weights of each projection, restored to full precision (gradient masks) | RTN-quantized projections |
| AlphaTuning | only the scales α of binary-coding quantization | BCQ-quantized projections |

The head (a fresh linear layer) trains under every method and is counted in each method's trainable parameters."""),
md("""## Parameters
Every run below trains for real; together they take several minutes on 2 cores, so their records are committed as a snapshot (`data/snapshots/adapt_*.json`, with the exact runs, model and library versions that produced them) and read from there when all of those match. Change any parameter (or set `WORKBENCH_RECOMPUTE=1`) and the runs are recomputed and the snapshot rewritten; `make test` re-runs a sample of them from scratch and checks the numbers (`tests/test_snapshots.py`)."""),
code("""ENCODER = "minilm-l6"                 # all-MiniLM-L6-v2, 22.7M parameters, fp32
DATASET = "polarity"                  # 200 movie-review sentences: 140 train / 60 held out, stratified
STEPS = 60                            # optimizer steps per method, batch 16
BITS = [4, 2]                         # widths for the quantize-then-adapt methods
BUDGET = 0.01                         # share of the projection weights for PreQuant / the L1 ticket
R = 8                                 # LoRA rank (stable-rank LoRA matches its parameter count)
SEED = 0
CAUSAL = "smollm2-135m"               # the causal setting: one ability task, trained on its other items
CAUSAL_TASK = "wb_icl_arith_2d_add"   # BIG-bench 2-digit addition, scored zero-shot by lm-eval
CAUSAL_BITS = 3
CAUSAL_LIMIT = 20                     # items scored; the next CAUSAL_TRAIN items are trained on
CAUSAL_TRAIN = 256
CAUSAL_STEPS = 20"""),
code("""import matplotlib.pyplot as plt
import pandas as pd

from workbench import adapt, probes
from workbench.finetune import ability_task, classification_task, load_classifier
from workbench.models import load_model
from workbench.plots import accuracy_vs_params
from workbench.report import project_dir, save_table, snapshot
from workbench.widgets import adaptation_explorer

pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 160)
FIG = project_dir() / "figures"
model, tokenizer, record = load_classifier(ENCODER, seed=SEED)
task = classification_task(tokenizer, DATASET, seed=SEED)
n_params = sum(p.numel() for p in model.parameters())
print(record.name, f"{n_params / 1e6:.1f}M parameters with the head;", f"{task.n_train} training and {len(task.dev_labels)} held-out sentences")"""),
md("## 1. Every method on the encoder task\nEach run starts from the same pre-trained encoder and the same freshly initialized head (seeded), trains for `STEPS` steps of 16 sentences with AdamW (the learning rate each method's function defaults to), and is scored on the 60 held-out sentences."),
code("""kw = dict(steps=STEPS, seed=SEED)
runs = {
    "head only": ("head_only", kw),
    "full": ("full_finetune", kw),
    "LoRA": ("lora", dict(r=R, **kw)),
    "stable-rank LoRA": ("stable_rank_lora", dict(r=R, **kw)),
    "L1 ticket": ("l1_ticket", dict(ticket=BUDGET, **kw)),
    "DSEE": ("dsee", dict(r=R // 2, budget=BUDGET / 2, **kw)),
}
for b in BITS:
    runs[f"QLoRA W{b}"] = ("qlora", dict(bits=b, r=R, **kw))
    runs[f"PreQuant W{b}"] = ("prequant", dict(bits=b, budget=BUDGET, **kw))
    runs[f"AlphaTuning W{b}"] = ("alphatuning", dict(bits=b, **kw))
records = snapshot("adapt_encoder", {"model": record.key, "dataset": DATASET, "seed": SEED, "runs": runs},
                   lambda: adapt.run_methods(model, task, runs))
records = {label: records[label] for label in runs}          # in the order of `runs`
results = adapt.results_table(records, n_params=n_params)
save_table(results, "adapt_encoder")
results"""),
code("""fig = accuracy_vs_params(results, baseline=records["head only"]["accuracy"],
                         title=f"{record.name} on {DATASET}: held-out accuracy against adapted parameters",
                         path=FIG / "adapt_accuracy_vs_params.png")
plt.show()"""),
md("""Read it with the noise in mind: 60 held-out sentences make one sentence 1.7 points, and the binomial standard error near 70% is about ±6 points, so only large gaps mean anything.
* **Full fine-tuning** is the reference at 0.733. A **linear probe** on the frozen encoder (the head only) reaches 0.583.
* **LoRA** with 0.33M adapted parameters (1.5% of the model) comes within one standard error of it (0.70). It does about as well on an RTN base quantized to 4 or 2 bits (**QLoRA** W4 and W2: 0.683 each): on this task the adapters absorb the quantization error.
* **AlphaTuning** trains only the scales of binary-coding quantization: 0.70 at 4 bits and 0.633 at 2 bits, where it has half as many scales (one per plane and group).
* **PreQuant**'s 1% of outlier weights (106k, restored to full precision and trained) reaches 0.617 at 4 bits but only 0.433 at 2 bits, and its training loss stays near 0.6. With this budget and 60 steps, training the outliers does not repair a 2-bit model whose other weights are off by 52% (relative weight error).
* **The L1 ticket**: under the penalty 45.5% of the projection weights moved at all, and the largest 1% of the changes carry 13.6% of the total change. Keeping only those gives 0.567, against 0.617 with every change kept. At this budget the change is not concentrated enough for a 1% ticket.
* **Stable-rank LoRA** (the same parameter count as LoRA, ranks following the stable rank) reaches 0.65 and **DSEE** 0.617: neither beats uniform LoRA here.
* Every method takes 36–51 s for 60 steps on 2 cores (the head alone about 18 s; the `time_s` column); quantizing the encoder costs little next to training."""),
md("## 2. What the methods chose\nPreQuant spends its budget on the largest weights of each projection (relative to the module's median), stable-rank LoRA gives each module a rank proportional to the stable rank of its weight. Next to each module, the statistics the probes of notebooks 02 and 03 compute:"),
code("""targets = adapt.TARGETS
stats = probes.weight_stats(model, pattern=targets, progress=False)[["module", "component", "kurtosis", "max_over_std"]]
spec = probes.spectra(model, pattern=targets, progress=False)[["module", "stable_rank"]]
chosen = stats.merge(spec, on="module")
pq = records[f"PreQuant W{BITS[0]}"]
chosen["prequant weights"] = chosen.module.map(pq["chosen"]).fillna(0).astype(int)
chosen["stable-rank LoRA rank"] = chosen.module.map(records["stable-rank LoRA"]["ranks"]).fillna(0).astype(int)
save_table(chosen, "adapt_chosen_modules")
chosen.groupby("component", sort=False)[["kurtosis", "max_over_std", "stable_rank", "prequant weights",
                                         "stable-rank LoRA rank"]].mean()"""),
code("""chosen[["kurtosis", "max_over_std", "stable_rank", "prequant weights", "stable-rank LoRA rank"]].corr(method="spearman").round(2)"""),
md("""The two criteria pick different modules. PreQuant's outliers sit mostly in the FFN: about 7,300 weights per `down` projection (kurtosis 394 on average) and 5,300 per `up`, against 700–2,200 per attention projection. Across modules, the number it trains follows kurtosis (Spearman 0.81). Stable-rank LoRA gives the higher ranks to the attention projections, `v` and `o` (stable rank about 50), and the lower ones to the FFN. Its ranks follow the stable rank by construction (0.99) and go against PreQuant's choice (−0.45)."""),
md("## 3. Explore a run\nPick a run: its training curve, and what it trained (per-module weights for PreQuant, ranks for stable-rank LoRA, the ticket's numbers for the L1 run). Live in JupyterLab; below, the first run."),
widget("""adaptation_explorer(records)"""),
md("""## 4. The causal setting: win back an ability of a quantized LM
The same functions on the bundled causal model: `CAUSAL_TASK` through the abilities machinery of notebook 04 (`finetune.ability_task`: the first `CAUSAL_LIMIT` items are scored zero-shot by lm-eval, the next `CAUSAL_TRAIN` items are the training set, prompt and answer in the task's own format, loss on the answer tokens). The model is quantized to `CAUSAL_BITS` bits first; the LM head is tied to the embeddings and stays frozen, so these methods train nothing else."""),
code("""lm, lm_tokenizer, lm_record = load_model(CAUSAL)
lm_task = ability_task(lm_tokenizer, CAUSAL_TASK, limit=CAUSAL_LIMIT, n_train=CAUSAL_TRAIN)
ckw = dict(steps=CAUSAL_STEPS, seed=SEED)
causal_runs = {
    "unquantized": ("unadapted", {}),
    f"RTN W{CAUSAL_BITS}": ("unadapted", dict(bits=CAUSAL_BITS)),
    f"QLoRA W{CAUSAL_BITS}": ("qlora", dict(bits=CAUSAL_BITS, r=R, **ckw)),
    f"PreQuant W{CAUSAL_BITS}": ("prequant", dict(bits=CAUSAL_BITS, budget=BUDGET / 10, **ckw)),
    f"AlphaTuning W{CAUSAL_BITS}": ("alphatuning", dict(bits=CAUSAL_BITS, **ckw)),
}
causal = snapshot("adapt_causal", {"model": lm_record.key, "task": CAUSAL_TASK, "limit": CAUSAL_LIMIT,
                                   "n_train": CAUSAL_TRAIN, "runs": causal_runs},
                  lambda: adapt.run_methods(lm, lm_task, causal_runs))
causal = {label: causal[label] for label in causal_runs}
causal_results = adapt.results_table(causal, n_params=lm_record.n_params)
save_table(causal_results, "adapt_causal")
causal_results"""),
md("""**Nothing to win back here, and nothing won.** SmolLM2-135M answers none of the 20 two-digit additions zero-shot even unquantized, so the 3-bit model has nothing to lose. After 20 steps on 256 other items, no adapted W3 model answers one either. The training losses did fall: QLoRA from 3.22 to 1.33, AlphaTuning from 7.04 (its 3-bit BCQ start) to 1.37, PreQuant's 0.1% of outliers only from 3.06 to 2.68. This is the negative result a 135M model gives on this task at this budget, not evidence about the methods. The adapted runs took 177–199 s each, so more steps or items do not fit the test budget. Run it with a model that has the ability (a hub model, `CAUSAL_TASK` at which it scores well unquantized), or with more `CAUSAL_STEPS`."""),
md("""## What these small models and data can and cannot say
* **Noise.** 60 held-out sentences (encoder) and `CAUSAL_LIMIT` scored items (causal) put a standard error of 5–10 points on every accuracy. The rankings above are suggestions; the large gaps (full fine-tuning against the probe, PreQuant at 2 bits) are the only findings.
* **Budgets.** Every method gets the same number of steps and its own default learning rate, not a tuned one. A method that needs more steps (PreQuant's sparse updates, the L1 ticket's shrinking) is at a disadvantage at 60.
* **Models.** MiniLM-L6 is a 22.7M sentence-embedding model and SmolLM2-135M's full precision is a dequantized 4-bit checkpoint (notebook 00). The papers work with BERT-base/large, RoBERTa and OPT/LLaMA on GLUE and generation tasks.
* **Run it at scale.** Point the parameters at a hub model and a standard set. The functions are the same:
  ```python
  model, tokenizer, record = load_classifier("bert-base-uncased")             # or roberta-large, ...
  from datasets import load_dataset                                         # GLUE SST-2 from the hub
  sst2 = load_dataset("glue", "sst2")["train"].to_pandas().rename(columns={"sentence": "text"})
  task = classification_task(tokenizer, sst2[["text", "label"]], dev_fraction=0.1)
  ```
  Then raise `STEPS`. For the causal setting, set `CAUSAL = "meta-llama/Llama-2-7b-hf"` and `CAUSAL_TASK` to any lm-eval task whose documents you can load (e.g. `"arc_easy"`, `"gsm8k"`)."""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                                "language_info": {"name": "python"}})
nbf.write(nb, Path(__file__).resolve().parents[1] / "notebooks" / "06_quantize_then_adapt.ipynb")
