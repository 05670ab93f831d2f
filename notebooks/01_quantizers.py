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
# # 01 · The quantizer suite: RTN, GPTQ, binary coding, outliers and mixed precision
#
# Which quantizer should you trust at 4, 3 and 2 bits, and what does each cost? This notebook runs every quantizer of `workbench.quant` over the default model with the same data and the same evaluation:
#
# | method | idea | reference |
# |---|---|---|
# | **RTN** | round each weight to the nearest point of a per-group uniform grid | the baseline everywhere |
# | **RTN + MSE clip** | shrink each group's range to minimize the squared error ‖w − ŵ‖² | GPTQ's `find_params(mse=True)`, PreQuant's "MSE" quantizer |
# | **GPTQ** | quantize column by column, pushing each rounding error onto the not-yet-quantized columns through the inverse Hessian of the layer's inputs | Frantar et al., 2023 |
# | **BCQ** | W ≈ Σᵢ αᵢ ∘ bᵢ with bᵢ ∈ {−1, +1}, scales fitted by alternating least squares | Xu et al., 2018; AlphaTuning (Kwon et al., 2022) |
# | **outlier-aware RTN** | keep the largest 1% of weights (or the input channels with the largest activations) in full precision | SpQR, LLM.int8, PreQuant |
# | **mixed precision** | different bits for different modules, by name pattern | — |
#
# Then it puts the workbench's RTN next to HQQ, optimum-quanto and torchao, shows the real size of bit-packed checkpoints, and ends with an explorer widget.
#
# *Caveat, as everywhere:* the bundled SmolLM2 is a dequantized 4-bit GGUF checkpoint, so its baseline already sits on a 4-bit grid (blocks of 32). Point `MODEL` at a hub id for true full-precision numbers.

# %% [markdown]
# ## Parameters
# Sized so that the notebook runs in a few minutes on 2 CPU cores (the committed outputs are exactly what these values produce). `MAX_WINDOWS=None` evaluates the whole held-out split.

# %%
MODEL = "smollm2-135m"
CORPUS = "lee"
SEQLEN = 512
MAX_WINDOWS = 4                      # 2,048 evaluation tokens
CALIBRATION = {"corpus": CORPUS, "n_samples": 8, "seqlen": 256, "seed": 0}   # for GPTQ and channel outliers
BITS = [4, 3, 2]
GROUP_SIZE = 128

# %%
import tempfile

import matplotlib.pyplot as plt
import pandas as pd

from workbench.quant.compare import compare_libraries
from workbench.data import calibration_batch, evaluation_text
from workbench.evaluate import perplexity_sweep
from workbench.models import load_model
from workbench.quant.packing import load_quantized, packed_size, save_quantized
from workbench.plots import group_size_curve, perplexity_vs_bits, weight_histogram
from workbench.quant import QuantConfig, quantize_model, rtn_quantize_weight
from workbench.report import project_dir, save_table
from workbench.widgets import quantizer_explorer

pd.set_option("display.float_format", "{:.4g}".format)
pd.set_option("display.width", 140)
model, tokenizer, record = load_model(MODEL)
print(record.name, record.architecture, f"{record.n_params / 1e6:.1f}M parameters")

def sweep(specs, calibration=None):
    return perplexity_sweep(model, tokenizer, record, specs, corpus=CORPUS, seqlen=SEQLEN,
                            max_windows=MAX_WINDOWS, calibration=calibration, progress=False)


# %% [markdown]
# ## 1. Method × bits
# Every linear layer but the LM head, groups of 128 inputs. GPTQ and channel outliers get 8 × 256 calibration tokens from the calibration split of the same corpus (never the evaluation documents).

