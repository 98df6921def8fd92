"""Orthogonal linear layers: GS-structured (:class:`GSOrthogonalLinear`) and dense Cayley.

Both compute ``y = S_out · Q · E_in · x + b`` with ``Q`` an orthogonal ``n × n`` matrix,
``n = max(in, out)``: ``E_in`` zero-pads the input to ``n`` features (``in < out``) and
``S_out`` keeps the first ``out`` outputs (``in > out``), exactly as :class:`~sorth.nn.SOC2d`
does with channels. Either way the layer is 1-Lipschitz and all its ``min(in, out)`` singular
values are 1 (rows or columns orthonormal).

``GSOrthogonalLinear``: ``Q = Pᵀ L P R`` from :class:`sorth.GSOrthogonal` (``n·(b−1)``
parameters, ``O(n·b)`` work per vector). ``CayleyLinear``: ``Q = (I + K)(I − K)⁻¹`` with a
dense skew ``K`` (``n(n−1)/2`` parameters, an ``n × n`` solve per forward), for comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sorth.errors import ShapeError, check_positive_int, renamed_keyword
from sorth.orthogonal import OrthogonalMap, cayley, unpack_skew
from sorth.parametrizations import GSOrthogonal

__all__ = ["CayleyLinear", "GSOrthogonalLinear"]


def _pad_features(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad the last dim to ``n``: ``(..., in) -> (..., n)``."""
    return F.pad(x, (0, n - x.shape[-1])) if x.shape[-1] < n else x


class _OrthogonalLinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, factory: dict):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.n = max(in_features, out_features)
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    def _orthogonal(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)``."""
        if x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{type(self).__name__} expects (..., {self.in_features}), got {tuple(x.shape)}."
            )
        y = self._orthogonal(_pad_features(x, self.n))[..., : self.out_features]
        return y if self.bias is None else y + self.bias


class GSOrthogonalLinear(_OrthogonalLinearBase):
    """1-Lipschitz linear layer with a GS-orthogonal weight: ``(..., in) -> (..., out)``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: learnable bias (zero init).
        nblocks: blocks per GS factor (exactly one of ``nblocks`` / ``block_size``; default
            ``block_size`` = the largest power of two ``≤ √n`` dividing ``n``).
        block_size: block size ``b``.
        orthogonal_map: orthogonal map of the blocks (``"cayley"``, ``"expm"``,
            ``"cayley_neumann"``).
        init_std: std of the random skew generators (0 gives ``Q = I``).
        generator, device, dtype: initialisation RNG and factory kwargs.
        method: deprecated name of ``orthogonal_map`` (a :class:`DeprecationWarning`).

    Example:
        >>> lin = GSOrthogonalLinear(64, 10, block_size=8)
        >>> lin(torch.randn(4, 64)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        nblocks: int | None = None,
        block_size: int | None = None,
        orthogonal_map: OrthogonalMap = "cayley",
        init_std: float = 0.5,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        method: OrthogonalMap | None = None,
    ):
        orthogonal_map = renamed_keyword(
            "GSOrthogonalLinear", "method", "orthogonal_map", method, orthogonal_map, "cayley"
        )
        super().__init__(in_features, out_features, bias, {"device": device, "dtype": dtype})
        if nblocks is None and block_size is None:
            block_size = _default_block_size(self.n)
        self.orth = GSOrthogonal(
            self.n, nblocks=nblocks, block_size=block_size, orthogonal_map=orthogonal_map,
            device=device, dtype=dtype,
        )  # fmt: skip
        if init_std:
            self.orth.reset_parameters("random", std=init_std, generator=generator)

    def _orthogonal(self, x: torch.Tensor) -> torch.Tensor:
        return self.orth(x)

    def dense_weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight ``S_out Q E_in`` (for inspection)."""
        return self.orth.dense()[: self.out_features, : self.in_features]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


def _default_block_size(n: int) -> int:
    b = 1
    while b * 2 <= n**0.5 and n % (b * 2) == 0:
        b *= 2
    return b


class CayleyLinear(_OrthogonalLinearBase):
    """1-Lipschitz linear layer with a dense Cayley-orthogonal weight (baseline).

    ``Q = (I + K)(I − K)⁻¹``, ``K`` skew with ``n(n−1)/2`` free entries.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        init_std: std of the random skew generator entries.
        generator, device, dtype: initialisation RNG and factory kwargs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init_std: float | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(in_features, out_features, bias, {"device": device, "dtype": dtype})
        n = self.n
        std = n**-0.5 if init_std is None else init_std
        free = torch.randn(n * (n - 1) // 2, generator=generator) * std
        self.skew_params = nn.Parameter(free.to(device=device, dtype=dtype))

    def orthogonal_matrix(self) -> torch.Tensor:
        """The dense orthogonal ``(n, n)`` ``Q``."""
        return cayley(unpack_skew(self.skew_params, self.n))

    def _orthogonal(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.orthogonal_matrix().to(x.dtype).mT

    def dense_weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight."""
        return self.orthogonal_matrix()[: self.out_features, : self.in_features]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
