"""Every notebook is a jupytext pair: notebooks/NN_name.ipynb (with outputs, what nbval checks) and
notebooks/NN_name.py (percent script, what you read, lint, grep and review). The two must hold the
same cells: same kind, same source, same tags. Edit either, then `make notebooks-sync`.
"""

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    import jupytext

    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_there_are_notebooks():
    assert len(PAIRS) >= 7


@pytest.mark.parametrize("notebook", PAIRS, ids=lambda p: p.stem)
def test_notebook_and_script_agree(notebook):
    pytest.importorskip("jupytext")
    script = notebook.with_suffix(".py")
    assert script.exists(), f"{notebook.name} has no paired script: run `make notebooks-sync`"
    a, b = _cells(notebook), _cells(script)
    differing = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert len(a) == len(b) and not differing, (
        f"{notebook.name} and {script.name} disagree (cells: {len(a)} vs {len(b)}; first differing cell "
        f"{differing[:1] or min(len(a), len(b))}): edit one, then run `make notebooks-sync` "
        "(jupytext --sync keeps the newer of the two)")


def test_the_check_sees_a_difference(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(PAIRS[0])
    jupytext.write(nb, tmp_path / "x.ipynb")
    nb.cells[-1].source += "\n# an edit made only in the script"
    jupytext.write(nb, tmp_path / "x.py", fmt="py:percent")
    assert _cells(tmp_path / "x.ipynb") != _cells(tmp_path / "x.py")
