"""The options several recipes share, each declared once: one flag, one default, one help text.

A recipe's config is a frozen dataclass that inherits the groups it takes, then declares its
own options (one ``--flag`` each, :func:`recipes.common.option`)::

    @dataclass(frozen=True)
    class LipConvNetConfig(OutputOptions, OverwriteOptions, ResumeOptions, SeedOptions,
                           ProgressOptions):
        dataset: str = option("cifar10", "...")

:func:`recipes.common.parse_config` lists these fields first, under "common options", so every
recipe's ``--help`` shows them the same way (``tests/recipes/test_help.py`` compares them). Every
flag also parses in its other spelling (``--block-size`` for ``--block_size``); help shows one.

* :class:`OutputOptions` — ``--output_dir``; :class:`OverwriteOptions` —
  ``--overwrite_output_dir`` (the policy: :mod:`recipes.output_dir`).
* :class:`ResumeOptions` — ``--resume_from_checkpoint`` (:func:`recipes.training.find_checkpoint`).
* :class:`SeedOptions` — ``--seed``.
* :class:`ProgressOptions` — ``--progress`` / ``--no-progress``.
* :class:`BlockOptions` — ``--block_size`` / ``--nblocks``; unset, each layer gets the library's
  rule (:func:`sorth.sizing.default_block_size`), as ``SOrthConfig`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recipes.common import RecipeError, option
from sorth.integrations.methods import METHODS

__all__ = [
    "BlockOptions",
    "OutputOptions",
    "OverwriteOptions",
    "ProgressOptions",
    "ResumeOptions",
    "SeedOptions",
]


def _shared(default: Any, help: str, **checks: Any) -> Any:
    """:func:`recipes.common.option` of a shared field: shown under "common options"."""
    return option(default, help, common=True, **checks)


@dataclass(frozen=True)
class OutputOptions:
    """Where a run writes."""

    output_dir: str = _shared(
        "", "Folder the run writes into (the demo and the comparison: outputs/<name> if empty)."
    )


@dataclass(frozen=True)
class OverwriteOptions:
    """Whether a run may replace a run already in its folder (the policy:
    :mod:`recipes.output_dir`)."""

    overwrite_output_dir: bool = _shared(
        False,
        "Replace the run already in --output_dir: its outputs are moved aside, then deleted "
        "(links are unlinked, never followed); without it such a folder is refused.",
    )


@dataclass(frozen=True)
class ResumeOptions:
    """Continuing an interrupted run from one of its checkpoints."""

    resume_from_checkpoint: str = _shared(
        "", "'latest' or a checkpoint folder to resume from (same options as the run)."
    )


@dataclass(frozen=True)
class SeedOptions:
    """The one random seed of a run."""

    seed: int = _shared(0, "Random seed.", low=0)


@dataclass(frozen=True)
class ProgressOptions:
    """Progress bars."""

    progress: bool = _shared(
        True, "Progress bars: tqdm's and the libraries' model-loading bars (--no-progress: none)."
    )


@dataclass(frozen=True)
class BlockOptions:
    """The size of sorth's orthogonal blocks (and of PEFT OFT / BOFT's)."""

    block_size: int = _shared(
        0,
        "Block size b (0: from --nblocks, else each layer's smallest divisor b ≥ √n of its "
        "size n, the library's default).",
        low=0,
    )
    nblocks: int = _shared(
        0, "Blocks r per factor instead of --block_size (b = n / r; 0: unused).", low=0
    )

    def block_sizes(self, method: str) -> dict[str, int | None]:
        """``{"block_size": b or None, "nblocks": r or None}`` for ``make_peft_config`` of
        ``method`` (a name of :data:`sorth.integrations.methods.METHODS`). Refused: both set
        (b = n / r: pass one), and a PEFT method sized by blocks (``peft_oft``, ``peft_boft``:
        one block size for every layer) without ``--block_size``."""
        if self.block_size and self.nblocks:
            raise RecipeError(
                f"--block_size={self.block_size} and --nblocks={self.nblocks} are exclusive: "
                "pass only one (b = n / r)"
            )
        m = METHODS.get(method)
        if m is not None and m.size == "block_size" and not self.block_size:
            raise RecipeError(
                f"--method {method} needs --block_size (PEFT uses one block size for every "
                "layer; --nblocks and the per-layer default are sorth's)"
            )
        return {"block_size": self.block_size or None, "nblocks": self.nblocks or None}