# %%
METHODS = {
    "RTN": {},
    "RTN + MSE clip": dict(mse_clip=True),
    "RTN + 1% outliers": dict(outlier_fraction=0.01),
    "BCQ": dict(method="bcq", bcq_iters=3),        # uniform-grid init, 3 ALS rounds
    "GPTQ (act-order)": dict(method="gptq", act_order=True),
}
specs = {"unquantized": None}
specs.update({(m, b): QuantConfig(bits=b, group_size=GROUP_SIZE, **kw) for m, kw in METHODS.items() for b in BITS})
calibrated = {k: v for k, v in specs.items() if v is not None and v.needs_calibration}
plain = {k: v for k, v in specs.items() if k not in calibrated}
results = pd.concat([sweep(plain), sweep(calibrated, CALIBRATION)], ignore_index=True)
results["method"] = [k if k == "unquantized" else k[0] for k in results.label]
baseline = results.perplexity.iloc[0]
table = results.pivot_table(index="method", columns="bits", values="perplexity", sort=False)[BITS]
save_table(results.drop(columns=["label", "quantize_time_s"]), "quantizers_method_bits")
print(f"unquantized perplexity: {baseline:.3f}")
table.drop(index="GPTQ (act-order)")               # GPTQ's row just below: its digits depend on the CPU

# %% [markdown]
# GPTQ's row is printed apart because its last digits depend on the machine: its error feedback turns last-bit differences of another CPU's float32 arithmetic into other rounding decisions (§ *How far GPTQ moves* below measures by how much). The notebook's automatic check (nbval) compares every other number here digit for digit, and for GPTQ only the claims of that section.

# %% tags=["nbval-ignore-output"]
table.loc[["GPTQ (act-order)"]]

# %%
perplexity_vs_bits(results[results.method != "unquantized"], hue="method", baseline=baseline,
                   title=f"{record.name}: perplexity by method (group {GROUP_SIZE})",
                   path=project_dir() / "figures" / "quantizers_method_bits.png")
plt.show()

# %% [markdown]
# Read the table by column: the differences between quantizers are small at 4 bits, open up at 3 and decide everything at 2. Compare each method's perplexity with its mean relative weight error ‖W − Ŵ‖/‖W‖ below: the two do not rank the methods the same way. MSE clipping lowers RTN's weight error and still loses perplexity, because what it gives up is the largest weights of each group; BCQ matches RTN's weight error and loses far more (below); GPTQ's weight error is the largest of all, because it spends weight error where the calibration inputs do not look.

# %%
errors = results[results.method != "unquantized"].pivot_table(index="method", columns="bits", values="rel_weight_error", sort=False)[BITS]
errors.drop(index="GPTQ (act-order)")

# %% tags=["nbval-ignore-output"]
errors.loc[["GPTQ (act-order)"]]                   # machine-dependent digits, as above

# %% [markdown]
# ### BCQ: the initialization decides
# Binary-coding quantization has 2^q levels Σᵢ ±αᵢ per group — symmetric around zero, with no zero point and no level *at* zero. Alternating least squares only finds a local optimum, so the starting point matters. The greedy start of Xu et al. (peel sign planes off the residual, αᵢ = mean |rᵢ|) puts the top level Σᵢ αᵢ well inside the group's range and clips its largest weights; the uniform start (the default here: αᵢ = s·2^(i−1), the top level exactly at max |w|) keeps them. Both below with 3 ALS rounds at 4 bits: the top level as a share of the group's largest |w| (median over the groups of one matrix, and over every matrix), and perplexity.

# %%
from workbench.quant.bcq import bcq_fit

def top_level_share(w, cfg):
    alpha, _ = bcq_fit(w, cfg)                                     # [q, out, G]
    group_max = w.abs().view(w.shape[0], alpha.shape[2], -1).amax(-1)
    return (alpha.sum(0) / group_max).median().item()

inits = {init: QuantConfig(bits=4, group_size=GROUP_SIZE, method="bcq", bcq_iters=3, bcq_init=init)
         for init in ["greedy", "uniform"]}
w = model.model.layers[15].mlp.down_proj.weight.detach()       # 1536 inputs: 12 whole groups
bcq_init = sweep({("BCQ", init): cfg for init, cfg in inits.items()})
bcq_init["init"] = list(inits)
bcq_init["top level / max|w| (layer 15 down_proj)"] = [top_level_share(w, cfg) for cfg in inits.values()]
save_table(bcq_init.drop(columns=["label", "quantize_time_s"]), "quantizers_bcq_init")
bcq_init[["init", "bits", "perplexity", "rel_weight_error", "top level / max|w| (layer 15 down_proj)"]]

