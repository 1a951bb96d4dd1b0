"""The shipped modules import each other without circles.

Reads every module's relative imports (``from . import x``, ``from .x import y``, at any depth,
inside functions too) from its source, builds the graph of shipped modules and fails naming each
circle. Shipped: every .py file of the repository except tests/, bench/, scripts/, wheels/,
docs/, build/ and hidden folders (.venv). Nothing is imported, so no bpy or torch is needed.

Run it alone with ``python -m pytest tests/test_imports.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

#: Top-level folders that are not shipped.
NOT_SHIPPED = ("tests", "bench", "scripts", "wheels", "docs", "build")


def shipped_modules(root: Path) -> dict[str, Path]:
    """Dotted module name (relative to the package root, "" for its __init__) -> file."""
    mods: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_SHIPPED or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, is_package: bool, node: ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The shipped modules one relative ``from ... import ...`` names: the module it imports from
    and, for ``from . import x``, each imported name that is a module."""
    if not node.level:
        return []
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    source = ".".join(base + ([node.module] if node.module else []))
    names = [source] + [f"{source}.{a.name}" if source else a.name for a in node.names]
    return [n for n in names if n in mods]


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = shipped_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                graph[module].update(t for t in _targets(module, path.name == "__init__.py", node, mods) if t != module)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(circles)


def _describe(circle: list[str], graph: dict[str, set[str]]) -> str:
    """One circle as its import edges, e.g. ``a -> b, b -> a``."""
    members = set(circle)
    edges = [f"{a} -> {b}" for a in circle for b in sorted(graph[a] & members)]
    return f"{' <-> '.join(circle)} ({', '.join(edges)})"


def test_the_graph_sees_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport os\n")
    (pkg / "tests").mkdir()
    (pkg / "tests" / "test_x.py").write_text("from ..a import f\n")
    graph = import_graph(pkg)
    assert set(graph) == {"", "a", "sub", "sub.b"}
    assert graph[""] == {"a"} and graph["a"] == {"sub.b"} and graph["sub.b"] == {"a"}
    assert import_circles(graph) == [["a", "sub.b"]]


def test_no_import_circles_among_the_shipped_modules():
    graph = import_graph(REPO)
    assert "engine.recon" in graph and "cli" in graph
    circles = import_circles(graph)
    assert not circles, "import circles among the shipped modules:\n" + "\n".join(_describe(c, graph) for c in circles)
