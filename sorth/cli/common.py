"""What every ``sorth`` command shares: the one-line error type, progress bars, path checks,
and flags that parse in both spellings (``--block-size`` / ``--block_size``; the recipes' too)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_NAME",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "WEIGHTS_NAME",
    "CLIError",
    "OneSpellingBooleanAction",
    "OneSpellingFormatter",
    "TwoSpellingParser",
    "adapter_dirs",
    "flag_spellings",
    "natural_key",
    "progress_bar",
    "progress_iter",
    "quiet_libraries",
    "read_json",
    "read_model_config",
    "require_dir",
]

EXIT_ERROR, EXIT_USAGE = 1, 2
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _canonical(option: str) -> str:
    """``--block-size`` and ``--block_size`` (``--no-x-y`` and ``--no-x_y``) are one flag."""
    name = option.removeprefix("--")
    negated = name.startswith("no-")
    return ("no-" if negated else "") + name.removeprefix("no-").replace("-", "_")


def flag_spellings(flag: str) -> list[str]:
    """``[flag, other]``: a flag and its other spelling, ``-`` and ``_`` swapped after the
    leading ``--`` (``--block-size`` → ``["--block-size", "--block_size"]``); the first is the
    one help shows (:class:`OneSpellingFormatter`), both parse."""
    name = flag.removeprefix("--")
    other = name.replace("-", "_") if "-" in name else name.replace("_", "-")
    return [flag] if other == name else [flag, f"--{other}"]


def _one_spelling(options: Sequence[str]) -> list[str]:
    """``options`` without the second spelling of any of them (:func:`flag_spellings`)."""
    shown, seen = [], set()
    for option in options:
        if _canonical(option) not in seen:
            seen.add(_canonical(option))
            shown.append(option)
    return shown


class OneSpellingBooleanAction(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag`` whose usage line names one spelling (both parse)."""

    def format_usage(self) -> str:
        """``--flag | --no-flag``, the other spellings left out."""
        return " | ".join(_one_spelling(self.option_strings))


class OneSpellingFormatter(argparse.HelpFormatter):
    """Help that lists each flag once: a second spelling of a flag (:func:`flag_spellings`,
    ``--block_size`` beside ``--block-size``) parses but is not shown."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:  # a positional argument
            return super()._format_action_invocation(action)
        shown = _one_spelling(action.option_strings)
        if action.nargs == 0:  # a switch
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{option} {metavar}" for option in shown)


def progress_iter(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm progress bar on stderr (shown on a terminal only), or the items as they are."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, disable=None, leave=False, file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_description_str(self, desc: str) -> None: ...
    def close(self) -> None: ...


def progress_bar(desc: str, total: int) -> Any:
    """A manual tqdm bar for work done in stages (``update()`` after each)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=None, leave=False, file=sys.stderr)


def require_dir(path: str | os.PathLike, what: str, must_hold: Sequence[str] = ()) -> Path:
    """``path`` as a folder that exists and holds every file of ``must_hold``, else a
    :class:`CLIError` naming ``what``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{what} '{path}' does not exist")
    if not p.is_dir():
        raise CLIError(f"{what} '{path}' is a file; pass the folder that holds it")
    for name in must_hold:
        if not (p / name).is_file():
            raise CLIError(f"{what} '{path}' has no {name}: is it the right folder?")
    return p


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, else a :class:`CLIError` (unreadable, not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CLIError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} is not a JSON object")
    return data


def read_model_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict, or ``{}`` when the folder has none."""
    path = folder / "config.json"
    return read_json(path) if path.is_file() else {}


def natural_key(key: str) -> list[Any]:
    """Sort key ordering ``layers.10`` after ``layers.9`` (digit runs compared as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


@contextlib.contextmanager
def quiet_libraries(*libraries: str) -> Iterator[None]:
    """Our stage bar replaces the libraries' per-file bars; their notices are not errors.

    Restores each library's logging verbosity and progress-bar setting on exit.
    """
    saved = []
    for name in libraries:
        log = importlib.import_module(f"{name}.utils.logging")
        saved.append((log, log.get_verbosity(), log.is_progress_bar_enabled()))
        log.disable_progress_bar()
        log.set_verbosity_error()
    try:
        yield
    finally:
        for log, verbosity, bars in saved:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()


def adapter_dirs(adapter: Path, components: Sequence[str] | None) -> dict[str | None, Path]:
    """``{component: folder}``: one adapter folder, or one sub-folder per pipeline component."""
    if (adapter / CONFIG_NAME).is_file():
        return {None: adapter}
    subs = {p.name: p for p in sorted(adapter.iterdir()) if (p / CONFIG_NAME).is_file()}
    if components:
        subs = {k: v for k, v in subs.items() if k in components}
    if not subs:
        raise CLIError(
            f"adapter folder '{adapter}' has no {CONFIG_NAME} (nor sub-folders with one, e.g. "
            "unet/ or text_encoder/)"
        )
    return subs


class TwoSpellingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose every ``--flag`` also parses in its other spelling
    (:func:`flag_spellings`); help shows the one declared (:class:`OneSpellingFormatter`)."""

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        """``ArgumentParser.add_argument`` with each long flag's other spelling added."""
        spelled = [s for n in names for s in (flag_spellings(n) if n.startswith("--") else [n])]
        return super().add_argument(*spelled, **kwargs)
