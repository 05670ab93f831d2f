"""Interactive explorers for JupyterLab, built on ipywidgets.

    from workbench.widgets import quantizer_explorer, outlier_explorer, stable_rank_explorer
    quantizer_explorer(model, hessians=None)   # pick layer, component, bits, method
    outlier_explorer(model, act_channels)      # ... and see the outlier channels and their error share
    stable_rank_explorer(model, spectra_df)    # click a layer x component cell to see its spectrum
    frequency_bits_explorer(model, freq)       # mean bits and rule -> each embedding row's width and the error
    mpo_explorer(model)                        # matrix, tensors, max bond -> MPO error and parameters

Each explorer recomputes only the one matrix it shows, so it reacts in well under a second for
RTN and in a second or two for GPTQ or BCQ on the default model.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import torch

from workbench.modules import linear_modules, module_info
from workbench.plots import weight_histogram
from workbench.quant import QuantConfig, rtn_quantize_weight

EXPLORER_METHODS = {
    "RTN": dict(method="rtn"),
    "RTN + MSE clip": dict(method="rtn", mse_clip=True),
    "RTN, symmetric": dict(method="rtn", symmetric=True),
    "RTN + 1% outliers": dict(method="rtn", outlier_fraction=0.01),
    "BCQ": dict(method="bcq"),
    "GPTQ": dict(method="gptq"),
}


def quantize_one(w: torch.Tensor, method: str, bits: int, group_size: int,
                 hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantized weight of one matrix [out, in] under an explorer method name (see EXPLORER_METHODS)."""
    cfg = QuantConfig(bits=bits, group_size=group_size, **EXPLORER_METHODS[method])
    if cfg.method == "rtn":
        return rtn_quantize_weight(w, cfg)[0]
    if cfg.method == "bcq":
        from workbench.quant.bcq import bcq_dequantize, bcq_fit

        alpha, binary, offset = bcq_fit(w, cfg)
        return bcq_dequantize(alpha, binary, cfg.group_len(w.shape[1]), offset)
    if hessian is None:
        raise ValueError("GPTQ needs the layer's Hessian: pass hessians=collect_hessians(model, names, calibration)")
    from workbench.quant.gptq import gptq_quantize_weight

    return gptq_quantize_weight(w, hessian, cfg)[0]


def quantizer_explorer(model, hessians: dict[str, torch.Tensor] | None = None, group_size: int = 128):
    """Pick a layer, a component, a bit width and a method; see the weight histogram before and
    after quantization and the error. GPTQ is offered when `hessians` (module -> H) is given."""
    linears = linear_modules(model)
    by_key, layers, components = _block_modules(model)
    methods = [m for m in EXPLORER_METHODS if m != "GPTQ" or hessians]
    layer = W.IntSlider(value=layers[len(layers) // 2], min=layers[0], max=layers[-1], description="layer")
    component = W.Dropdown(options=components, value=components[0], description="component")
    bits = W.IntSlider(value=3, min=2, max=8, description="bits")
    method = W.Dropdown(options=methods, value="RTN", description="method")
    out = W.Output()

    def redraw(*_):
        name = by_key.get((layer.value, component.value))
        with out:
            out.clear_output(wait=True)
            if name is None:
                print(f"no {component.value} module in layer {layer.value}")
                return
            w = linears[name].weight.detach()
            w_hat = quantize_one(w, method.value, bits.value, group_size, (hessians or {}).get(name))
            weight_histogram(w, w_hat, title=f"{name} — {method.value} W{bits.value} g{group_size}")
            plt.show()

    for control in (layer, component, bits, method):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([layer, component]), W.HBox([bits, method]), out])


def _block_modules(model) -> tuple[dict, list, list]:
    """(layer, component) -> module name for the linear layers inside transformer blocks."""
    by_key = {(module_info(n).layer, module_info(n).component): n for n in linear_modules(model)
              if module_info(n).layer is not None}
    layers = sorted({k[0] for k in by_key})
    components = [c for c in ("q", "k", "v", "o", "gate", "up", "down") if any(k[1] == c for k in by_key)]
    return by_key, layers, components


