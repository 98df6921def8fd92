"""The `sorth` command: inspect and merge adapters, draw GS structure, run the demo.

::

    sorth inspect ADAPTER_DIR                    # structure, sizes, parameters, density, ‖QᵀQ−I‖
    sorth merge --base MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR
    sorth plot --n 64 --nblocks 8 --structure gs --out fig.png
    sorth demo                                   # the main job (make demo)

Every command has ``--help``. Bad paths, adapters that do not fit and invalid sizes end with
one line on stderr (``sorth <command>: error: …``) and exit status 2; an adapter holding NaN or
Inf values is reported in the table and by one line, with status 1; an unexpected failure exits
with status 1 (``--traceback`` shows the stack). Heavy libraries (PEFT, transformers,
diffusers, matplotlib) are imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from sorth.cli import demo, inspect, merge, plot
from sorth.cli.common import EXIT_ERROR, EXIT_USAGE, CLIError, OneSpellingFormatter
from sorth.cli.demo import demo_entry, demo_root
from sorth.cli.inspect import inspect_adapter
from sorth.cli.merge import merge_adapter

__all__ = ["CLIError", "demo_entry", "demo_root", "inspect_adapter", "main", "merge_adapter"]

# each command's module owns its sub-parser (``add_parser``) and its action (``run``)
COMMANDS = {"inspect": inspect, "merge": merge, "plot": plot, "demo": demo}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", OneSpellingFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message}", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(message.rstrip() + "\n")
    raise SystemExit(code)


def _parser() -> _Parser:
    from sorth import __version__

    p = _Parser(prog="sorth", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"sorth {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the stack of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sorth`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from sorth.errors import SOrthValueError

    prog = f"sorth {args.command}"
    try:
        code = COMMANDS[args.command].run(args)
    except CLIError as err:
        _fail(f"{prog}: error: {err}", EXIT_USAGE)
    except SOrthValueError as err:  # invalid sizes and options, named by the core
        _fail(f"{prog}: error: {err}", EXIT_USAGE)
    except KeyboardInterrupt:
        _fail(f"{prog}: interrupted", 130)
    except BrokenPipeError:  # e.g. `sorth inspect DIR | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if args.traceback:
            raise
        line = " ".join(str(err).split()) or type(err).__name__
        _fail(f"{prog}: error: {type(err).__name__}: {line} (rerun with --traceback)", EXIT_ERROR)
    return code


if __name__ == "__main__":
    sys.exit(main())
