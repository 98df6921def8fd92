"""Every recipe and every ``sorth`` command answers ``--help``, as a user runs them, and every flag
there has a help text."""

from __future__ import annotations

import re
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
    "recipes.benchmark.gpu_check",
    "recipes.compare",
]
COMMANDS = [[], ["inspect"], ["merge"], ["plot"], ["demo"]]


# an option line of argparse's help: two spaces, the flags, then the help text after 2+ spaces
# (or on the next line, indented, when the flags are long)
_OPTION = re.compile(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$")


def undocumented(help_text: str) -> list[str]:
    """The flags of an argparse ``--help`` output that have no help text."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = _OPTION.match(line)
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        if m and not m.group(2) and not re.match(r"^\s{8,}\S", follows):
            missing.append(m.group(1).split(",")[0].split()[0])
    return missing


def test_undocumented_finds_a_flag_without_help() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--documented", type=int, help="says what it does")
    parser.add_argument("--a-long-flag-name-that-wraps", type=int, help="on the next line")
    parser.add_argument("--bare", type=int)
    parser.add_argument("--bare-switch", action="store_true")
    assert undocumented(parser.format_help()) == ["--bare", "--bare-switch"]


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
    assert not undocumented(proc.stdout), f"flags without a help text: {undocumented(proc.stdout)}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sorth")
def test_sorth_command_help(command: list[str]) -> None:
    proc = _help("-m", "sorth.cli", *command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: sorth{' ' + command[0] if command else ''}")
    assert not undocumented(proc.stdout), f"flags without a help text: {undocumented(proc.stdout)}"