def outlier_panel(w: torch.Tensor, w_hat: torch.Tensor, act_max=None, top: int = 8, title: str = ""):
    """Figure for one matrix: histogram before/after (log counts), per-input-channel maxima of
    |W| (and of the layer's input activations, when given) with the top channels marked, and the
    share of the squared error that falls in those top channels."""
    w, w_hat = w.detach().float(), w_hat.detach().float()
    err = (w_hat - w) ** 2
    cmax = w.abs().amax(0)                                                  # [in]
    top_idx = cmax.topk(min(top, cmax.numel())).indices
    share = float(err[:, top_idx].sum() / err.sum()) if err.sum() > 0 else 0.0
    rows = 3 if act_max is not None else 2
    fig, axes = plt.subplots(1, rows, figsize=(4.2 * rows, 3.2))
    edges = torch.linspace(float(min(w.min(), w_hat.min())), float(max(w.max(), w_hat.max())), 151).numpy()
    axes[0].hist(w.flatten().numpy(), bins=edges, log=True, alpha=0.6, label="original")
    axes[0].hist(w_hat.flatten().numpy(), bins=edges, log=True, histtype="step", label="quantized")
    rel = float((w_hat - w).norm() / w.norm())
    axes[0].set(title=f"{title}\n‖Ŵ−W‖/‖W‖ = {rel:.4f}", xlabel="weight", ylabel="count (log)")
    axes[0].legend(fontsize=7)
    axes[1].plot(cmax.numpy(), lw=0.6)
    axes[1].plot(top_idx.numpy(), cmax[top_idx].numpy(), "rv", ms=4)
    axes[1].set(title=f"top {len(top_idx)} weight channels carry {share:.1%} of the error",
                xlabel="input channel", ylabel="max |W[:, c]|")
    if act_max is not None:
        axes[2].plot(np.asarray(act_max, dtype=float), lw=0.6, color="C2")
        axes[2].set(yscale="log", title="input activation max |x_c|", xlabel="input channel")
    fig.tight_layout()
    return fig


def outlier_explorer(model, act_channels=None, group_size: int = 128):
    """Pick a layer, a component, a bit width and a method: the histogram before and after, the
    outlier input channels of the weight (and of the activations, from `act_channels` =
    `probes.activation_stats(...)[1]`, if given) and the share of the error they carry update live."""
    by_key, layers, components = _block_modules(model)
    linears = linear_modules(model)
    methods = [m for m in EXPLORER_METHODS if m != "GPTQ"]
    layer = W.IntSlider(value=layers[-1], min=layers[0], max=layers[-1], description="layer")
    component = W.Dropdown(options=components, value=components[-1], description="component")
    bits = W.IntSlider(value=3, min=2, max=8, description="bits")
    method = W.Dropdown(options=methods, value="RTN", description="method")
    out = W.Output()

    def redraw(*_):
        name = by_key.get((layer.value, component.value))
        with out:
            out.clear_output(wait=True)
            if name is None:
                print(f"no {component.value} module in layer {layer.value}")
                return
            w = linears[name].weight.detach()
            w_hat = quantize_one(w, method.value, bits.value, group_size)
            act = None
            if act_channels is not None:
                part = act_channels[act_channels.module == name].sort_values("channel")
                act = part.abs_max.to_numpy() if len(part) else None
            outlier_panel(w, w_hat, act, title=f"{name} — {method.value} W{bits.value}")
            plt.show()

    for control in (layer, component, bits, method):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([layer, component]), W.HBox([bits, method]), out])


