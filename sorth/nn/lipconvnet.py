"""LipConvNet-N (Singla & Feizi 2021; the GSOFT paper's Table 3): a certified 1-Lipschitz CNN.

Five stages of ``depth/5`` blocks (orthogonal conv + MaxMin). Within a stage every conv is 3×3
and stride 1 except the last, which has stride 2 and doubles the width; in stage 5 that last
conv is 1×1. With ``init_channels = w`` the widths are ``in → w → … → 2w | … → 4w | … → 8w |
… → 16w | … → 32w`` and the side ``image_size → image_size/32``. The head is an ungrouped 1×1
SOC ``32w·(image_size/32)² → num_classes`` (first outputs kept), after an exact space-to-depth
when ``image_size > 32``. Every layer is orthogonal (up to the Taylor remainder), a
permutation or MaxMin, so the network is 1-Lipschitz up to the optional input normalisation
(Lipschitz ``1/min(std)``), which :func:`nominal_lipschitz` reports; certificates use the
strict :func:`~sorth.nn.lipschitz_bound`, which accounts for the truncation.

``conv="soc"`` uses :class:`~sorth.nn.SOC2d`; ``conv="gs"`` uses
:class:`~sorth.nn.GSOrthogonalConv2d` with ``groups``; the head is a plain SOC in both cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sorth.errors import BlockSizeError, ShapeError, check_choice, check_positive_int
from sorth.nn.activations import MaxMin, MaxMinPermuted
from sorth.nn.gs_conv import GSOrthogonalConv2d, parse_groups
from sorth.nn.soc import SOC2d

__all__ = ["LipConvNet", "Normalize", "SpaceToDepth", "nominal_lipschitz"]

CONVS: tuple[str, ...] = ("soc", "gs")
ACTIVATIONS: tuple[str, ...] = ("maxmin", "maxmin_permuted")


class Normalize(nn.Module):
    """Per-channel ``(x − mean)/std``: ``(N, C, H, W) -> same``; Lipschitz ``1/min(std)``."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ShapeError(f"mean={list(mean)} and std={list(std)} need equal lengths, std > 0.")
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("mean", torch.tensor(list(mean), **factory).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), **factory).view(1, -1, 1, 1))

    @property
    def lipschitz(self) -> float:
        return float(1.0 / self.std.min())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class SpaceToDepth(nn.Module):
    """Invertible downsampling ``(N, C, H·r, W·r) -> (N, C·r², H, W)`` (a permutation)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = check_positive_int("factor", factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def nominal_lipschitz(model: nn.Module) -> float:
    """Lipschitz constant *if* every layer were exactly orthogonal: ``Π 1/min(std)``.

    Not a certificate: it ignores the Taylor truncation and returns 1.0 for any model without
    a :class:`Normalize` (a plain MLP included). Certify with :func:`sorth.nn.lipschitz_bound`.
    """
    out = 1.0
    for m in model.modules():
        if isinstance(m, Normalize):
            out *= m.lipschitz
    return out


def _check_args(depth: int, init_channels: int, image_size: int) -> None:
    check_positive_int("depth", depth)
    check_positive_int("init_channels", init_channels)
    check_positive_int("image_size", image_size)
    if depth % 5:
        raise BlockSizeError(
            f"depth={depth} must be a multiple of 5 (five stages of depth/5 blocks); "
            f"e.g. {max(5, depth - depth % 5)} or {depth - depth % 5 + 5}."
        )
    if init_channels % 2:
        raise BlockSizeError(f"init_channels={init_channels} must be even (MaxMin pairs).")
    if image_size % 32:
        raise BlockSizeError(
            f"image_size={image_size} must be a multiple of 32 (five stride-2 stages); resize "
            f"or pad the images (e.g. 8×8 digits upscaled to 32×32)."
        )


class LipConvNet(nn.Module):
    """LipConvNet-``depth``: ``(N, in_channels, S, S) -> (N, num_classes)`` logits.

    Args:
        depth: number of conv blocks, a multiple of 5 (paper: 15).
        conv: ``"soc"`` or ``"gs"``.
        groups: ``(a, b)`` / ``(a, None)`` for ``conv="gs"`` (paper Table 3: ``(4, None)``,
            ``(4, 1)``, ``(4, 2)``, ``(4, 4)``); ignored for ``"soc"``.
        init_channels: width ``w`` of stage 1 (paper: 32).
        num_classes: outputs of the head.
        activation: ``"maxmin"`` or ``"maxmin_permuted"``; default ``"maxmin"`` for SOC and
            ``"maxmin_permuted"`` for GS (the paper's choices).
        in_channels: image channels.
        image_size: side ``S``, a multiple of 32.
        paired: paired channel shuffles in GS convs.
        mean, std: optional input normalisation (its Lipschitz constant enters the certificate).
        padding_mode, train_terms, eval_terms, correction: passed to every conv.
        generator, device, dtype: initialisation RNG and factory kwargs.

    Example:
        >>> net = LipConvNet(depth=5, conv="gs", groups=(2, None), init_channels=8,
        ...                  num_classes=10, in_channels=1)
        >>> net(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 15,
        conv: Literal["soc", "gs"] = "soc",
        groups: int | tuple[int, int | None] = (4, None),
        init_channels: int = 32,
        num_classes: int = 10,
        activation: Literal["maxmin", "maxmin_permuted"] | None = None,
        in_channels: int = 3,
        image_size: int = 32,
        *,
        paired: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        padding_mode: Literal["zeros", "circular"] = "zeros",
        train_terms: int = 5,
        eval_terms: int = 12,
        correction: float | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_choice("conv", conv, CONVS)
        activation = activation or ("maxmin" if conv == "soc" else "maxmin_permuted")
        check_choice("activation", activation, ACTIVATIONS)
        _check_args(depth, init_channels, image_size)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        groups = parse_groups(groups) if conv == "gs" else (1, None)
        self.depth, self.conv, self.groups, self.init_channels = depth, conv, groups, init_channels
        self.num_classes, self.activation, self.in_channels = num_classes, activation, in_channels
        self.image_size, self.paired = image_size, paired
        factory = {"device": device, "dtype": dtype}
        common = {"padding_mode": padding_mode, "train_terms": train_terms,
                  "eval_terms": eval_terms, "correction": correction, "generator": generator,
                  **factory}  # fmt: skip
        act_cls = MaxMin if activation == "maxmin" else MaxMinPermuted
        layers = nn.Sequential()
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise ShapeError("pass both mean and std for input normalisation, or neither.")
            layers.add_module("normalize", Normalize(mean, std, **factory))
        width, planes = in_channels, init_channels
        for stage in range(1, 6):
            for j in range(1, depth // 5 + 1):
                last = j == depth // 5
                stride, k = (2 if last else 1), (1 if last and stage == 5 else 3)
                out = planes * stride
                if conv == "soc":
                    layer = SOC2d(width, out, k, stride, **common)
                else:
                    layer = GSOrthogonalConv2d(
                        width, out, k, stride, groups, paired=paired, **common
                    )
                layers.add_module(f"conv{stage}_{j}", layer)
                layers.add_module(f"act{stage}_{j}", act_cls(out))
                width = out
            planes = width
        side = image_size // 32
        if side > 1:
            layers.add_module("space_to_depth", SpaceToDepth(side))
        layers.add_module("head", SOC2d(width * side * side, num_classes, 1, **common))
        layers.add_module("flatten", nn.Flatten(1))
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, S, S) -> (N, num_classes)``."""
        S = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, S, S):
            raise ShapeError(
                f"LipConvNet expects (N, {self.in_channels}, {S}, {S}), got {tuple(x.shape)}."
            )
        return self.layers(x)

    def nominal_lipschitz(self) -> float:
        """Lipschitz constant if every layer were exactly orthogonal (``1/min(std)`` or 1)."""
        return nominal_lipschitz(self)

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, conv={self.conv!r}, groups={self.groups}, "
            f"init_channels={self.init_channels}, num_classes={self.num_classes}, "
            f"activation={self.activation!r}, in_channels={self.in_channels}, "
            f"image_size={self.image_size}"
        )
