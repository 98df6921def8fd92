"""GS orthogonal convolution (the GSOFT paper's Section 6.3 and Appendix F).

.. math::  Y = \\mathrm{GrExpConv}_2(\\mathrm{ChShuffle}_2(\\mathrm{GrExpConv}_1(
           \\mathrm{ChShuffle}_1(X))))

``groups=(a, b)``: ``ChShuffle_1`` = paired ``P_(a, in)``, ``GrExpConv_1`` = grouped SOC ``k×k``
with ``a`` groups (carrying the stride and the channel change), ``ChShuffle_2`` = paired
``P_(b, out)``, ``GrExpConv_2`` = grouped SOC ``1×1`` with ``b`` groups on ``out`` channels.
``groups=(a, None)`` is the single-exponential variant (the paper's ``(a, −)``). Every piece is
orthogonal (up to the Taylor remainder) or a permutation, so the layer is 1-Lipschitz.

Parameters (raw kernels, as the paper counts them): ``C²k²/a + out²/b`` plus biases, with
``C = max(in·s², out)``, against ``C²k²`` for :class:`~sorth.nn.SOC2d`.

The input shuffle ``P_(a, in)`` needs ``2a | in`` (``a | in`` if not paired); when it does not
hold (e.g. a 3-channel image) it is skipped, as in the authors' code, unless you pass
``shuffle_input=True`` (then it is an error). ``extra_repr`` shows what was built.
"""

from __future__ import annotations

import torch
from torch import nn

from sorth.errors import BlockSizeError, check_positive_int
from sorth.nn.shuffle import ChannelShuffle
from sorth.nn.soc import PaddingMode, SOC2d

__all__ = ["GSOrthogonalConv2d", "parse_groups"]


def parse_groups(groups: int | tuple[int, int | None]) -> tuple[int, int | None]:
    """``a`` or ``(a, b)`` / ``(a, None)`` -> ``(a, b | None)``, both positive ints."""
    if isinstance(groups, int) and not isinstance(groups, bool):
        return check_positive_int("groups", groups), None
    if not isinstance(groups, (tuple, list)) or len(groups) != 2:
        raise BlockSizeError(
            f"groups={groups!r}: pass (a, b) for two exponentials or (a, None) for one."
        )
    a, b = groups
    check_positive_int("groups[0]", a)
    if b is not None:
        check_positive_int("groups[1]", b)
    return a, b


def _shuffle_defined(channels: int, groups: int, paired: bool) -> bool:
    return channels % (2 * groups if paired else groups) == 0


class GSOrthogonalConv2d(nn.Module):
    """GS orthogonal convolution: ``(N, in, H, W) -> (N, out, H/s, W/s)``, 1-Lipschitz.

    Args:
        in_channels: ``in``.
        out_channels: ``out``.
        kernel_size: odd ``k`` of the first exponential (the second is 1×1).
        stride: 1 or 2.
        groups: ``(a, b)`` or ``(a, None)`` (an int ``a`` means ``(a, None)``).
        paired: paired channel shuffles (pairs ``(2j, 2j+1)`` move together; use with
            :class:`~sorth.nn.MaxMinPermuted`). Paper App. F: paired is clearly better.
        shuffle_input: ``None`` shuffles the input when ``P_(a, in)`` is defined; ``True``
            requires it; ``False`` never shuffles the input.
        bias, padding_mode, train_terms, eval_terms, correction, init_iters, update_iters,
        update_freq, generator, device, dtype: passed to both :class:`~sorth.nn.SOC2d`.

    Example:
        >>> conv = GSOrthogonalConv2d(32, 64, 3, stride=2, groups=(4, 2))
        >>> conv(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 64, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        groups: int | tuple[int, int | None] = (4, None),
        *,
        paired: bool = True,
        shuffle_input: bool | None = None,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        train_terms: int = 5,
        eval_terms: int = 12,
        correction: float | None = None,
        init_iters: int = 50,
        update_iters: int = 1,
        update_freq: int = 200,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        a, b = parse_groups(groups)
        soc_kwargs = {
            "bias": bias, "padding_mode": padding_mode, "train_terms": train_terms,
            "eval_terms": eval_terms, "correction": correction, "init_iters": init_iters,
            "update_iters": update_iters, "update_freq": update_freq, "generator": generator,
            "device": device, "dtype": dtype,
        }  # fmt: skip
        self.in_channels, self.out_channels, self.groups, self.paired = (
            in_channels, out_channels, (a, b), paired,
        )  # fmt: skip
        self.conv1 = SOC2d(in_channels, out_channels, kernel_size, stride, groups=a, **soc_kwargs)
        if shuffle_input is None:
            shuffle_input = a > 1 and _shuffle_defined(in_channels, a, paired)
        self.shuffle1 = (
            ChannelShuffle(in_channels, a, paired=paired, device=device)
            if shuffle_input
            else nn.Identity()
        )
        self.shuffle2: nn.Module = nn.Identity()
        self.conv2: nn.Module = nn.Identity()
        if b is not None:
            if b > 1:
                self.shuffle2 = ChannelShuffle(out_channels, b, paired=paired, device=device)
            self.conv2 = SOC2d(out_channels, out_channels, 1, 1, groups=b, **soc_kwargs)

    @property
    def kernel_size(self) -> int:
        return self.conv1.kernel_size

    @property
    def stride(self) -> int:
        return self.conv1.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuffle1(x)  # (N, in, H, W)
        x = self.conv1(x)  # (N, out, H/s, W/s)
        x = self.shuffle2(x)
        return self.conv2(x)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, groups={self.groups}, paired={self.paired}, "
            f"shuffle_input={isinstance(self.shuffle1, ChannelShuffle)}"
        )