def _colour(value: float, lo: float, hi: float) -> str:
    import matplotlib

    t = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    r, g, b, _ = matplotlib.colormaps["viridis"](t)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def stable_rank_explorer(model, spectra_df, value: str = "stable_rank"):
    """A layer x component grid of buttons coloured by `value` (from `probes.spectra(model)`);
    clicking a cell shows that matrix's singular values on log axes next to the layer's others."""
    from workbench.plots import spectrum_plot
    from workbench.probes import singular_values

    by_key, layers, components = _block_modules(model)
    linears = linear_modules(model)
    values = spectra_df.set_index("module")[value]
    known = [values[n] for n in by_key.values() if n in values.index]
    lo, hi = min(known), max(known)
    out = W.Output()
    label = W.HTML()

    def show(name):
        with out:
            out.clear_output(wait=True)
            info = module_info(name)
            same_layer = {c: singular_values(linears[by_key[(info.layer, c)]].weight).numpy()
                          for c in components if (info.layer, c) in by_key}
            spectrum_plot(same_layer, title=f"layer {info.layer}: {name} ({value} {values.get(name, float('nan')):.1f})")
            plt.show()

    cells = [W.HTML("")] + [W.HTML(f"<b>{c}</b>") for c in components]
    for layer in layers:
        cells.append(W.HTML(f"<b>{layer}</b>"))
        for c in components:
            name = by_key.get((layer, c))
            if name is None or name not in values.index:
                cells.append(W.HTML(""))
                continue
            button = W.Button(description=f"{values[name]:.0f}", tooltip=name,
                              layout=W.Layout(width="52px", height="22px", padding="0"))
            button.style.button_color = _colour(values[name], lo, hi)
            button.style.text_color = "white"
            button.on_click(lambda _, name=name: show(name))
            cells.append(button)
    grid = W.GridBox(cells, layout=W.Layout(grid_template_columns=f"40px repeat({len(components)}, 56px)",
                                              grid_gap="1px"))
    label.value = f"{value.replace('_', ' ')} per matrix ({lo:.1f} .. {hi:.1f}); click a cell"
    show(by_key[(layers[0], components[0])])
    return W.HBox([W.VBox([label, grid]), out])


def generations_explorer(samples, base_label: str = "base", n_examples: int = 4):
    """Pick ability, task, method and bits; see example generations side by side with the base model.

    `samples` is the `samples` DataFrame of `abilities.ability_sweep` (columns label, bits,
    method, ability, task, shots, doc_id, prompt, target, response, score). For each of the
    first `n_examples` items it shows the end of the prompt, the gold answer, and what the base
    and the chosen quantized model answered, each marked right or wrong.
    """
    import html

    from workbench.abilities import ability_of

    samples = samples.copy()
    samples["ability"] = samples.task.map(ability_of)
    quantized = samples[samples.label != base_label]
    ability = W.Dropdown(options=sorted(samples.ability.unique()), description="ability")
    task = W.Dropdown(description="task")
    method = W.Dropdown(options=sorted(quantized.method.unique()), description="method")
    bits = W.Dropdown(description="bits")
    out = W.HTML()

    def options(*_):
        task.options = sorted(samples[samples.ability == ability.value].task.unique())
        bits.options = sorted(quantized[quantized.method == method.value].bits.dropna().unique(), reverse=True)

    def cell(text, limit=400):
        text = str(text)
        text = text if len(text) <= limit else "…" + text[-limit:]
        return f"<pre style='white-space:pre-wrap;margin:0;font-size:11px'>{html.escape(text)}</pre>"

    def show(*_):
        if task.value is None or bits.value is None:
            return
        keys = ["doc_id", "shots"] + (["fewshot_seed"] if "fewshot_seed" in samples else [])
        pick = lambda df: df[(df.task == task.value)].drop_duplicates(keys, keep="last")
        base = pick(samples[samples.label == base_label])
        quant = pick(quantized[(quantized.method == method.value) & (quantized.bits == bits.value)])
        both = base.merge(quant, on=keys, suffixes=("_base", "_quant")).head(n_examples)
        mark = lambda s: "✓" if s == 1 else "✗"
        rows = "".join(
            f"<tr><td>{cell(r.prompt_base)}</td><td>{cell(r.target_base, 120)}</td>"
            f"<td>{mark(r.score_base)} {cell(r.response_base)}</td><td>{mark(r.score_quant)} {cell(r.response_quant)}</td></tr>"
            for r in both.itertuples())
        out.value = (f"<table><tr><th>prompt (end)</th><th>gold</th><th>{html.escape(base_label)}</th>"
                     f"<th>{html.escape(method.value)} W{bits.value}</th></tr>{rows}</table>")

    for w in (ability, method):
        w.observe(options, "value")
    for w in (ability, task, method, bits):
        w.observe(show, "value")
    options()
    show()
    return W.VBox([W.HBox([ability, task]), W.HBox([method, bits]), out])


