"""Imports run one way: no circle among the workbench modules, counting imports inside functions.

Every `import workbench.x` / `from workbench.x import y` / `from workbench import x` anywhere in a
module (top level or inside a function) is an edge; a circle means two rooms that each need the
other, which the layout forbids (hqq's rule: the core imports its helpers, never the reverse).
"""

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the workbench modules it imports}, package __init__ files named by their package."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from workbench.quant import grid` imports workbench.quant.grid when that is a module
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            for t in targets:
                while t not in modules and "." in t:          # an attribute of a module: that module
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle found by depth-first search, each listed once from its smallest member."""
    found = set()

    def walk(start, node, path, on_path):
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.add(tuple(path))
            elif nxt not in on_path and nxt > start:
                walk(start, nxt, path + [nxt], on_path | {nxt})

    for start in sorted(graph):
        walk(start, start, [start], {start})
    return [list(c) for c in sorted(found)]


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_workbench_modules():
    graph = import_graph()
    assert "workbench.quant.gptq" in graph                   # the walk sees the sub-package
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(" -> ".join(c + c[:1]) for c in found)
