"""Plumbing shared by every recipe: CLI parsing, one-line errors, paths, atomic saving.

A recipe is ``main(argv)`` decorated with :func:`cli`; its options are a frozen dataclass whose
fields are declared with :func:`option` (help text, choices, numeric range). Everything the
recipe writes goes through :func:`atomic_dir` / :func:`atomic_file`, so an interrupted run never
leaves a half-written adapter; the output-folder policy is in :mod:`recipes.output_dir`,
checkpoints and the training loop in :mod:`recipes.training`.

User mistakes (missing folders, unreachable hub ids, empty data, wrong columns, out-of-range
flags) are raised as :class:`RecipeError` and reported as one line on stderr with exit status 2,
never as a stack trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from recipes.notices import quiet_known_notices
from sorth.cli.common import OneSpellingBooleanAction, OneSpellingFormatter, flag_spellings
from sorth.integrations.io import atomic_dir, atomic_file

__all__ = [
    "RecipeError",
    "StepTimer",
    "atomic_dir",
    "atomic_file",
    "cli",
    "option",
    "parse_config",
    "require_dir",
    "require_options",
    "resolve_pretrained",
    "save_json",
    "save_png",
]

T = TypeVar("T")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_COMMON_ORDER = itertools.count(1)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class RecipeError(Exception):
    """A user-facing error: printed as one line, exit status 2, no stack trace."""


# --------------------------------------------------------------------------- CLI


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    common: bool = False,
) -> Any:
    """A dataclass field that becomes one documented command-line flag.

    Args:
        default: the default value (also shown in ``--help``).
        help: one sentence for ``--help``.
        choices: allowed values, checked by argparse.
        low, high: inclusive numeric range (``low_open`` makes the lower bound strict).
        low_open: whether ``low`` itself is rejected.
        common: one of the options several recipes share (:mod:`recipes.options`), listed
            under "common options" in ``--help``.
    """
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open}
    meta["common"] = next(_COMMON_ORDER) if common else 0  # declaration order of shared ones
    if isinstance(default, list | dict):
        raise TypeError("use tuples, not mutable defaults, for list options")
    return dataclasses.field(default=default, metadata=meta)


class _HelpFormatter(OneSpellingFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown; each flag in one spelling (``--block-size`` also parses)."""


class _OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage block) with exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        _fail(f"{self.prog}: error: {message}", EXIT_USAGE)