def adaptation_explorer(records: dict, n_params: int | None = None):
    """Pick a method, a bit width and a budget of the quantize-then-adapt comparison; see the
    run's training curve and what it chose to train.

    `records` maps a run label to the record a `workbench.adapt` method returned (losses,
    trainable_params, accuracy, and `chosen`, `ranks` or the ticket's numbers where the method
    picks parameters). The bits menu lists the widths the chosen method ran at (16: not
    quantized), the budget menu its runs at that width by adapted parameters (trainable minus
    the head; as a share of `n_params`, default each record's total_params). The plot shows
    the loss per step with the run's held-out accuracy; the table lists the modules the method
    chose with how much of each it trains, or the run's settings.
    """
    import html

    import pandas as pd

    from workbench.adapt import results_table

    runs = results_table(records, n_params)
    method = W.Dropdown(options=list(runs.method.unique()), description="method")
    bits = W.Dropdown(description="bits")
    budget = W.Dropdown(description="budget", layout=W.Layout(width="420px"))
    plot, table = W.Output(), W.HTML()

    def set_bits(*_):
        widths = sorted((int(b) for b in runs[runs.method == method.value].bits.unique()), reverse=True)
        bits.options = [("16 (not quantized)" if b == 16 else str(b), b) for b in widths]
        bits.value = widths[0]
        set_budget()

    def set_budget(*_):
        pick = runs[(runs.method == method.value) & (runs.bits == bits.value)].sort_values("adapted_params")
        budget.options = [(f"{r.adapted_params:,} adapted ({r.adapted_share:.2%}): {r.label}", r.label)
                          for r in pick.itertuples()]
        budget.value = pick.label.iloc[0] if len(pick) else None

    def show(*_):
        if budget.value is None:
            return
        rec = records[budget.value]
        with plot:
            plot.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5.5, 2.6))
            ax.plot(range(1, len(rec["losses"]) + 1), rec["losses"], lw=1)
            if rec.get("start"):
                ax.axvline(rec["start"] + 0.5, color="gray", ls="--", lw=1, label="adapters join")
                ax.legend(fontsize=7)
            ax.set(xlabel="step", ylabel="training loss",
                   title=f"{budget.value}: {rec['trainable_params']:,} trainable, accuracy {rec['accuracy']:.2f}")
            plt.show()
        chosen = rec.get("chosen") or rec.get("ranks")
        if chosen:
            what = "weights trained" if "chosen" in rec else "LoRA rank"
            df = pd.Series(chosen, name=what).rename_axis("module").reset_index()
            table.value = df[df[what] > 0].to_html(index=False, max_rows=40)
        else:
            keys = [k for k in ("r", "bits", "budget_weights", "changed_share", "ticket_weights", "ticket_change_share",
                                "accuracy_full", "first_scale_only", "final_sparsity", "accuracy_dense") if k in rec]
            table.value = ("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{rec[k]}</td></tr>" for k in keys)
                           + "</table>") if keys else "<i>every target module, uniformly</i>"

    method.observe(set_bits, "value")
    bits.observe(set_budget, "value")
    budget.observe(show, "value")
    set_bits()
    show()
    return W.VBox([W.HBox([method, bits]), budget, plot, table])


