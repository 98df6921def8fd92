"""Block-diagonal matrices stored as their blocks.

Legend: ``k`` blocks, each ``b_out × b_in`` (torch linear convention, out × in); the matrix is
``diag(B_1, …, B_k)`` of shape ``(k·b_out) × (k·b_in)``.
"""

from __future__ import annotations

import torch

__all__ = ["blockdiag_apply", "blockdiag_apply_reference", "blockdiag_to_dense"]


def blockdiag_apply(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``y = diag(B_1..B_k) @ x`` on the last dim: ``(..., k·b_in) -> (..., k·b_out)``.

    Args:
        x: ``(..., k·b_in)``.
        blocks: ``(k, b_out, b_in)``.

    One batched matmul over the ``k`` blocks (``einsum`` lowers to ``bmm``); no dense matrix.
    """
    k, _, b_in = blocks.shape  # (k, b_out, b_in)
    xb = x.unflatten(-1, (k, b_in))  # (..., k, b_in)
    y = torch.einsum("...ki,koi->...ko", xb, blocks)  # (..., k, b_out)
    return y.flatten(-2)  # (..., k·b_out)


def blockdiag_to_dense(blocks: torch.Tensor) -> torch.Tensor:
    """Dense ``diag(B_1..B_k)``: ``(k, b_out, b_in) -> (k·b_out, k·b_in)``."""
    return torch.block_diag(*blocks.unbind(0))


def blockdiag_apply_reference(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Obviously-correct dense reference of :func:`blockdiag_apply` (tests only)."""
    return x @ blockdiag_to_dense(blocks).T
