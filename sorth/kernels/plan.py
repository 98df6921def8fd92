"""How each permutation of a GS chain is applied: a *shuffle plan*, shared by every kernel.

A permutation ``P`` (index vector in the scatter convention, Note [scatter] in
:mod:`sorth.permutations`) is classified once, outside the hot path:

- ``None``: the identity;
- an ``int`` ``q``: the paper's shuffle ``P_(q, n)``, done as reshapes and transposes;
- a ``torch.long`` index vector: a general permutation, done as a gather.

The plan of an ``m``-factor chain holds ``(P_i, P_iᵀ)`` for ``i = 1 … m+1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sorth.permutations import gs_permutation, gs_shuffle_groups, invert_permutation

__all__ = ["Perm", "Shuffle", "ShufflePlan", "plan_index", "shuffle_plan"]

Perm = torch.Tensor | None
Shuffle = int | torch.Tensor | None  # None: identity; q: P_(q, n); tensor: index vector
ShufflePlan = tuple[tuple[Shuffle, Shuffle], ...]  # (P_i, P_iᵀ) for i = 1 … m+1


def shuffle_plan(perms: Sequence[Perm]) -> ShufflePlan:
    """``(P_i, P_iᵀ)`` of every permutation, as ``None`` / ``P_(q,n)``'s ``q`` / index vector."""
    plan = []
    for P in perms:
        P = None if P is None else P.long()
        q = None if P is None else gs_shuffle_groups(P)
        if P is None or q == 1:
            plan.append((None, None))
        elif q is not None:
            plan.append((q, P.numel() // q))  # P_(q,n)ᵀ = P_(n/q,n)
        else:
            plan.append((P, invert_permutation(P)))
    return tuple(plan)


def plan_index(s: Shuffle, n: int, device: torch.device) -> torch.Tensor | None:
    """The index vector ``(n,)`` of one plan entry (``None`` stays ``None``), on ``device``."""
    if s is None:
        return None
    if isinstance(s, int):
        return gs_permutation(s, n, device=device)
    return s.to(device)
