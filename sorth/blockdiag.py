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

    One ``torch.bmm`` over the ``k`` blocks on the block-major copy ``(k, M, b_in)`` of ``x``
    (``M`` = batch dims flattened); no dense matrix. ``einsum`` would pick a slower layout on CPU.
    """
    k, b_out, b_in = blocks.shape  # (k, b_out, b_in)
    xb = x.reshape(-1, k, b_in).transpose(0, 1).contiguous()  # (k, M, b_in)
    y = torch.bmm(xb, blocks.mT)  # (k, M, b_out)
    return y.transpose(0, 1).reshape(*x.shape[:-1], k * b_out)  # (..., k·b_out)


def blockdiag_to_dense(blocks: torch.Tensor) -> torch.Tensor:
    """Dense ``diag(B_1..B_k)``: ``(k, b_out, b_in) -> (k·b_out, k·b_in)``."""
    return torch.block_diag(*blocks.unbind(0))


def blockdiag_apply_reference(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Obviously-correct dense reference of :func:`blockdiag_apply` (tests only)."""
    return x @ blockdiag_to_dense(blocks).T
