"""Every recipe and every ``sorth`` command answers ``--help`` (issue 11), as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = [
    "recipes.finetune.train",
    "recipes.dreambooth.train",
    "recipes.dreambooth.evaluate",
    "recipes.lipconvnet.train",  # regression: a '%' in a help string crashed --help
    "recipes.lipschitz_lm.train",
    "recipes.lipschitz_lm.report",
    "recipes.demo",
    "recipes.benchmark",
    "recipes.compare",
]
COMMANDS = [[], ["inspect"], ["merge"], ["plot"], ["demo"]]


def _help(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


def test_every_recipe_is_listed() -> None:
    found = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__")
        for p in (ROOT / "recipes").rglob("*.py")
        if "if __name__ == " in p.read_text()
    }
    assert found == set(RECIPES)


@pytest.mark.parametrize("module", RECIPES)
def test_recipe_help(module: str) -> None:
    proc = _help("-m", module)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ")
    if module != "recipes.benchmark":  # the dataclass recipes name how they are run
        assert proc.stdout.startswith(f"usage: python -m {module} ")
    assert "--output_dir" in proc.stdout or "--out" in proc.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sorth")
def test_sorth_command_help(command: list[str]) -> None:
    proc = _help("-m", "sorth.cli", *command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: sorth{' ' + command[0] if command else ''}")
