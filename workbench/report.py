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


def snapshot(name: str, args: dict, compute, recompute: bool | None = None):
    """`compute()`, or its snapshot committed with the repository when made from exactly `args`.

    For results that take minutes (a notebook's heavy sweep): data/snapshots/<name>.json holds
    `args` (JSON-like: what the result depends on), the versions of the workbench and of the
    libraries that train and evaluate (torch, transformers, peft, lm-eval), and the result
    (JSON-like: numbers, strings, lists, dicts). It is used only when args and versions are
    exactly those of this call; otherwise, or with `recompute=True` (default:
    $WORKBENCH_RECOMPUTE == "1"), `compute()` runs and the file is rewritten atomically. The
    result is always returned as read back from the JSON, so both paths show the same thing.
    tests/test_snapshots.py recomputes a sample of every committed snapshot."""
    import importlib.metadata as md
    import json

    from workbench import __version__
    from workbench.cache import atomic_write_text

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    versions = {"workbench": __version__, **{p: version(p) for p in ("torch", "transformers", "peft", "lm_eval")}}
    try:
        head = {"args": json.loads(json.dumps(args)), "versions": versions}   # as it reads back: lists, not tuples
    except TypeError as e:
        raise TypeError(f"snapshot args must be JSON-like (numbers, strings, lists, dicts): {e}") from None
    path = project_dir() / "data" / "snapshots" / f"{name}.json"
    if recompute is None:
        recompute = os.environ.get("WORKBENCH_RECOMPUTE") == "1"
    if not recompute and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("args") == head["args"] and stored.get("versions") == versions:
            return stored["result"]
    result = compute()
    text = json.dumps({**head, "result": result}, indent=1, allow_nan=True)   # insertion order kept
    atomic_write_text(path, text + "\n")
    return json.loads(text)["result"]


def read_snapshot_json(name: str) -> dict:
    """The stored {args, versions, result} of snapshot `name` (see `snapshot`)."""
    import json

    path = project_dir() / "data" / "snapshots" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no snapshot {name!r} at {path}; run the notebook that makes it with "
                                "WORKBENCH_RECOMPUTE=1 (or make reproduce)")
    return json.loads(path.read_text())
