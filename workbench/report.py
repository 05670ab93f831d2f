"""Write result tables and figures where the project keeps them, atomically.

    from workbench.report import save_table, save_figure
    save_table(df, "quickstart_perplexity")     # -> data/results/quickstart_perplexity.csv
    save_figure(fig, "quickstart_perplexity")   # -> figures/quickstart_perplexity.png

The project folder is found by walking up from the working directory to the pyproject.toml of
quant-workbench (notebooks run from notebooks/); $WORKBENCH_OUTPUT overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from workbench.cache import atomic_path


def project_dir() -> Path:
    """The quant-workbench checkout that holds figures/ and data/results/."""
    if os.environ.get("WORKBENCH_OUTPUT"):
        return Path(os.environ["WORKBENCH_OUTPUT"])
    for folder in [Path.cwd(), *Path.cwd().parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.exists() and 'name = "quant-workbench"' in pyproject.read_text():
            return folder
    raise FileNotFoundError("not inside a quant-workbench checkout; set WORKBENCH_OUTPUT to the "
                            "folder where figures/ and data/results/ should go")


def save_table(df: pd.DataFrame, name: str, float_format: str = "%.6g") -> Path:
    """Write `df` to data/results/<name>.csv (floats to 6 significant digits) and return the path."""
    path = project_dir() / "data" / "results" / f"{name}.csv"
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)
    return path


def write_png(fig, path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG to `path`, atomically, and return the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return Path(path)


def save_figure(fig, name: str, dpi: int = 120) -> Path:
    """Write a matplotlib figure to figures/<name>.png and return the path."""
    return write_png(fig, project_dir() / "figures" / f"{name}.png", dpi)


def interval_cells(intervals: pd.DataFrame, index: str = "label", columns: str = "column",
                   digits: int = 3) -> pd.DataFrame:
    """A wide table for reading: one row per `index`, one column per `columns` value, each cell
    "estimate [low, high]" (scores to 2 decimals, larger numbers to `digits` significant figures;
    n in the column header when every row has the same n), from a long
    table with estimate, low, high and n (e.g. `abilities.ability_intervals`)."""
    def fmt(x):        # scores (at most 1) to 2 decimals, other numbers (perplexity) to `digits` figures
        return f"{x:.2f}" if abs(x) <= 1 else f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"

    cells = intervals.assign(cell=[f"{fmt(e)} [{fmt(lo)}, {fmt(hi)}]" if pd.notna(lo) else fmt(e)
                                   for e, lo, hi in zip(intervals.estimate, intervals.low, intervals.high)])
    wide = cells.pivot(index=index, columns=columns, values="cell")
    wide = wide.loc[list(dict.fromkeys(intervals[index])), list(dict.fromkeys(intervals[columns]))]
    n = intervals.groupby(columns, sort=False).n.agg(lambda v: int(v.iloc[0]) if v.nunique() == 1 else None)
    wide.columns = [f"{c} (n={n[c]})" if n[c] is not None else c for c in wide.columns]
    wide.columns.name = None
    return wide


def interval_text(estimate, low, high, fmt: str = ".4g") -> list[str]:
    """Estimates with their intervals as table cells, "37.98 [35.09, 41.13]", element by element
    (columns of a table: `df.assign(perplexity=interval_text(df.perplexity, df.low, df.high))`);
    `fmt` is a format spec, e.g. "+.3f" for differences."""
    return [f"{e:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" for e, lo, hi in zip(estimate, low, high)]


def paired_cell(test: dict, digits: int = 2, unit: str = "") -> str:
    """One paired test as a findings-table cell: "a 0.70 vs b 0.58: +0.12 [+0.05, +0.19], p=0.001,
    n=180 (3 seeds)", from a dict with a, b, a_score, b_score, difference, low, high, p_value, n
    and optionally seeds (`adapt.paired_runs`, `abilities.paired_items`, `stats.paired_windows`)."""
    f = f".{digits}f"
    seeds = f" ({test['seeds']} seeds)" if test.get("seeds", 1) > 1 else ""
    return (f"{test['a']} {test['a_score']:{f}} vs {test['b']} {test['b_score']:{f}}: {test['difference']:+{f}}{unit} "
            f"[{test['low']:+{f}}, {test['high']:+{f}}], p={test['p_value']:.2g}, n={test['n']}{seeds}")
