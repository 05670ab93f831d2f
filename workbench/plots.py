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
                       title: str = "", path=None):
    """Perplexity (log scale) against bits, one line per `hue` value; a dashed unquantized baseline."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, part in df.dropna(subset=["bits"]).groupby(hue, sort=False):
        part = part.sort_values("bits")
        ax.plot(part.bits, part.perplexity, "o-", label=str(name))
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label="unquantized")
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
    """A metric against group size (log2 x axis), optionally one line per `hue`."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    groups = df.groupby(hue, sort=False) if hue else [("", df)]
    for name, part in groups:
        part = part.sort_values(x)
        ax.plot(part[x], part[y], "o-", label=str(name) if hue else None)
    ax.set(xscale="log", xlabel=x.replace("_", " "), ylabel=y.replace("_", " "), title=title)
    ax.set_xticks(sorted(df[x].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    if hue:
        ax.legend(fontsize=8)
    _save(fig, path)
    return fig
