"""``sorth demo``: run the main job (``python -m recipes.demo``) in the checkout."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sorth.cli.common import CLIError

__all__ = ["DEMO_MODULE", "add_parser", "demo_entry", "demo_root", "run", "run_demo"]

# Note [demo]: `sorth demo` runs the module `make demo` runs (tests/cli/test_cli.py checks they
# agree) in a subprocess, from the repository checkout that holds recipes/; without one it exits 2
# saying how to get it. It never runs another program under the same name.
DEMO_MODULE = "recipes.demo"


def demo_root() -> Path | None:
    """The repository checkout whose ``recipes/demo`` ``sorth demo`` runs (Note [demo]), or None.

    Looked for in the current folder, then next to the imported ``sorth`` package (a clone with
    an editable install); a wheel install has neither.
    """
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "recipes" / "demo" / "__main__.py").is_file():
            return root
    return None


def demo_entry() -> str:
    """The module ``sorth demo`` runs: the main job, the one `make demo` runs."""
    return DEMO_MODULE


def run_demo(rest: Sequence[str]) -> int:
    """Run ``python -m recipes.demo REST`` in the repository checkout (Note [demo])."""
    root = demo_root()
    if root is None:
        raise CLIError(
            f"the main job is `python -m {DEMO_MODULE}` in a clone of the sorth repository "
            "(recipes/ is not part of the installed package): clone it and run `make demo` there"
        )
    cmd = [sys.executable, "-m", DEMO_MODULE, *rest]
    print(f"sorth demo: running `python -m {DEMO_MODULE}` in {root}", file=sys.stderr)
    return subprocess.run(cmd, cwd=root, check=False).returncode


def add_parser(sub: Any) -> None:
    """The ``sorth demo`` sub-parser, added to ``sub`` (the ``sorth`` command's sub-parsers)."""
    dem = sub.add_parser(
        "demo",
        help="run the main job (make demo)",
        description=f"Runs `python -m {DEMO_MODULE}` (the same job as `make demo`) in the "
        "repository checkout (the current folder, or the one sorth is installed from); every "
        "argument after `demo` is passed on (try `sorth demo -- --help`). Without a checkout it "
        "exits with status 2 and says how to get one.",
    )
    dem.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the demo")


def run(args: argparse.Namespace) -> int:
    """``sorth demo``: :func:`run_demo` with what follows ``demo`` (a leading ``--`` dropped)."""
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return run_demo(rest)