# %% [markdown]
# The greedy start clips (its top level reaches about two thirds of the largest weight) and perplexity explodes; the uniform start keeps the largest weights and is two orders of magnitude better at 4 bits. Even so, BCQ trails uniform RTN at the same number of levels at every width in the table above, and at 3 bits it collapses although its weight error is below RTN's. Why is not settled here; the obvious suspect is that its levels have no zero: every small weight is pushed out to the smallest level ±s (s = α₁ with the uniform start), a systematic inflation that plain rounding does not have. BCQ is the format AlphaTuning fine-tunes (it trains only the scales αᵢ, notebook 06); as a post-training quantizer on its own it is not competitive on this model.
#
# ### GPTQ: why act-order
# GPTQ minimizes each layer's output error on the calibration inputs, and it always beats RTN on that measure. Without act-order, the columns are quantized left to right; with it, the columns whose inputs carry the most energy (largest Hessian diagonal) go first, while there is still room to absorb their error. On this model the order matters for perplexity (3 bits):

# %% tags=["nbval-ignore-output"]
gptq_specs = {
    "RTN": QuantConfig(bits=3, group_size=GROUP_SIZE),
    "GPTQ, columns in order": QuantConfig(bits=3, group_size=GROUP_SIZE, method="gptq"),
    "GPTQ, act-order": QuantConfig(bits=3, group_size=GROUP_SIZE, method="gptq", act_order=True),
}
gptq = sweep(gptq_specs, CALIBRATION)
save_table(gptq.drop(columns=["quantize_time_s"]), "quantizers_gptq_order")
gptq[["label", "perplexity", "rel_weight_error", "rel_output_error"]]

# %% [markdown]
# ### How far GPTQ moves
# Two things move a GPTQ result that RTN does not have: the calibration draw (which 8 × 256 tokens it sees) and the machine (GPTQ's error feedback turns the last-bit differences between CPUs into other rounding decisions, which then propagate through every later column and layer). First the draw: the same two GPTQ variants on two more draws of the calibration split (seeds 1 and 2):

# %% tags=["nbval-ignore-output"]
DRAWS = [0, 1, 2]
draws = pd.concat([sweep({k: v for k, v in gptq_specs.items() if k != "RTN"}, {**CALIBRATION, "seed": seed}).assign(seed=seed)
                   for seed in DRAWS], ignore_index=True)
per_draw = draws.pivot_table(index="label", columns="seed", values="perplexity", sort=False)
per_draw["spread (max/min - 1)"] = per_draw[DRAWS].max(axis=1) / per_draw[DRAWS].min(axis=1) - 1
save_table(draws.drop(columns=["quantize_time_s"]), "quantizers_gptq_draws")
per_draw

# %% [markdown]
# Then the machine. `workbench` computes with the AVX2 kernels on every x86-64 CPU (`workbench/numerics.py`), so that this notebook gives the same digits on any of them; a library that lets each CPU pick its own kernels does not. `tools/numerics_spread.py --gptq` recomputed the act-order row with the default kernels, with one thread instead of two, and with this machine's own AVX-512 kernels (`WORKBENCH_NUMERICS=native`), and wrote the table below (read from its committed file: it is what that script measured, not recomputed here):

# %%
machine = pd.read_csv(project_dir() / "data" / "results" / "numerics_spread_gptq.csv")
machine

# %% [markdown]
# What the notebook stands behind, then, is not GPTQ's third digit but these claims; they are what nbval checks on any machine:

