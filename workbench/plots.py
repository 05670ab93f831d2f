"""Plots of quantization results: each function takes data, returns the figure, saves it if asked.

    from workbench.plots import perplexity_vs_bits, weight_histogram
    fig = perplexity_vs_bits(results, hue="method", path="figures/quantizers_ppl.png")

One consistent style: seaborn's whitegrid, colour-blind palette, small figures that read well
inside a notebook. `path` (optional) writes the PNG atomically.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from workbench.report import write_png

sns.set_theme(style="whitegrid", palette="colorblind", font_scale=0.9)


def _save(fig, path) -> None:
    if path is not None:
        write_png(fig, path)


def perplexity_vs_bits(df: pd.DataFrame, hue: str = "method", baseline: float | None = None,
                       uniform: float | None = None, title: str = "", ax=None, path=None):
    """Perplexity (log scale) against bits, one line per `hue` value, with error bars where `df`
    has `low`/`high` (e.g. `stats.perplexity_table`); a dashed unquantized baseline; with
    `uniform` (the vocabulary size) a line at uniform guessing: a model above it has lost more
    than all it knew, and its rank among such models means nothing. Draws into `ax` when given
    (one panel of a larger figure), and returns the figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    else:
        fig = ax.figure
    for name, part in df.dropna(subset=["bits"]).groupby(hue, sort=False):
        part = part.sort_values("bits")
        if {"low", "high"} <= set(part.columns) and part[["low", "high"]].notna().all().all():
            ax.errorbar(part.bits, part.perplexity, yerr=[part.perplexity - part.low, part.high - part.perplexity],
                        fmt="o-", capsize=2, ms=4, label=str(name))
        else:
            ax.plot(part.bits, part.perplexity, "o-", label=str(name))
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label="unquantized")
    if uniform is not None:
        ax.axhline(uniform, color="C3", ls=":", lw=1, label=f"uniform guessing ({uniform:,.0f})")
    ax.set(xlabel="bits per weight", ylabel="perplexity", yscale="log", title=title)
    ax.set_xticks(sorted(df.bits.dropna().unique()))
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def weight_histogram(w: torch.Tensor, w_hat: torch.Tensor, title: str = "", bins: int = 200, path=None):
    """Histogram (log counts) of a weight before and after quantization, and of the error."""
    w, w_hat = w.detach().float().flatten().numpy(), w_hat.detach().float().flatten().numpy()
    err = w_hat - w
    rel = np.linalg.norm(err) / np.linalg.norm(w)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    edges = np.linspace(min(w.min(), w_hat.min()), max(w.max(), w_hat.max()), bins + 1)
    a.hist(w, bins=edges, alpha=0.6, label="original", log=True)
    a.hist(w_hat, bins=edges, alpha=0.6, label="quantized", log=True, histtype="step", lw=1.2)
    a.set(xlabel="weight value", ylabel="count (log)", title=title or "weights")
    a.legend(fontsize=8)
    b.hist(err, bins=bins, log=True, color="C3")
    b.set(xlabel="Ŵ − W", title=f"error (‖Ŵ−W‖/‖W‖ = {rel:.4f})")
    fig.tight_layout()
    _save(fig, path)
    return fig


