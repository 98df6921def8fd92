"""Import boundaries: the core imports only torch, the glue imports lazily, nobody edits sys.path.

* ``import sorth`` / ``sorth.nn`` / ``sorth.integrations`` pull in no PEFT/transformers/diffusers.
* No core module (``sorth/`` outside ``tuner/``, ``integrations/`` and the command) names a
  heavy library in any import statement, and ruff's banned-api rule is relaxed only for those.
* A missing optional dependency is one ``ImportError`` naming the extra to install.
* No ``sys.path`` edits in ``sorth/``, ``recipes/`` or ``tests/``; the top-level
  ``compat/`` folder (the compatibility suites) is not a package and has no sub-folder named
  like a framework.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("peft", "transformers", "diffusers", "accelerate", "safetensors")
BANNED = ("peft", "transformers", "diffusers", "accelerate")  # ruff TID251 banned-api
# the only parts of sorth/ that may import the frameworks (ruff per-file-ignores TID251)
GLUE = ("sorth/tuner/**", "sorth/integrations/**", "sorth/cli/**")


def _glue(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel.startswith(g.removesuffix("**")) or rel == g for g in GLUE)


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    "module",
    [
        "sorth",
        "sorth.parametrizations",
        "sorth.gs",
        "sorth.kernels",
        "sorth.nn",
        "sorth.integrations",
    ],
)
def test_core_imports_only_torch(module: str) -> None:
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_core_modules_name_no_framework() -> None:
    core = [p for p in sorted((ROOT / "sorth").rglob("*.py")) if not _glue(p)]
    assert len(core) > 10  # the scan sees the core
    offenders = {
        p.relative_to(ROOT).as_posix(): sorted(_imported_roots(p) & set(HEAVY)) for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ruff_bans_the_frameworks_outside_the_glue() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    banned = lint["flake8-tidy-imports"]["banned-api"]
    assert set(BANNED) <= set(banned)
    relaxed = {k for k, v in lint["per-file-ignores"].items() if "TID251" in v}
    in_sorth = {k for k in relaxed if k.startswith("sorth")}
    assert in_sorth <= set(GLUE), in_sorth
    assert "sorth/**" not in relaxed
    assert {"sorth/tuner/**", "sorth/integrations/**"} <= in_sorth


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("sorth.integrations.diffusers", "diffusers", "diffusion"),
        ("sorth.integrations.peft", "peft", "peft"),
        ("sorth.integrations.transformers", "transformers", "peft"),
        ("sorth.integrations.accelerate", "accelerate", "peft"),
    ],
)
def test_missing_extra_is_one_clear_error(module: str, blocked: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from sorth.integrations import MissingExtraError\n"
        f"try:\n    import {module}\nexcept MissingExtraError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"{module} needs {blocked}, which is not installed: install sorth's "
        f'"{extra}" extra (in a clone: pip install -c constraints.txt -e ".[{extra}]")'
    )


def test_no_sys_path_edits() -> None:
    def edits(p: Path) -> list[str]:
        return [
            f"{p.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(ast.parse(p.read_text(), str(p)))
            if isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ]

    tops = ("sorth", "recipes", "tests", "docs", "scripts")
    files = [p for top in tops for p in sorted((ROOT / top).rglob("*.py"))]
    assert len(files) > 50
    assert [e for p in files for e in edits(p)] == []


def test_top_level_compat_is_not_a_package() -> None:
    folder = ROOT / "compat"
    assert not (ROOT / "integrations").exists()  # one folder of that name: sorth/integrations
    assert (folder / "README.md").is_file()
    assert not (folder / "__init__.py").exists()
    shadowing = [p.name for p in folder.iterdir() if p.name.removesuffix(".py") in HEAVY]
    assert shadowing == []