# %%
rtn_w3 = gptq.set_index("label").perplexity["RTN"]
in_order, act_order = per_draw.loc["GPTQ, columns in order", DRAWS], per_draw.loc["GPTQ, act-order", DRAWS]
print("act-order below columns-in-order on every calibration draw:", bool((act_order < in_order).all()))
print("GPTQ act-order below RTN at 3 bits on every draw:", bool((act_order < rtn_w3).all()))
print("spread over the draws larger than the spread over emulated machines:",
      bool(per_draw["spread (max/min - 1)"].min() > machine.rel_to_default.abs().max()))

# %% [markdown]
# ## 2. Group size
# Smaller groups mean more scales (more storage) and a finer fit. RTN at 3 bits:

# %%
group_specs = {g: QuantConfig(bits=3, group_size=g) for g in (32, 64, 128, 256)}
group_specs["channel"] = QuantConfig(bits=3, granularity="channel")
groups = sweep(group_specs)
groups["group_size"] = [576 if g == "channel" else g for g in groups.label]  # a whole 576-wide row
save_table(groups.drop(columns=["quantize_time_s"]), "quantizers_group_size")
group_size_curve(groups, title="RTN W3: perplexity vs group size (576 = per channel)",
                 path=project_dir() / "figures" / "quantizers_group_size.png")
plt.show()
groups[["label", "perplexity", "rel_weight_error"]]

# %% [markdown]
# The default model's 576-wide rows do not divide into groups of 128 (or 256): as in the GPTQ reference, each row ends in one shorter group, and the report says so:

# %%
_, report = quantize_model(model, QuantConfig(bits=3, group_size=128))
report.groupby(["component", "groups"], sort=False).size().rename("modules").to_frame()

# %% [markdown]
# ## 3. What an exactly representable zero point costs
# By default the asymmetric zero point is rounded to an integer, so that codes, scale and zero can be stored exactly. Letting it be any real number (as quanto does) fits each group's range exactly:

# %%
zero_specs = {}
for b in BITS:
    zero_specs[f"W{b} integer zero"] = QuantConfig(bits=b, group_size=GROUP_SIZE)
    zero_specs[f"W{b} real zero"] = QuantConfig(bits=b, group_size=GROUP_SIZE, round_zero=False)
    zero_specs[f"W{b} symmetric"] = QuantConfig(bits=b, group_size=GROUP_SIZE, symmetric=True)
zeros = sweep(zero_specs)
save_table(zeros.drop(columns=["quantize_time_s"]), "quantizers_zero_point")
zeros[["label", "perplexity", "rel_weight_error"]]

# %% [markdown]
# ## 4. Mixed precision
# A spec maps module-name patterns (regular expressions, first match wins) to settings; `None` leaves a module alone, and a pattern that matches nothing is an error. Which half of the network tolerates 2 bits better?

# %%
W2, W4 = QuantConfig(bits=2, group_size=GROUP_SIZE), QuantConfig(bits=4, group_size=GROUP_SIZE)
mixed_specs = {
    "attention 4, FFN 2": {r"self_attn": W4, r"mlp": W2},
    "attention 2, FFN 4": {r"self_attn": W2, r"mlp": W4},
    "all 4, but down_proj 2": {r"mlp\.down_proj": W2, r".": W4},
    "all 2, but layers 0-1 and down_proj 4": {r"layers\.[01]\.|down_proj": W4, r".": W2},
}
mixed = sweep(mixed_specs)
save_table(mixed.drop(columns=["quantize_time_s", "bits"]), "quantizers_mixed_precision")
mixed[["label", "perplexity", "rel_weight_error", "quantized_modules"]]

# %%
try:
    quantize_model(model, {r"cross_attn": W4})
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## 5. Side by side with HQQ, optimum-quanto and torchao
# Same model, same windows, 4 bits, group 64 (every row of the model divides by 64; at 128, quanto and torchao refuse 576-wide rows and HQQ forms groups across rows). Each library runs through its own quantized modules on the CPU. `share_of_weights_differing` compares each library's dequantized weights with the workbench's RTN under the matching grid convention (`workbench.quant.compare.matching_config`): they differ only at rounding ties, by exactly one step. Times vary from run to run and are shown rounded.