def _argparse_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """Map a dataclass type hint to argparse ``type``/``nargs``/``action`` keywords."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return None, {"action": OneSpellingBooleanAction}
    if origin is tuple:
        return args[0], {"nargs": "*"}
    if args and type(None) in args:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        return inner, {}
    return hint, {}


def parse_config(
    cls: type[T], argv: Sequence[str] | None, description: str, *, prog: str | None = None
) -> T:
    """Parse ``argv`` into the frozen dataclass ``cls`` (every field is a ``--flag``).

    ``prog`` is how ``--help`` says the recipe is run (default: ``python -m`` the module that
    defines ``cls``). Out-of-range numbers and unknown choices end the program with one line on
    stderr. A value starting with ``~`` is expanded as the shell would (``--output_dir=~/run``).
    """
    parser = _OneLineParser(
        prog=prog or _prog(cls), description=description, formatter_class=_HelpFormatter
    )
    shared = parser.add_argument_group("common options (the same in every recipe)")
    hints = typing.get_type_hints(cls)
    # the shared options in the order recipes.options declares them, then the recipe's own
    order = sorted(
        dataclasses.fields(cls), key=lambda f: (not f.metadata["common"], f.metadata["common"])
    )
    for f in order:
        kind, extra = _argparse_type(hints[f.name])
        helptext = f.metadata["help"].replace("%", "%%")  # argparse %-formats help strings
        kwargs: dict[str, Any] = {"default": f.default, "help": helptext, **extra}
        if kind is not None:
            kwargs["type"] = kind
        if f.metadata.get("choices") is not None:
            kwargs["choices"] = f.metadata["choices"]
        group = shared if f.metadata["common"] else parser  # the recipe's own: "options"
        group.add_argument(*flag_spellings(f"--{f.name}"), **kwargs)
    ns = vars(parser.parse_args(argv))
    for f in dataclasses.fields(cls):
        # `--output_dir=~/run` (the `=` form) leaves `~` to the program, where the shell expands
        # `--output_dir ~/run`: expanded here once, so every later use sees the same path
        if isinstance(ns[f.name], str) and ns[f.name].startswith("~"):
            ns[f.name] = os.path.expanduser(ns[f.name])
        _check_range(parser, f, ns[f.name])
        if isinstance(ns[f.name], list):
            ns[f.name] = tuple(ns[f.name])
    return cls(**ns)


def _prog(cls: type) -> str:
    """``python -m recipes.X.train``: the documented way to run the recipe that defines ``cls``."""
    module = cls.__module__
    if module == "__main__":  # run with `python -m`: the spec names the module
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).name
    return f"python -m {module.removesuffix('.__main__')}"


def _check_range(parser: _OneLineParser, f: dataclasses.Field, value: Any) -> None:
    low, high, low_open = f.metadata["low"], f.metadata["high"], f.metadata["low_open"]
    if value is None or (low is None and high is None):
        return
    if low is not None and (value < low or (low_open and value == low)):
        rule = f"> {low}" if low_open else f">= {low}"
        parser.error(f"--{f.name}={value} is out of range: it must be {rule}")
    if high is not None and value > high:
        parser.error(f"--{f.name}={value} is out of range: it must be <= {high}")


def _fail(message: str, code: int) -> typing.NoReturn:
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(message.rstrip() + "\n")
        sys.stderr.flush()
    raise SystemExit(code)


def cli(entry: Callable[[Sequence[str] | None], T]) -> Callable[[Sequence[str] | None], T]:
    """Decorate a recipe's ``main``: :class:`RecipeError` becomes one line and exit status 2.

    The run is quiet about the pinned libraries' known notices (Note [known notices] in
    :mod:`recipes.notices`); every other warning shows.
    """

    @functools.wraps(entry)
    def wrapper(argv: Sequence[str] | None = None) -> T:
        try:
            with quiet_known_notices():
                return entry(argv)
        except RecipeError as err:
            _fail(f"error: {err}", EXIT_USAGE)
        except KeyboardInterrupt:
            _fail(
                "interrupted: finished checkpoints are kept; rerun with "
                "--resume_from_checkpoint latest to continue",
                EXIT_INTERRUPTED,
            )

    return wrapper


def require_options(cfg: Any, *names: str) -> None:
    """Refuse a run whose required string options (``--model``, ``--output_dir``, ...) are empty."""
    for name in names:
        if not getattr(cfg, name):
            raise RecipeError(f"--{name} is required (see --help)")


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


# --------------------------------------------------------------------------- paths


def require_dir(path: str | os.PathLike, what: str, *, pattern: str | None = None) -> Path:
    """Return ``path`` as a folder that exists (and holds a ``pattern`` match), else fail."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise RecipeError(f"{what} '{path}' is not a folder (it does not exist or is a file)")
    if pattern is not None and not any(p.glob(pattern)):
        raise RecipeError(f"{what} '{path}' is empty: no files matching '{pattern}' in it")
    return p


def resolve_pretrained(name_or_path: str, what: str = "model") -> str:
    """A local folder, or a hub id resolved to its local snapshot; otherwise a one-line error.

    A local folder is used as is. Anything that looks like a hub id (``org/name``) is fetched
    with ``huggingface_hub.snapshot_download`` (only from the local cache when
    ``HF_HUB_OFFLINE=1``); if that fails the message says the id is unreachable.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return str(p)
    if p.exists():
        raise RecipeError(f"{what} '{name_or_path}' is a file; pass the model folder instead")
    if not _HUB_ID.match(name_or_path):
        raise RecipeError(f"{what} '{name_or_path}' does not exist (no such local folder)")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        return snapshot_download(name_or_path, local_files_only=offline)
    except Exception as err:  # any hub/network failure becomes the one-line message below
        raise RecipeError(
            f"{what} '{name_or_path}' is not a local folder and is unreachable on the Hugging "
            f"Face hub ({type(err).__name__}{', offline mode' if offline else ''}); "
            "download it first and pass its folder"
        ) from None


# --------------------------------------------------------------------------- atomic saving


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- timing


class StepTimer:
    """Mean wall-clock seconds per optimizer step, ignoring the first (warm-up) step."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._times: list[float] = []

    def start(self) -> None:
        """Mark the beginning of a step."""
        self._start = time.perf_counter()

    def stop(self) -> None:
        """Mark the end of a step."""
        if self._start is not None:
            self._times.append(time.perf_counter() - self._start)
            self._start = None

    @property
    def mean(self) -> float:
        """Seconds per step (nan before any step)."""
        times = self._times[1:] or self._times
        return sum(times) / len(times) if times else float("nan")