def group_size_curve(df: pd.DataFrame, x: str = "group_size", y: str = "perplexity", hue: str | None = None,
                     title: str = "", path=None):
    """A metric against group size (log2 x axis), optionally one line per `hue`, with error bars
    where `df` has `low`/`high` around `y` (a perplexity sweep's interval over windows)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    groups = df.groupby(hue, sort=False) if hue else [("", df)]
    for name, part in groups:
        part = part.sort_values(x)
        label = str(name) if hue else None
        if {"low", "high"} <= set(part.columns) and part[["low", "high"]].notna().all().all():
            ax.errorbar(part[x], part[y], yerr=[part[y] - part.low, part.high - part[y]], fmt="o-", capsize=2, ms=4,
                        label=label)
        else:
            ax.plot(part[x], part[y], "o-", label=label)
    ax.set(xscale="log", xlabel=x.replace("_", " "), ylabel=y.replace("_", " "), title=title)
    ax.set_xticks(sorted(df[x].unique()))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())     # a log axis labels its minor ticks too
    if hue:
        ax.legend(fontsize=8)
    _save(fig, path)
    return fig


COMPONENT_ORDER = ["embed", "q", "k", "v", "o", "gate", "up", "down", "head", "other"]


def layer_component_heatmap(df: pd.DataFrame, value: str, title: str = "", log: bool = False,
                            fmt: str | None = None, cmap: str = "viridis", path=None):
    """Heatmap of `value` with transformer layers as rows and components (q k v o gate up down) as
    columns; modules outside the blocks (embeddings, head) are left out. Mean if a cell has several rows."""
    part = df.dropna(subset=["layer"])
    table = part.pivot_table(index="layer", columns="component", values=value, aggfunc="mean")
    table = table[[c for c in COMPONENT_ORDER if c in table.columns]]
    table.index = table.index.astype(int)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * table.shape[1], 1.2 + 0.16 * table.shape[0]))
    norm = matplotlib.colors.LogNorm() if log else None
    sns.heatmap(table, ax=ax, cmap=cmap, norm=norm, annot=fmt is not None, fmt=fmt or "",
                annot_kws=dict(fontsize=6), cbar_kws=dict(label=value.replace("_", " ")))
    ax.set(title=title or value.replace("_", " "), xlabel="component", ylabel="layer")
    fig.tight_layout()
    _save(fig, path)
    return fig


def activation_depth(per_module: dict[str, pd.DataFrame], value: str = "abs_max", threshold: float | None = 6.0,
                     ylabel: str = "max |input activation|", path=None):
    """One panel per model ({name: `probes.activation_stats` per-module frame}): `value` of each
    component's input against layer (log y), a component in the same colour in every panel and
    one legend for all of them; a dotted line at `threshold` (LLM.int8's outlier magnitude, 6).
    Modules outside the blocks (no layer) are left out; q, k and v read the same input, so
    their lines coincide."""
    present = set().union(*(set(df.dropna(subset=["layer"]).component) for df in per_module.values()))
    comps = [c for c in COMPONENT_ORDER if c in present] + sorted(present - set(COMPONENT_ORDER))
    colours = dict(zip(comps, sns.color_palette("colorblind", max(len(comps), 10))))
    fig, axes = plt.subplots(1, len(per_module), figsize=(4.6 * len(per_module) + 1.2, 3.4), squeeze=False)
    for ax, (name, df) in zip(axes[0], per_module.items()):
        for comp, part in df.dropna(subset=["layer"]).groupby("component", sort=False):
            ax.plot(part.layer, part[value], "o-", ms=3, color=colours[comp], label=comp)
        if threshold is not None:
            ax.axhline(threshold, color="gray", ls=":", lw=1)
        ax.set(yscale="log", xlabel="layer", ylabel=ylabel, title=name)
    handles = [matplotlib.lines.Line2D([], [], color=colours[c], marker="o", ms=3, label=c) for c in comps]
    if threshold is not None:
        handles.append(matplotlib.lines.Line2D([], [], color="gray", ls=":", lw=1, label=f"|x| = {threshold:g}"))
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    fig.legend(handles=handles, fontsize=8, loc="upper right", title="component", title_fontsize=8)
    _save(fig, path)
    return fig


def tail_histogram(values, k: float = 6.0, title: str = "", bins: int = 200, xlabel: str = "value", path=None):
    """Histogram of values (log counts) with the tail beyond k standard deviations shaded and counted."""
    v = values.detach().float().flatten().numpy() if isinstance(values, torch.Tensor) else np.asarray(values).ravel()
    mu, sd = float(v.mean()), float(v.std())
    lo, hi = mu - k * sd, mu + k * sd
    tail = (v < lo) | (v > hi)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(v, bins=bins, log=True, color="C0")
    ax.axvspan(v.min(), lo, color="C3", alpha=0.15)
    ax.axvspan(hi, v.max(), color="C3", alpha=0.15, label=f"beyond {k:g}σ: {tail.sum()} ({tail.mean():.3%})")
    ax.set(xlabel=xlabel, ylabel="count (log)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def spectrum_plot(spectra: dict, title: str = "", normalize: bool = True, path=None):
    """Singular values on log axes, one line per entry of `spectra` (label -> array, descending);
    with `normalize`, divided by the largest so that shapes compare."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, s in spectra.items():
        s = np.asarray(s, dtype=float)
        ax.plot(np.arange(1, len(s) + 1), s / s[0] if normalize else s, label=str(label), lw=1.2)
    ax.set(xscale="log", yscale="log", xlabel="index i", ylabel="σ_i / σ_1" if normalize else "σ_i", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def scatter_trend(df: pd.DataFrame, x: str, y: str, hue: str | None = "component", logx: bool = False,
                  logy: bool = False, title: str = "", path=None):
    """Scatter of y against x with a least-squares trend line (fitted in the plotted, possibly log,
    coordinates) and Spearman's rank correlation in the title."""
    part = df[[x, y] + ([hue] if hue else [])].replace([np.inf, -np.inf], np.nan).dropna()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.scatterplot(data=part, x=x, y=y, hue=hue, ax=ax, s=18, hue_order=[c for c in COMPONENT_ORDER
                                                                         if hue == "component" and c in set(part[hue])]
                    or None)
    fx = np.log10(part[x]) if logx else part[x]
    fy = np.log10(part[y]) if logy else part[y]
    if len(part) > 2:
        slope, icpt = np.polyfit(fx, fy, 1)
        grid = np.linspace(fx.min(), fx.max(), 50)
        line = slope * grid + icpt
        ax.plot(10 ** grid if logx else grid, 10 ** line if logy else line, "k--", lw=1, label="trend")
    rho = part[x].corr(part[y], method="spearman")
    ax.set(xscale="log" if logx else "linear", yscale="log" if logy else "linear",
           xlabel=x.replace("_", " "), ylabel=y.replace("_", " "),
           title=(title + "\n" if title else "") + f"Spearman ρ = {rho:.2f} (n = {len(part)})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return fig


def abilities_vs_bits(intervals: pd.DataFrame, columns: list[str], methods: list[str] | None = None,
                      title: str = "", path=None):
    """The paper's figure: score against bits, one line per ability column with its 95% interval
    as error bars, one panel per method, and each column's majority-class baseline as a dotted
    line of the same colour (where it has one).

    `intervals` is `abilities.ability_intervals` output (one row per label and column, with bits,
    method, estimate, low, high, majority). The unquantized model (bits 16) is a square in every
    panel, not joined to the lines: a line joins only the bit widths its method measured, and every
    panel has the ticks of every bit width measured by any method, so a gap stays visible.
    """
    methods = methods or [m for m in intervals.method.unique() if m not in ("none", "mixed")]
    part_all = intervals[intervals.column.isin(columns)]
    base = part_all[part_all.bits == 16]
    colours = dict(zip(columns, sns.color_palette("colorblind", len(columns))))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.8), sharey=True, squeeze=False)
    for i, (ax, method) in enumerate(zip(axes[0], methods)):
        part = pd.concat([base, part_all[part_all.method == method]])
        for j, col in enumerate(columns):
            c = part[part.column == col].sort_values("bits")
            if c.empty:
                continue
            x = c.bits * (1 + 0.025 * (j - (len(columns) - 1) / 2))      # dodge the error bars apart
            for rows, fmt, label in ((c.bits == 16, "s", None), (c.bits != 16, "o-", col)):
                if rows.any():
                    ax.errorbar(x[rows], c.estimate[rows], yerr=[(c.estimate - c.low)[rows], (c.high - c.estimate)[rows]],
                                fmt=fmt, ms=4, capsize=2, color=colours[col], label=label)
            if c.majority.notna().any():
                ax.axhline(float(c.majority.dropna().iloc[0]), color=colours[col], ls=":", lw=1)
        ticks = sorted(part_all.bits.unique())
        ax.set(xlabel="bits per weight", title=f"{method.upper()}", xscale="log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(int(b)) for b in ticks])
        ax.minorticks_off()
        ax.invert_xaxis()
    axes[0][0].set_ylabel("score (95% interval)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [matplotlib.lines.Line2D([], [], color="gray", marker="s", ls="", ms=4),
                matplotlib.lines.Line2D([], [], color="gray", ls=":", lw=1)]
    labels += ["unquantized (16)", "majority-class baseline"]
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return fig


def component_bars(intervals: pd.DataFrame, columns: list[str], base_label: str = "base",
                   title: str = "", uniform: float | None = None, path=None):
    """One panel per score column: a bar per label (e.g. "only attention", "all but ffn"), in table
    order, with its 95% interval; the `base_label` row as a dashed line and, where the column has
    one, the majority-class baseline as a dotted line. Perplexity columns get a log axis and, with
    `uniform` (uniform guessing in the column's units: the vocabulary size, or it divided by the
    base perplexity for a ratio), a dotted line there.
    `intervals` is `abilities.ability_intervals` output (label, column, estimate, low, high, majority)."""
    labels = [x for x in dict.fromkeys(intervals.label) if x != base_label]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 0.32 * len(labels) + 1.8), squeeze=False,
                             sharey=True)
    for ax, col in zip(axes[0], columns):
        part = intervals[intervals.column == col].set_index("label")
        if part.empty:
            ax.set_visible(False)
            continue
        bars = part.loc[[x for x in labels if x in part.index]]
        ax.barh(bars.index, bars.estimate, color=sns.color_palette()[0],
                xerr=[bars.estimate - bars.low, bars.high - bars.estimate], error_kw=dict(lw=1, capsize=2))
        if base_label in part.index:
            ax.axvline(float(part.loc[base_label, "estimate"]), color="gray", ls="--", lw=1, label=base_label)
        if "majority" in part and part.majority.notna().any():
            ax.axvline(float(part.majority.dropna().iloc[0]), color="C3", ls=":", lw=1, label="majority class")
        if uniform is not None and col.startswith("perplexity"):
            ax.axvline(uniform, color="C3", ls=":", lw=1, label=f"uniform guessing ({uniform:,.0f})")
        ax.set(xlabel=col, xscale="log" if col.startswith("perplexity") else "linear")
        ax.legend(fontsize=7)
    axes[0][0].invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return fig


