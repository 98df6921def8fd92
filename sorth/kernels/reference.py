"""Dense reference of the GS multiply: every factor and permutation built as a dense matrix.

Slow (``O(m · n²)`` memory) and obviously correct; every fast kernel is tested against it on
outputs and all gradients (autograd differentiates the dense products).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sorth.blockdiag import blockdiag_to_dense
from sorth.kernels.plan import Perm
from sorth.permutations import permutation_matrix

__all__ = ["gs_apply_reference"]


def gs_apply_reference(
    x: torch.Tensor, factors: Sequence[torch.Tensor], perms: Sequence[Perm]
) -> torch.Tensor:
    """Dense ``y = x Aᵀ`` for ``A = P_{m+1} B_m ··· B_1 P_1`` (reference of ``gs_apply``).

    Args:
        x: ``(..., n_in)``.
        factors: ``m`` tensors ``(k_i, b_out_i, b_in_i)``.
        perms: ``m + 1`` index vectors (or ``None``).

    Returns:
        ``(..., n_out)``.
    """
    A = None
    mats: list[torch.Tensor] = []
    for B, P in zip(factors, perms, strict=False):
        n = B.shape[0] * B.shape[2]
        mats.append(_dense_perm(P, n, B))
        mats.append(blockdiag_to_dense(B))
    last = factors[-1]
    mats.append(_dense_perm(perms[-1], last.shape[0] * last.shape[1], last))
    for M in mats:
        A = M if A is None else M @ A
    return x @ A.T


def _dense_perm(P: Perm, n: int, like: torch.Tensor) -> torch.Tensor:
    if P is None:
        return torch.eye(n, dtype=like.dtype, device=like.device)
    return permutation_matrix(P, dtype=like.dtype).to(like.device)
