"""MaxMin activations (GroupSort with groups of two): 1-Lipschitz and gradient-norm preserving.

A pair ``(a, b)`` is mapped to ``(max(a, b), min(a, b))``: a sort, so locally a permutation and
exactly 1-Lipschitz in the ℓ2 norm.

===================  ==================================  =================================
module               pairs                                output
===================  ==================================  =================================
``MaxMin``           channel ``i`` with ``i + C/2``       max in the first half, min second
``MaxMinPermuted``   neighbours ``(2j, 2j + 1)``          max at ``2j``, min at ``2j + 1``
===================  ==================================  =================================

``MaxMinPermuted`` (paper Definition F.2) keeps each pair inside one conv group, which is why
the GS convolution uses the *paired* channel shuffle.
"""

from __future__ import annotations

import torch
from torch import nn

from sorth.errors import BlockSizeError, ShapeError, check_positive_int

__all__ = ["MaxMin", "MaxMinPermuted", "max_min", "max_min_permuted"]


def _check_even(channels: int, cls: str) -> None:
    check_positive_int("channels", channels)
    if channels % 2:
        raise BlockSizeError(
            f"{cls} pairs channels, so channels={channels} must be even; use an even width "
            f"(e.g. {channels + 1})."
        )


def max_min(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``cat(max(a, b), min(a, b))`` with ``a, b`` the two halves of ``dim``; shape kept."""
    a, b = x.chunk(2, dim=dim)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=dim)


def max_min_permuted(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """MaxMin on neighbouring pairs ``(2j, 2j+1)`` of ``dim``: max at even, min at odd index."""
    dim = dim % x.dim()
    C = x.shape[dim]
    pairs = x.unflatten(dim, (C // 2, 2))  # (..., C/2, 2, ...)
    a, b = pairs.unbind(dim + 1)
    return torch.stack([torch.maximum(a, b), torch.minimum(a, b)], dim=dim + 1).flatten(
        dim, dim + 1
    )


class _PairActivation(nn.Module):
    def __init__(self, channels: int | None = None, *, dim: int = 1):
        super().__init__()
        if channels is not None:
            _check_even(channels, type(self).__name__)
        self.channels, self.dim = channels, dim

    def _check(self, x: torch.Tensor) -> None:
        C = x.shape[self.dim]
        if C % 2 or (self.channels is not None and self.channels != C):
            raise ShapeError(
                f"{type(self).__name__} got {C} channels on dim {self.dim}; expected an even "
                f"number{'' if self.channels is None else f' equal to channels={self.channels}'}."
            )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim={self.dim}"


class MaxMin(_PairActivation):
    """MaxMin on the two halves of the channels: ``(N, C, *) -> (N, C, *)``, ``C`` even.

    Args:
        channels: optional ``C``; checked at construction (must be even) and at call time.
        dim: the channel dim (1 for images, -1 for features).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return max_min(x, self.dim)


class MaxMinPermuted(_PairActivation):
    """MaxMin on neighbouring channels ``(2j, 2j+1)``: ``(N, C, *) -> (N, C, *)``, ``C`` even.

    Args:
        channels: optional ``C``; checked at construction (must be even) and at call time.
        dim: the channel dim.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return max_min_permuted(x, self.dim)