def accuracy_vs_params(results: pd.DataFrame, x: str = "adapted_params", y: str = "accuracy",
                       baseline: float | None = None, title: str = "", labels: bool | None = None, path=None,
                       chance: float | None = None, majority: float | None = None):
    """Held-out accuracy against the parameters each method trained (log x), one marker per
    method, coloured by bits (16 = unquantized); `baseline` (e.g. the head-only accuracy) as a
    dashed line. Runs of one method at one width at several budgets (different x) are joined by
    a line. Each point is labelled with its run when `labels` (default: up to 12 runs; beyond
    that the labels would pile up, and the legends name methods and widths). `results` is
    `workbench.adapt.results_table`; runs that trained nothing beyond the head are drawn at x = 1.
    Where the table has `low` and `high` (95% intervals) each point gets its error bar; `chance`
    and `majority` (accuracies of guessing and of always answering the commonest label) are
    drawn as dotted lines."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    markers = dict(zip(results.method.unique(), "os^vDP*Xph<>8dH1"))
    bits = sorted(results.bits.unique(), reverse=True)
    colours = dict(zip(bits, sns.color_palette("viridis", len(bits))))
    labels = len(results) <= 12 if labels is None else labels
    for (method, b), runs in results.groupby(["method", "bits"], sort=False):   # a budget sweep: one line
        if len(runs) > 1 and runs[x].nunique() == len(runs):
            runs = runs.sort_values(x)
            ax.plot(runs[x].clip(lower=1), runs[y], color=colours[b], lw=0.8, alpha=0.6, zorder=1)
    bars = {"low", "high"} <= set(results.columns)
    for r in results.itertuples():
        if bars and pd.notna(r.low) and pd.notna(r.high):
            ax.errorbar(max(getattr(r, x), 1), getattr(r, y), yerr=[[getattr(r, y) - r.low], [r.high - getattr(r, y)]],
                        color=colours[r.bits], lw=0.8, capsize=2, zorder=1)
        ax.scatter(max(getattr(r, x), 1), getattr(r, y), marker=markers[r.method], color=colours[r.bits],
                   s=60, edgecolor="black", lw=0.5, zorder=2)
        if labels:
            ax.annotate(r.label, (max(getattr(r, x), 1), getattr(r, y)), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    width_handles = [ax.scatter([], [], color=colours[b], label="full precision" if b == 16 else f"W{b}") for b in bits]
    method_handles = [ax.scatter([], [], marker=m, facecolor="white", edgecolor="black", label=name)
                      for name, m in markers.items()]
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1)
    lines = [(chance, "chance", "tab:red"), (majority, "majority class", "tab:orange")]
    if chance is not None and majority is not None and abs(chance - majority) < 1e-9:   # one line, both names
        lines = [(chance, "chance = majority class", "tab:red")]
    for value, name, colour in lines:
        if value is not None:
            ax.axhline(value, color=colour, ls=":", lw=1)
            ax.annotate(name, (0, value), xycoords=("axes fraction", "data"), xytext=(4, 2),
                        textcoords="offset points", ha="left", fontsize=7, color=colour)
    ax.set(xscale="log", xlabel=f"{x} (log)", ylabel=y, title=title)
    widths = ax.legend(handles=width_handles, fontsize=8, loc="lower right")
    ax.add_artist(widths)
    ax.legend(handles=method_handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="method",
              title_fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig
