"""Channel shuffles: the paper's ``ChShuffle`` as a fixed index op on dim 1 of ``(N, C, H, W)``.

``ChannelShuffle(C, groups)`` applies ``P_(groups, C)`` (scatter convention, see Note [scatter] in
:mod:`sorth.permutations`) to the channels: output group ``g`` (contiguous, ``C/groups``
channels) collects channels ``g, g + groups, g + 2·groups, …``, so a following grouped layer
with ``groups`` groups mixes one channel from every group of the previous one (ShuffleNet's
``channel_shuffle(x, groups)``). ``paired=True`` moves channel pairs ``(2j, 2j+1)`` together
(paper App. F), so :class:`~sorth.nn.MaxMinPermuted` pairs stay inside one conv group.
A permutation is orthogonal: the layer is an exact isometry.
"""

from __future__ import annotations

import torch
from torch import nn

from sorth.errors import BlockSizeError, check_positive_int, divisors
from sorth.permutations import gs_permutation, invert_permutation, paired_permutation

__all__ = ["ChannelShuffle", "channel_permutation", "channel_shuffle"]


def channel_permutation(
    channels: int, groups: int, *, paired: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """Index vector of the channel shuffle ``P_(groups, channels)`` (or its paired variant).

    Args:
        channels: ``C``.
        groups: number of groups ``g``; must divide ``C`` (``2g`` must divide ``C`` if paired).
        paired: shuffle channel pairs instead of single channels.

    Returns:
        ``(C,)`` long tensor ``perm`` with ``channel_shuffle(x, perm) == x[:, perm]``.
    """
    check_positive_int("channels", channels)
    check_positive_int("groups", groups)
    if paired:
        if channels % (2 * groups):
            valid = [d for d in divisors(channels) if channels % (2 * d) == 0]
            raise BlockSizeError(
                f"a paired channel shuffle needs 2*groups to divide channels, got groups={groups}, "
                f"channels={channels}; valid groups here: {valid} (or use paired=False)."
            )
        return paired_permutation(groups, channels, device=device)
    if channels % groups:
        raise BlockSizeError(
            f"groups={groups} must divide channels={channels}; valid choices: {divisors(channels)}."
        )
    return gs_permutation(groups, channels, device=device)


def channel_shuffle(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x[:, perm]`` as an index op: ``(N, C, ...) -> (N, C, ...)``."""
    return x.index_select(1, perm)


class ChannelShuffle(nn.Module):
    """Fixed channel permutation ``P_(groups, C)`` on dim 1: ``(N, C, *) -> (N, C, *)``.

    Args:
        channels: ``C``.
        groups: number of groups of the layer that follows.
        paired: move channel pairs together (paper App. F; needs ``2·groups | C``).
        inverse: apply ``Pᵀ`` instead (undoes ``ChannelShuffle(C, groups, paired=paired)``).
        device: where to keep the index buffer (it is never saved: rebuilt from the arguments).

    Example:
        >>> s = ChannelShuffle(8, 2)
        >>> s(torch.arange(8.0).view(1, 8, 1, 1)).flatten().tolist()
        [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        *,
        paired: bool = False,
        inverse: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        perm = channel_permutation(channels, groups, paired=paired, device=device)
        if inverse:
            perm = invert_permutation(perm)
        self.channels, self.groups, self.paired, self.inverse = channels, groups, paired, inverse
        self.register_buffer("perm", perm, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.perm)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, groups={self.groups}, paired={self.paired}, "
            f"inverse={self.inverse}"
        )
