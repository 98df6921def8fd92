"""Two-factor GS structure: Proposition 1's block-rank bound and Algorithm 1's projection.

For ``A = P_L · L · P · R · P_R`` (Definition 3.1) with ``L``: ``(k_L, b_L1, b_L2)`` and
``R``: ``(k_R, b_R1, b_R2)``, block ``(k1, k2)`` (``b_L1 × b_R2``) of ``P_Lᵀ A P_Rᵀ = L P R`` is
``Σ_i L[k1][:, σ(i) mod b_L2] ⊗ R[k2][i mod b_R1, :]`` over the inner indices ``i`` that ``P``
routes from block ``k2`` of ``R``'s output to block ``k1`` of ``L``'s input, ``σ = perm⁻¹``
(Note [scatter] in :mod:`sorth.permutations`): a sum of that many rank-1 terms.
:class:`sorth.GSMatrix` exposes both as :meth:`~sorth.GSMatrix.block_ranks` and
:meth:`~sorth.GSMatrix.project`.
"""

from __future__ import annotations

import torch

from sorth.permutations import invert_permutation

__all__ = ["block_rank_bound", "project_two_factor"]

Shape3 = tuple[int, int, int]


def _inner_map(P: torch.Tensor | None, s: int, device: torch.device):
    """``(i, σ(i))`` for the inner permutation ``P`` (``σ = perm⁻¹``, Note [scatter])."""
    i = torch.arange(s, device=device)
    return i, (i if P is None else invert_permutation(P))


def block_rank_bound(
    L_shape: Shape3, R_shape: Shape3, P: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Proposition 1: ``(k_L, k_R)`` long tensor of rank bounds of the blocks of ``L P R``.

    Block ``(k1, k2)`` has rank at most ``#{i : ⌊i / b_R1⌋ = k2, ⌊σ(i) / b_L2⌋ = k1}``
    (divisions by block *sizes*).
    """
    kL, _, bL2 = L_shape
    kR, bR1, _ = R_shape
    i, sigma = _inner_map(P, kR * bR1, device)
    ranks = torch.zeros(kL, kR, dtype=torch.long, device=device)
    ranks.index_put_((sigma // bL2, i // bR1), torch.ones_like(i), accumulate=True)
    return ranks


def project_two_factor(
    A: torch.Tensor,
    L_shape: Shape3,
    R_shape: Shape3,
    perms: list[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1: ``(R, L)`` of the best Frobenius approximation of ``A`` in the class.

    Each block of ``P_Lᵀ A P_Rᵀ`` is replaced by its truncated SVD at the rank Proposition 1
    allows, and the singular vectors (scaled by ``√σ``) go into the columns of ``L`` and rows
    of ``R`` that ``P`` routes to that block (exact by Eckart–Young: the blocks are
    independent).

    Args:
        A: ``(k_L·b_L1, k_R·b_R2)``.
        L_shape, R_shape: ``(k, b_out, b_in)`` of the two factors.
        perms: ``[P_R, P, P_L]`` (index vectors or ``None``).

    Returns:
        ``R``: ``(k_R, b_R1, b_R2)`` and ``L``: ``(k_L, b_L1, b_L2)`` in ``A``'s dtype.
    """
    kL, bL1, bL2 = L_shape
    kR, bR1, bR2 = R_shape
    P_R, P, P_L = perms
    M = A if P_L is None else A[invert_permutation(P_L)]  # P_Lᵀ A
    M = M if P_R is None else M[:, P_R]  # (P_Lᵀ A) P_Rᵀ
    blocks = M.reshape(kL, bL1, kR, bR2).permute(0, 2, 1, 3)  # (kL, kR, bL1, bR2)
    # U: (kL, kR, bL1, q), S: (kL, kR, q), Vh: (kL, kR, q, bR2), q = min(bL1, bR2)
    U, S, Vh = torch.linalg.svd(blocks, full_matrices=False)
    q = S.shape[-1]
    i, sigma = _inner_map(P, kR * bR1, A.device)
    k1, k2 = sigma // bL2, i // bR1
    key = k1 * kR + k2
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    t = torch.empty_like(i)  # rank-1 term index of i inside its block
    t[order] = torch.arange(i.numel(), device=A.device) - torch.searchsorted(sorted_key, sorted_key)
    keep = (t < q).to(A.dtype)  # ranks beyond min(bL1, bR2) get zero vectors
    tc = t.clamp(max=q - 1)
    root = S[k1, k2, tc].sqrt() * keep  # (s,)
    u = U[k1, k2, :, tc] * root[:, None]  # (s, bL1): column σ(i) of L
    v = Vh[k1, k2, tc, :] * root[:, None]  # (s, bR2): row i of R
    L_cols = torch.empty_like(u)
    L_cols[sigma] = u
    L = L_cols.reshape(kL, bL2, bL1).transpose(1, 2).contiguous()  # (kL, bL1, bL2)
    R = v.reshape(kR, bR1, bR2)  # (kR, bR1, bR2)
    return R, L
