"""No import cycles among the modules of ``sorth/`` and ``recipes/``, read from the files.

Every ``import`` statement counts, wherever it is: at the top, inside a function (a local import
that "breaks" a cycle at run time still is one) or under ``if TYPE_CHECKING:``. An edge goes from
a module to the module it names (``from a.b import c`` names ``a.b``, and ``a.b.c`` too when that
is a module); importing ``a.b`` also runs the package ``a/__init__.py``, but that implicit edge is
left out, since every package ``__init__`` that gathers its submodules would otherwise close a
cycle with each of them. The tuner is layered as PEFT's method packages
(``peft_type → config → layer → bnb → model``; only ``sorth/tuner/__init__.py`` sees config and
model together), the recipes as ``common → <recipe>.config → <recipe>'s parts → <recipe>.run``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sorth", "recipes")


def module_name(path: Path, root: Path) -> str:
    """``sorth/tuner/layer.py`` → ``sorth.tuner.layer``; ``recipes/demo/__init__.py`` →
    ``recipes.demo``."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """``(module, name)`` pairs an import statement names (``name``: ``from m import name``)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, None
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolved against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        for alias in node.names:
            yield target, alias.name


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it imports, from every import statement in it."""
    files = {
        module_name(p, root): p for top in packages for p in sorted((root / top).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, set())
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target, name in _imported(node, module, is_package):
                if name is not None and f"{target}.{name}" in files:
                    edges.add(f"{target}.{name}")  # `from a import b`, b a submodule
                if target in files:
                    edges.add(target)
        edges.discard(module)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_scan_sees_every_module() -> None:
    graph = import_graph(ROOT)
    assert {"sorth.tuner.config", "sorth.tuner.model", "recipes.finetune.train"} <= set(graph)
    assert "sorth.tuner.layer" in graph["sorth.tuner.bnb"]  # a top-level edge
    assert "sorth.tuner.model" in graph["sorth.tuner"]


def test_function_level_and_relative_imports_are_edges(tmp_path: Path) -> None:
    pkg = tmp_path / "sorth"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from sorth.sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from .a import f\n")  # fmt: skip
    graph = import_graph(tmp_path, ("sorth",))
    assert graph["sorth.sub"] == {"sorth.sub.a"}
    assert strongly_connected(graph) == [["sorth.sub.a", "sorth.sub.b"]]


def test_no_import_cycles() -> None:
    cycles = strongly_connected(import_graph(ROOT))
    assert cycles == [], f"import cycles (strongly connected components): {cycles}"
