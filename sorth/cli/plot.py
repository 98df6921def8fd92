"""``sorth plot``: draw the structure, density or block ranks of a GS matrix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sorth.cli.common import CLIError, flag_spellings

__all__ = ["add_parser", "plot", "run"]


IMAGE_SUFFIXES = (".png", ".svg", ".pdf")
MAX_DPI = 1200


def _check(args: argparse.Namespace) -> Path:
    """Every argument checked before anything is computed or written; returns the output path."""
    from sorth.plotting import MAX_PLOT_N

    if args.n < 1:
        raise CLIError(f"--n={args.n} must be a positive feature size")
    if args.n > MAX_PLOT_N:  # every kind draws (or decomposes) dense n × n matrices
        raise CLIError(
            f"--n={args.n} is too large to draw (dense n × n pictures); use --n <= {MAX_PLOT_N}"
        )
    if not 1 <= args.dpi <= MAX_DPI:
        raise CLIError(f"--dpi={args.dpi} is out of range: it must be between 1 and {MAX_DPI}")
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise CLIError(f"--out '{args.out}' is a folder; pass an image file name such as "
                       f"'{Path(args.out) / 'figure.png'}'")  # fmt: skip
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise CLIError(
            f"--out '{args.out}' must end in {', '.join(IMAGE_SUFFIXES)} (the image format)"
        )
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"--out '{args.out}': '{parent}' is a file, not a folder")
    return out


def plot(args: argparse.Namespace) -> Path:
    """Draw the figure ``args`` asks for and save it to ``args.out``; returns the path."""
    from sorth import plotting

    _check(args)
    size = {"nblocks": args.nblocks} if args.nblocks else {"block_size": args.block_size}
    if args.kind == "structure":
        cfg = {"n": args.n, "structure": args.structure, "n_factors": args.n_factors, **size}
        fig = plotting.plot_structure([cfg], dpi=args.dpi)
    elif args.kind == "density":
        from sorth.gs import resolve_blocks

        _, b = resolve_blocks(args.n, **size)
        fig = plotting.plot_density([(args.n, b)], max_factors=args.n_factors, dpi=args.dpi)
    else:
        from sorth.parametrizations import GSOrthogonal

        q = GSOrthogonal(args.n, structure=args.structure, n_factors=args.n_factors, **size)
        title = f"{args.structure} n={args.n}, r={q.nblocks}, b={q.block_size}"
        data = plotting.rank_data(q.matrix(), title)
        fig = plotting.plot_block_ranks([data], dpi=args.dpi)
    try:
        return plotting.save_figure(fig, args.out)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise CLIError(f"cannot write '{args.out}': {reason}") from None


def add_parser(sub: Any) -> None:
    """The ``sorth plot`` sub-parser, added to ``sub`` (the ``sorth`` command's sub-parsers)."""
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
    size.add_argument(*flag_spellings("--block-size"), type=int, help="b = n / r")
    plo.add_argument("--structure", default="gs", choices=("gs", "oft", "butterfly", "monarch"),
                     help="the GS structure to draw (default: gs)")  # fmt: skip
    plo.add_argument(*flag_spellings("--n-factors"), type=int, help="factors m (structure: "
                     "gs/butterfly; density: largest m shown)")  # fmt: skip
    plo.add_argument("--kind", default="structure", choices=("structure", "density", "ranks"),
                     help="what to draw (default: structure)")  # fmt: skip
    plo.add_argument("--out", required=True, help="image file (.png, .svg or .pdf)")
    plo.add_argument("--dpi", type=int, default=100, help="resolution of a .png (default: 100)")


def run(args: argparse.Namespace) -> int:
    """``sorth plot``: draw and print where the image went."""
    print(f"wrote {plot(args)}")
    return 0