def frequency_bits_explorer(model, freq: torch.Tensor, group_size: int = 128, choices=(2, 3, 4, 8)):
    """Pick a mean width and a rule (by frequency, the same widths at random, uniform) for the
    token embedding: see each row's width against its token's frequency rank and what it costs
    (plain and frequency-weighted relative error, ideal packed bytes). Recomputes the one matrix."""
    from workbench.quant.by_frequency import (allocate_row_bits, frequency_rank, packed_row_bits_size,
                                              quantize_rows, random_row_bits, relative_row_error, uniform_row_bits)

    w = model.get_input_embeddings().weight.detach()
    rank = frequency_rank(freq)
    avg = W.FloatSlider(value=3.0, min=min(choices), max=max(choices), step=0.25, description="mean bits")
    rule = W.Dropdown(options=["frequency", "random", "uniform"], value="frequency", description="rule")
    smoothing = W.Dropdown(options=[0.0, 1.0], value=0.0, description="smoothing")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            try:
                if rule.value == "uniform":
                    bits = uniform_row_bits(w.shape[0], avg.value)
                else:
                    bits = allocate_row_bits(freq, avg.value, choices, smoothing.value)
                    if rule.value == "random":
                        bits = random_row_bits(freq, bits, seed=0)
            except ValueError as e:                # e.g. a uniform table at a fractional width
                print(e)
                return
            w_hat, _ = quantize_rows(w, bits, group_size)
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(np.arange(len(rank)), bits[rank].numpy(), drawstyle="steps-post")
            ax.set_xscale("symlog")
            ax.set(xlabel="token, by calibration frequency (most frequent first)", ylabel="bits",
                   title=f"{rule.value}: mean {bits.float().mean():.3g} bits; rel. error {relative_row_error(w, w_hat):.3g}, "
                         f"frequency-weighted {relative_row_error(w, w_hat, freq.to(w.dtype)):.3g}; "
                         f"{packed_row_bits_size(bits, w.shape[1], group_size) / 1e6:.2f} MB")
            ax.title.set_fontsize(8)
            plt.show()

    for control in (avg, rule, smoothing):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([avg, rule, smoothing]), out])


def mpo_explorer(model, bonds=(4, 8, 16, 32, 64, 128, 256)):
    """Pick a linear layer, the number of local tensors and a maximum bond dimension: see the MPO's
    reconstruction error ||W - W_hat|| / ||W|| and parameter count against the bond (the curve
    over `bonds`, the current bond marked), its bonds and which tensor is central. Recomputes the
    one matrix (a few SVDs): under a second for a MiniLM or SmolLM2 projection."""
    from workbench.decompose.mpo import bond_dims, central_index, factorize, mpo_decompose, truncation_table

    linears = linear_modules(model)
    names = [n for n in linears if linears[n].weight.dim() == 2]
    name = W.Dropdown(options=names, value=names[0], description="matrix", layout=W.Layout(width="420px"))
    parts = W.IntSlider(value=3, min=2, max=5, description="tensors")
    bond = W.SelectionSlider(options=list(bonds), value=bonds[len(bonds) // 2], description="max bond")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            w = linears[name.value].weight.detach().float()                        # [out, in]
            of, inf = factorize(w.shape[0], parts.value), factorize(w.shape[1], parts.value)
            curve = truncation_table(w, of, inf, list(bonds))
            tensors = mpo_decompose(w, of, inf, max_bond=bond.value)
            here = curve[curve.max_bond == bond.value].iloc[0]
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(curve.params, curve.rel_error, marker="o")
            ax.plot([here.params], [here.rel_error], marker="o", markersize=12, color="C3")
            ax.axvline(w.numel(), color="grey", linestyle=":", label="dense W")
            ax.set_xscale("log")
            ax.set(xlabel="MPO parameters", ylabel="relative error", ylim=(0, None),
                   title=f"{name.value} {tuple(w.shape)} = {of} x {inf}; bonds {bond_dims(tensors)}, "
                         f"central tensor {central_index(tensors)}; max bond {bond.value}: error "
                         f"{here.rel_error:.3f}, {here.compression:.2f} x W's parameters")
            ax.title.set_fontsize(8)
            ax.legend(fontsize=8)
            plt.show()

    for control in (name, parts, bond):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([name, parts, bond]), out])
