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
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from sorth.cli._common import EXIT_ERROR, EXIT_USAGE, CLIError, _adapter_dirs, _require_dir
from sorth.cli.demo import DEMO_MODULE, demo_entry, demo_root, run_demo
from sorth.cli.inspect import inspect_adapter, print_inspect
from sorth.cli.merge import merge_adapter
from sorth.cli.plot import plot

__all__ = ["CLIError", "demo_entry", "demo_root", "inspect_adapter", "main", "merge_adapter"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message}", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(message.rstrip() + "\n")
    raise SystemExit(code)


def _parser() -> _Parser:
    from sorth import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="sorth", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"sorth {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the stack of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    ins = sub.add_parser(
        "inspect",
        help="describe a saved sorth adapter",
        description="Structure, sizes, trainable parameters per layer and in total, density and "
        "orthogonality error max|QᵀQ−I| (float64) of every adapted layer. Reads only the adapter "
        "folder (adapter_config.json + adapter_model.safetensors, or one sub-folder per pipeline "
        "component such as unet/), not the base model.",
    )
    ins.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="folder written by save_pretrained")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")

    mer = sub.add_parser(
        "merge",
        help="merge an adapter into its base model (plain safetensors)",
        description="Fold the adapter into the weights (W' = diag(s)·A_out·W·A_in) and write a "
        "model that loads with plain transformers/diffusers from_pretrained, without sorth.",
    )
    mer.add_argument("--base", required=True, metavar="MODEL_DIR", help="base model folder")
    mer.add_argument("--adapter", required=True, metavar="ADAPTER_DIR", help="adapter folder")
    mer.add_argument("--out", required=True, metavar="OUT_DIR", help="folder to write")
    mer.add_argument(
        "--component", action="append", metavar="NAME", help="pipeline component(s) to merge "
        "into (default: every adapter sub-folder, or unet for a single adapter)",
    )  # fmt: skip
    mer.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")

    plo = sub.add_parser(
        "plot",
        help="draw the structure of a GS matrix",
        description="Sparsity of every factor and permutation and of Q (structure), density "
        "against the number of factors vs the block butterfly (density, Theorem 2), or "
        "Proposition 1's block ranks of L P R (ranks).",
    )
    plo.add_argument("--n", type=int, required=True, help="feature size n")
    size = plo.add_mutually_exclusive_group(required=True)
    size.add_argument("--nblocks", type=int, help="r, blocks per factor")
    size.add_argument("--block-size", type=int, help="b = n / r")
    plo.add_argument("--structure", default="gs", choices=("gs", "oft", "butterfly", "monarch"),
                     help="the GS structure to draw (default: gs)")  # fmt: skip
    plo.add_argument("--n-factors", type=int, help="factors m (structure: gs/butterfly; density: "
                     "largest m shown)")  # fmt: skip
    plo.add_argument("--kind", default="structure", choices=("structure", "density", "ranks"),
                     help="what to draw (default: structure)")  # fmt: skip
    plo.add_argument("--out", required=True, help="image file (.png, .svg or .pdf)")
    plo.add_argument("--dpi", type=int, default=100, help="resolution of a .png (default: 100)")

    dem = sub.add_parser(
        "demo",
        help="run the main job (make demo)",
        description=f"Runs `python -m {DEMO_MODULE}` (the same job as `make demo`) in the "
        "repository checkout (the current folder, or the one sorth is installed from); every "
        "argument after `demo` is passed on (try `sorth demo -- --help`). Without a checkout it "
        "exits with status 2 and says how to get one.",
        add_help=True,
    )
    dem.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the demo")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "inspect":
        folder = _require_dir(args.adapter_dir, "adapter folder")
        parts = _adapter_dirs(folder, None)  # one adapter, or one per pipeline component
        infos = {comp: inspect_adapter(path) for comp, path in parts.items()}
        if args.json:
            print(json.dumps(infos.get(None, infos), indent=2, default=str))
        else:
            for info in infos.values():
                print_inspect(info)
        broken = [(info, info["nonfinite_tensors"]) for info in infos.values()]
        broken = [(info, keys) for info, keys in broken if keys]
        if broken:  # Note [non-finite]: the table is printed, then one line and status 1
            info, keys = broken[0]
            sys.stderr.write(
                f"sorth inspect: error: {info['adapter_dir']}: {len(keys)} saved tensor(s) hold "
                f"NaN or Inf (e.g. {keys[0]}); this adapter is broken\n"
            )
            return EXIT_ERROR
    elif args.command == "merge":
        out = merge_adapter(
            args.base, args.adapter, args.out, components=args.component, overwrite=args.overwrite
        )
        print(f"merged model written to {out} (safetensors; loads without sorth)")
    elif args.command == "plot":
        print(f"wrote {plot(args)}")
    else:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return run_demo(rest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sorth`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from sorth.errors import SOrthValueError

    prog = f"sorth {args.command}"
    try:
        code = _run(args)
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
