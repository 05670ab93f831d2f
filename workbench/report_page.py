"""One page for readers without Jupyter: every notebook's findings table and figures.

    python -m workbench.report_page          # -> report/index.html (what `make reproduce` runs last)

The page is built from the committed, executed notebooks, so it shows exactly what they show:
for each notebook its title and opening paragraph, the table its "Findings" section printed
(or a plain "no findings table yet"), the figures it wrote to figures/ (found in its source:
`FIG / "name.png"`, `save_figure(fig, "name")`; an f-string name matches every file it can
make), and a link to the notebook. Then the caveats of the bundled models. Needs the dev
extras (nbformat and mistune come with nbconvert).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from workbench.cache import atomic_write_text
from workbench.report import project_dir

# a figure a notebook writes: FIG / "x.png", ... / "figures" / "x.png", save_figure(fig, "x")
FIGURE_NAME = re.compile(r'(?:FIG\s*/\s*|"figures"\s*/\s*|save_figure\(\s*\w+\s*,\s*)f?"([^"]+?)(?:\.png)?"')
FINDINGS_HEADING = re.compile(r"^#+\s*(?:\d+\.\s*)?Findings", re.MULTILINE)

STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;
vertical-align:top;text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
.none{color:#777;font-style:italic}section{border-top:2px solid #ddd;margin-top:2rem}"""


def notebook_figures(source: str, figures_dir: Path) -> list[Path]:
    """The files of `figures_dir` that the notebook source `source` writes, in the order it names
    them; an f-string name ("x_{kind}") matches every file it can make ("x_*.png")."""
    out = []
    for name in FIGURE_NAME.findall(source):
        pattern = re.sub(r"\{[^}]*\}", "*", name) + ".png"
        out += [p for p in sorted(figures_dir.glob(pattern)) if p not in out]
    return out


def _text(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def findings_html(nb) -> str | None:
    """The HTML (or, failing that, the text) that the first code cell after an executed
    notebook's "Findings" heading displayed last; None when it has no such section or output."""
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and FINDINGS_HEADING.search(_text(cell)):
            code = next((c for c in cells[i + 1:] if c.cell_type == "code"), None)
            for out in reversed(code.get("outputs", []) if code is not None else []):
                data = out.get("data", {})
                if "text/html" in data:
                    return "".join(data["text/html"])
                if "text/plain" in data:
                    return f"<pre>{html.escape(''.join(data['text/plain']))}</pre>"
            return None
    return None


def notebook_summary(ipynb: Path, figures_dir: Path) -> dict:
    """Title, opening paragraph (markdown), findings HTML or None, and figure files of one notebook."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    first = next((_text(c) for c in nb.cells if c.cell_type == "markdown"), "")
    lines = first.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ipynb.stem
    body = "\n".join(lines[1:] if lines and lines[0].startswith("#") else lines).strip()
    opening = body.split("\n\n")[0] if body else ""
    source = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    return {"notebook": ipynb.name, "title": title, "opening": opening, "findings": findings_html(nb),
            "figures": notebook_figures(source, figures_dir)}


def model_caveats() -> dict[str, str]:
    """Registry name -> the caveat `load_model` attaches to it, for the bundled models that have one."""
    from workbench.models import DEQUANTIZED_CAVEAT, REGISTRY

    return {name: DEQUANTIZED_CAVEAT.format(fmt=e.source_format, dtype="fp32", hub=e.hub_id)
            for name, e in REGISTRY.items() if e.member.endswith(".gguf")}


def report_page_html(root: str | Path | None = None) -> str:
    """The HTML of report/index.html for the checkout `root` (default: `project_dir()`), from its
    executed notebooks/*.ipynb and figures/; links are relative to report/."""
    import mistune

    root = Path(root) if root is not None else project_dir()
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb under {root}; run from a quant-workbench checkout")
    rel = Path("..")
    parts = [f"<!doctype html><meta charset=utf-8><title>quant-workbench: findings</title><style>{STYLE}</style>",
             "<h1>quant-workbench: what each notebook found</h1>",
             "<p>Each section is one notebook: its question, its findings table (the paper's claim, this "
             "workbench's result with its interval and test, and the verdict) and its figures, as the committed "
             "notebook shows them. Every number was computed by the notebook from the committed snapshots "
             "(<code>make reproduce</code> recomputes them all).</p><ul>"]
    summaries = [notebook_summary(p, root / "figures") for p in notebooks]
    parts += [f'<li><a href="#{html.escape(s["notebook"])}">{html.escape(s["title"])}</a></li>' for s in summaries]
    parts.append("</ul>")
    for s in summaries:
        link = f"{rel.as_posix()}/notebooks/{s['notebook']}"
        parts.append(f'<section id="{html.escape(s["notebook"])}"><h2>{html.escape(s["title"])}</h2>'
                     f'<p><a href="{html.escape(link)}">{html.escape(s["notebook"])}</a></p>{mistune.html(s["opening"])}')
        parts.append("<h3>Findings</h3>" + (s["findings"] if s["findings"] else
                                            '<p class="none">This notebook has no findings table yet.</p>'))
        for fig in s["figures"]:
            src = f"{rel.as_posix()}/figures/{fig.name}"
            parts.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(fig.stem)}">'
                         f"<figcaption>{html.escape(fig.name)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("<section><h2>Caveats of the bundled models</h2><ul>")
    parts += [f"<li><b>{html.escape(n)}</b>: {html.escape(c)}</li>" for n, c in model_caveats().items()]
    parts.append("</ul><p>The fp32 MiniLM encoder is a genuinely full-precision checkpoint.</p></section>")
    return "\n".join(parts) + "\n"


def write_report_page(root: str | Path | None = None) -> Path:
    """Write report/index.html of the checkout `root` (default: `project_dir()`), atomically, and
    return its path (see `report_page_html`)."""
    root = Path(root) if root is not None else project_dir()
    return atomic_write_text(root / "report" / "index.html", report_page_html(root))


if __name__ == "__main__":
    print(write_report_page())
