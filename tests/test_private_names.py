"""No module of ``sorth/`` or ``recipes/`` imports another module's underscore name.

A helper another module needs is public (a name without ``_`` and a docstring, listed in its
module's ``__all__``); an underscore name stays in the module that defines it. Importing a
private *module* (``from sorth import _peft_hook``) is its package's business and allowed; an
underscore name imported *from* it is not. Read statically from the files, like
:mod:`tests.test_import_cycles`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_import_cycles import PACKAGES, ROOT, module_name


def private_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """``"importer: from module import _name"`` for every underscore name imported across
    modules of ``packages`` (submodules, which are files, excepted)."""
    files = {module_name(p, root): p for top in packages for p in (root / top).rglob("*.py")}
    found = []
    for module, path in sorted(files.items()):
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] not in packages or target == module:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{target}.{alias.name}" not in files:
                    found.append(f"{module}: from {target} import {alias.name}")
    return found


def test_the_scan_finds_a_private_import(tmp_path: Path) -> None:
    pkg = tmp_path / "sorth"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from sorth import _hook\n")  # a module: allowed
    (pkg / "_hook.py").write_text("_x = 1\n")
    (pkg / "a.py").write_text("def f():\n    from sorth._hook import _x\n")
    assert private_imports(tmp_path, ("sorth",)) == ["sorth.a: from sorth._hook import _x"]


def test_no_module_imports_another_modules_underscore_name() -> None:
    found = private_imports(ROOT)
    assert found == [], "make these public (with a docstring) or keep them in their module:\n" + (
        "\n".join(found)
    )
