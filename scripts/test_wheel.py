"""Check an installed sorth wheel the way a user meets it (run by ``scripts/test_wheel.sh``).

Run with the Python of a venv that has only the wheel (and its dependencies) installed, from a
folder outside the clone: ``python test_wheel.py README.md docs/getting-started.md
docs/guides/*.md`` (the README first; the pages that hold the user guides' code after it). It

1. checks that ``sorth`` is imported from that venv, not from the clone;
2. runs every ```python block of those pages that needs no user files (blocks naming
   ``path/to/`` or a ``runs/`` folder are listed as skipped), each in its own process in its own
   empty temporary folder;
3. imports every ``sorth`` module the pages name (``sorth.integrations.diffusers``, ...) and
   resolves every ``sorth.X`` attribute they name;
4. runs ``sorth --help`` and ``sorth <command> --help`` for every command, and checks that
   ``sorth demo`` outside a checkout exits 2 with one line saying how to get the main job.

Prints one line per check; exits 1 if any failed. Needs nothing but the standard library.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

NEEDS_USER_FILES = re.compile(r"path/to/|\"runs/|'runs/")
NAMED = re.compile(r"\bsorth(?:\.[A-Za-z_]\w*)+")
COMMANDS = ("inspect", "merge", "plot", "demo")


def python_blocks(page: str) -> list[str]:
    """The ```python fenced blocks of ``page``, in order (``--8<--`` includes left out)."""
    blocks = re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
    return [b for b in blocks if not b.lstrip().startswith("--8<--")]


def named_objects(page: str) -> list[str]:
    """Every dotted ``sorth.…`` name in ``page`` (modules and attributes), sorted."""
    return sorted({m.rstrip(".") for m in NAMED.findall(page)})


def resolve(name: str) -> str:
    """Import the longest module prefix of ``name`` and get the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name is not None and not ".".join(parts[:cut]).startswith(err.name):
                raise  # a dependency is missing, not this module
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return "module" if cut == len(parts) else "attribute"
    raise ModuleNotFoundError(name)


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv]
    clone = paths[0].parent  # the README's folder
    failures: list[str] = []

    def check(ok: bool, what: str, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
        if not ok:
            failures.append(what)

    import sorth

    where = Path(sorth.__file__).resolve()
    venv = Path(sys.prefix).resolve()
    check(
        venv in where.parents and clone not in where.parents,
        f"sorth imported from the installed wheel in {venv}",
        str(where),
    )
    check(Path.cwd().resolve() != clone, "running outside the clone")

    names: set[str] = set()
    for path in paths:
        page, where = path.read_text(), path.relative_to(clone).as_posix()
        names.update(named_objects(page))
        for i, block in enumerate(python_blocks(page), start=1):
            first = block.strip().splitlines()[0]
            if NEEDS_USER_FILES.search(block):
                print(f"skip {where} block {i} (needs user files): {first}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.run(
                    [sys.executable, "-c", block], cwd=tmp, capture_output=True, text=True,
                    timeout=900, check=False,
                )  # fmt: skip
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            check(proc.returncode == 0, f"{where} block {i} ({first})", tail)

    for name in sorted(names):
        try:
            kind = resolve(name)
        except Exception as err:  # noqa: PERF203 - report every failure, then exit 1
            check(False, f"the docs name {name}", f"{type(err).__name__}: {err}")
        else:
            check(True, f"the docs name {name} ({kind})")

    sorth_cli = Path(sys.executable).with_name("sorth")
    for command in ("", *COMMANDS):
        argv_ = [str(sorth_cli), *([command] if command else []), "--help"]
        proc = subprocess.run(argv_, capture_output=True, text=True, timeout=300, check=False)
        check(
            proc.returncode == 0 and proc.stdout.startswith("usage: sorth"),
            f"sorth {command} --help".replace("  ", " "),
            proc.stderr.strip()[-300:],
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [str(sorth_cli), "demo"], cwd=tmp, capture_output=True, text=True, timeout=120,
                check=False,
            )  # fmt: skip
            code, err = proc.returncode, proc.stderr.strip()
        except subprocess.TimeoutExpired:
            code, err = None, "still running after 120 s: it runs some program"
    lines = err.splitlines()
    check(
        code == 2 and len(lines) == 1 and "make demo" in lines[0],
        "sorth demo outside a checkout: exit 2, one line saying how to get the main job",
        err[-300:],
    )
    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
