"""The one-page report: built from executed notebooks, their findings tables and the figures they write."""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from workbench import report_page


def _checkout(tmp_path, with_findings=True):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "figures").mkdir()
    for name in ("sweep_w2.png", "sweep_w4.png", "other.png", "unrelated.png"):
        (tmp_path / "figures" / name).write_bytes(b"png")
    code = new_code_cell('fig = plot(path=FIG / f"sweep_w{BITS}.png")\nsave_figure(fig, "other")')
    table = new_code_cell("findings.style", outputs=[new_output(
        "execute_result", data={"text/html": "<table><tr><td>4-bit keeps ICL</td><td>contradicts</td></tr></table>",
                                "text/plain": "findings"}, execution_count=3)])
    cells = [new_markdown_cell("# 01 · A study\n\nThe question, *emphasised*.\n\nMore narrative."), code]
    if with_findings:
        cells += [new_markdown_cell("## 3. Findings\nThe claims."), table]
    nbformat.write(new_notebook(cells=cells), tmp_path / "notebooks" / "01_study.ipynb")
    return tmp_path


def test_the_page_holds_each_notebooks_findings_and_the_figures_it_writes(tmp_path):
    root = _checkout(tmp_path)
    page = report_page.write_report_page(root).read_text()
    assert "<h2>01 · A study</h2>" in page and "<em>emphasised</em>" in page and "More narrative" not in page
    assert "<td>contradicts</td>" in page and "no findings table yet" not in page
    # the f-string name matches both bit widths, the literal name its file, nothing else
    imgs = [line.split('src="')[1].split('"')[0] for line in page.splitlines() if "<img" in line]
    assert imgs == ["../figures/sweep_w2.png", "../figures/sweep_w4.png", "../figures/other.png"]
    assert 'href="../notebooks/01_study.ipynb"' in page and "smollm2-135m" in page     # link, model caveats
    assert [p.name for p in (root / "report").iterdir()] == ["index.html"]                 # no temporary left


def test_a_notebook_without_findings_says_so_and_an_empty_checkout_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    page = report_page.write_report_page(_checkout(tmp_path / "a", with_findings=False)).read_text()
    assert "This notebook has no findings table yet." in page
    (tmp_path / "b" / "notebooks").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="quant-workbench checkout"):
        report_page.write_report_page(tmp_path / "b")


def test_the_committed_page_is_current():
    """report/index.html is what the committed notebooks and figures give (`make report` rebuilds it)."""
    root = report_page.project_dir()
    assert report_page.report_page_html(root) == (root / "report" / "index.html").read_text(), \
        "report/index.html is stale: run `make report`"