# %%
libs = compare_libraries(model, tokenizer, evaluation_text(CORPUS), bits=4, group_size=64,
                         seqlen=SEQLEN, max_windows=MAX_WINDOWS)
save_table(libs.drop(columns=["quantize_time_s", "eval_time_s"]), "quantizers_libraries")
shown = libs[["method", "perplexity", "share_of_weights_differing", "n_differing_not_one_step"]].copy()
shown["quantize time"] = [f"{t:.1f} s" for t in libs.quantize_time_s]
shown["eval time"] = [f"{t:.1f} s" for t in libs.eval_time_s]
shown

# %% [markdown]
# ## 6. Packed checkpoints
# Fake quantization (dequantized weights in an fp32 model) is the analysis mode. `save_quantized` writes the real thing: integer codes bit-packed into bytes plus fp16 scales and zeros, which `load_quantized` reads back to exactly the same weights. The ideal size counts bits × weights plus the scales and zeros of every group; compare it with the tensor data and with the whole file on disk (its JSON header included), which stays within a quarter of a per cent of it:

# %%
sizes = []
with tempfile.TemporaryDirectory() as tmp:
    for b in [8, 4, 3, 2]:
        qmodel, _ = quantize_model(model, QuantConfig(bits=b, group_size=GROUP_SIZE))
        folder = save_quantized(qmodel, f"{tmp}/w{b}")
        size = packed_size(folder)
        reloaded = load_quantized(folder)
        same = all((reloaded.get_submodule(n).weight == qmodel.get_submodule(n).weight).all().item()
                   for n in qmodel.quant_state)
        sizes.append({"bits": b, "quantized weights (M)": size.n_weights.sum() / 1e6,
                      "ideal MB": size.attrs["ideal_bytes"] / 1e6, "tensor data MB": size.stored_bytes.sum() / 1e6,
                      "file on disk MB": size.attrs["file_bytes"] / 1e6,
                      "file overhead %": 100 * size.attrs["file_overhead"],
                      "fp32 MB": size.n_weights.sum() * 4 / 1e6, "reloads exactly": same})
sizes = pd.DataFrame(sizes)
save_table(sizes, "quantizers_packed_size")
sizes

# %% [markdown]
# ## 7. Explore a layer
# Pick a layer, a component, a bit width and a method: the histogram of the weights before and after, and of the error, update live (in JupyterLab; below, one static example). Note how the dequantized SmolLM2 weights already form a comb — the 4-bit grid of the GGUF checkpoint.

# %%
w = model.model.layers[15].mlp.down_proj.weight.detach()
w_hat, _ = rtn_quantize_weight(w, QuantConfig(bits=3, group_size=GROUP_SIZE))
weight_histogram(w, w_hat, title="layer 15 down_proj, RTN W3 g128",
                 path=project_dir() / "figures" / "quantizers_histogram_l15_down.png")
plt.show()

# %% tags=["nbval-ignore-output"]
quantizer_explorer(model)

# %% [markdown]
# ## What to take away
# * RTN is fine at 8 and 4 bits; at 3 bits and below the choice of quantizer matters more than anything else.
# * GPTQ (with act-order) and keeping 1% of the weights in full precision buy back the most at 3 bits; at 2 bits everything collapses on a 135M model. GPTQ depends on its calibration set (8 × 256 tokens here; the reference uses 128 × 2048): at 3 bits its perplexity moves by about 8% (act-order) and 26% (columns in order) across three calibration draws, more than the 3% that another CPU's own kernels move it; act-order beats in-order and RTN on every draw. Raise `CALIBRATION` before trusting a finer GPTQ difference.
# * Lower weight error is not lower perplexity: MSE clipping trades the largest weights of each group for a finer grid elsewhere and loses; BCQ, with weight error close to RTN's, loses badly.
# * Small groups help, at a storage cost you can read off the packed-size table.
# * These numbers come from a 135M model whose baseline is itself a dequantized 4-bit checkpoint, over 2,048 tokens: treat differences of a few per cent as noise, and rerun with `MAX_WINDOWS=None` or a hub model before concluding anything finer.
