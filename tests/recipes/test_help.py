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


# the recipes whose options are a dataclass (recipes.common.parse_config); the shared ones come
# from recipes.options
DATACLASS_RECIPES = [
    m for m in RECIPES if m not in {"recipes.benchmark", "recipes.benchmark.gpu_check"}
]


def _common_block(help_text: str) -> dict[str, str]:
    """``{flag: its help entry}`` of the "common options" block of a recipe's ``--help``."""
    block = help_text.split("common options (the same in every recipe):\n", 1)
    if len(block) == 1:
        return {}
    entries: dict[str, str] = {}
    flag = None
    for line in block[1].splitlines():
        if not line.startswith("  "):
            break
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag is not None:
            entries[flag] += "\n" + line
    return entries


def test_every_recipe_lists_the_shared_options_the_same_way() -> None:
    """One block of common options: each shared flag's help entry is the same text in every
    recipe that takes it (one default, one help; ``recipes.options``), and the flags each
    recipe shares include the ones it must (output folder, seed, progress, sizes, ...)."""
    blocks = {m: _common_block(_help("-m", m).stdout) for m in DATACLASS_RECIPES}
    expected = {
        "recipes.finetune.train": {"--output_dir", "--overwrite_output_dir",
                                   "--resume_from_checkpoint", "--seed", "--progress",
                                   "--block_size", "--nblocks"},
        "recipes.dreambooth.train": {"--output_dir", "--overwrite_output_dir",
                                     "--resume_from_checkpoint", "--seed", "--progress",
                                     "--block_size", "--nblocks"},
        "recipes.lipconvnet.train": {"--output_dir", "--overwrite_output_dir",
                                     "--resume_from_checkpoint", "--seed", "--progress"},
        "recipes.demo": {"--output_dir", "--overwrite_output_dir", "--seed"},
        "recipes.compare": {"--output_dir"},
        "recipes.dreambooth.evaluate": {"--output_dir", "--overwrite_output_dir", "--seed"},
    }  # fmt: skip
    for module, flags in expected.items():
        assert flags <= set(blocks[module]), (module, sorted(blocks[module]))
    seen: dict[str, tuple[str, str]] = {}
    for module, block in blocks.items():
        for flag, entry in block.items():
            first = seen.setdefault(flag, (module, entry))
            assert entry == first[1], f"{flag}: {module} and {first[0]} differ"
    finetune = _help("-m", "recipes.finetune.train").stdout
    assert "--block_size" in finetune
    assert "--block-size" not in finetune  # both spellings parse; help shows one


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [(["--block-size", "8"], "block_size", 8), (["--block_size", "8"], "block_size", 8),
     (["--no-progress"], "progress", False), (["--max-steps", "3"], "max_steps", 3),
     (["--overwrite-output-dir"], "overwrite_output_dir", True)],
)  # fmt: skip
def test_both_flag_spellings_parse(argv: list[str], field: str, value: object) -> None:
    from recipes.common import parse_config
    from recipes.finetune.config import FinetuneConfig

    cfg = parse_config(FinetuneConfig, argv, "x")
    assert getattr(cfg, field) == value


def test_sorth_plot_and_benchmark_take_both_spellings() -> None:
    from recipes.benchmark.cli import parse

    _, ns = parse(["--block_size", "16", "--lora_r", "4"])
    assert (ns.block_size, ns.lora_r) == (16, 4)
    from sorth.cli import _parser

    args = _parser().parse_args(["plot", "--n", "16", "--block_size", "4", "--out", "x.png"])
    assert args.block_size == 4
