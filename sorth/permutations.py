"""Permutations as ``torch.long`` index vectors.

Note [scatter]: a permutation matrix ``P`` is stored as the index vector ``perm`` with
``P @ x == x[..., perm]``, so ``P[j, perm[j]] = 1``. The paper's ``P_(k,n)`` is defined by
``sigma(i) = (i mod k) * (n/k) + floor(i/k)`` with the 1 of column ``i`` at row ``sigma(i)``
("entry i is sent to sigma(i)"), hence ``perm = sigma^{-1}`` and::

    P_(k,n) @ x == x.reshape(n // k, k).T.reshape(n)

Output group ``g`` (contiguous, size ``n/k``) collects ``x[g], x[g+k], x[g+2k], ...``.
``P_(k,n)^T = P_(n/k,n)`` (the paper's Definition 5.2; its prose describes the inverse, the
formula and the authors' code this convention).

Legend: ``n`` length, ``k`` number of groups, ``b`` block size.
"""

from __future__ import annotations

import torch

from sorth.errors import BlockSizeError, PermutationError, check_positive_int, divisors

__all__ = [
    "butterfly_permutation",
    "compose_permutations",
    "gs_permutation",
    "gs_shuffle_groups",
    "identity_permutation",
    "invert_permutation",
    "is_identity_permutation",
    "paired_permutation",
    "permutation_matrix",
    "permute",
    "validate_permutation",
]


def _check_divides(k: int, n: int, what: str = "k") -> None:
    check_positive_int("n", n)
    check_positive_int(what, k)
    if n % k:
        raise BlockSizeError(f"{what}={k} must divide n={n}; valid choices here: {divisors(n)}.")


def identity_permutation(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The identity permutation ``arange(n)``: ``(n,)`` long."""
    check_positive_int("n", n)
    return torch.arange(n, device=device)


def gs_permutation(k: int, n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Index vector of the paper's ``P_(k,n)`` (Definition 5.2), scatter convention.

    ``x[..., gs_permutation(k, n)] == P_(k,n) @ x == x.reshape(n//k, k).T.reshape(n)``.

    Args:
        k: number of groups; must divide ``n``.
        n: length.

    Returns:
        ``(n,)`` long tensor. ``gs_permutation(3, 12)`` is ``[0,3,6,9,1,4,7,10,2,5,8,11]``.
    """
    _check_divides(k, n)
    return torch.arange(n, device=device).reshape(n // k, k).T.reshape(n)


def gs_shuffle_groups(perm: torch.Tensor) -> int | None:
    """The ``k`` with ``perm == gs_permutation(k, n)``, or ``None`` if ``perm`` is no ``P_(k,n)``.

    Recognises the paper's shuffle so that the hot path can apply it as the free reshape +
    transpose ``x.reshape(n//k, k).T`` instead of a gather (see Note [scatter]). The identity is
    ``P_(1,n)`` and returns 1. ``P_(k,n)`` has ``perm[1] == k`` whenever ``k < n``, so the test
    costs one scalar read and one length-``n`` comparison.
    """
    n = perm.numel()
    if n <= 1:
        return 1
    k = int(perm[1])
    if k < 1 or n % k:
        return None
    return k if torch.equal(perm, gs_permutation(k, n, device=perm.device)) else None


def paired_permutation(k: int, n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Index vector of the "paired" ``P_(k,n)`` (paper App. F): ``P_(k, n/2)`` on channel pairs.

    ``sigma(i) = (floor(i/2) mod k) * (n/k) + 2 * floor(i/(2k)) + (i mod 2)``; channels ``2j`` and
    ``2j+1`` move together, so MaxMin pairs stay in one group.

    Args:
        k: number of groups; ``2k`` must divide ``n``.
        n: length (even).

    Returns:
        ``(n,)`` long tensor ``perm`` with ``x[..., perm] == P_paired @ x``.
    """
    check_positive_int("n", n)
    check_positive_int("k", k)
    if n % (2 * k):
        valid = [d for d in divisors(n) if n % (2 * d) == 0]
        raise BlockSizeError(
            f"paired shuffle needs 2*k to divide n, got k={k}, n={n}; valid k here: {valid}."
        )
    pairs = gs_permutation(k, n // 2, device=device)  # (n/2,)
    return (2 * pairs[:, None] + torch.arange(2, device=device)).reshape(n)


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """Inverse (= transpose) of a permutation, in O(n) by ``scatter_`` (no sort).

    ``x[..., perm][..., invert_permutation(perm)] == x``.
    """
    inv = torch.empty_like(perm)
    inv.scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))
    return inv


def compose_permutations(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Index vector of ``P_then @ P_first``: ``x[..., first][..., then] == x[..., result]``."""
    return first[then]


def is_identity_permutation(perm: torch.Tensor | None) -> bool:
    """True when ``perm`` is ``None`` or equal to ``arange(n)``."""
    if perm is None:
        return True
    return bool(torch.equal(perm, torch.arange(perm.numel(), device=perm.device)))


def validate_permutation(perm: torch.Tensor, n: int, name: str = "perm") -> torch.Tensor:
    """Check that ``perm`` is a 1-D integer permutation of ``range(n)``; return it as long."""
    if not isinstance(perm, torch.Tensor):
        perm = torch.as_tensor(perm)
    if perm.dim() != 1 or perm.numel() != n:
        raise PermutationError(
            f"{name} has shape {tuple(perm.shape)}, expected ({n},): a permutation index vector "
            f"of the dimension it acts on."
        )
    if perm.dtype.is_floating_point or perm.dtype == torch.bool or perm.is_complex():
        raise PermutationError(f"{name} has dtype {perm.dtype}; pass an integer (long) tensor.")
    perm = perm.long()
    seen = torch.zeros(n, dtype=torch.bool, device=perm.device)
    if perm.min() < 0 or perm.max() >= n:
        raise PermutationError(f"{name} has entries outside [0, {n}); it is not a permutation.")
    seen[perm] = True
    if not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten()[:5].tolist()
        raise PermutationError(
            f"{name} is not a permutation of range({n}): indices {missing} are missing "
            f"(some entries repeat)."
        )
    return perm


def butterfly_permutation(
    level: int, block_size: int, n: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Grouping of BOFT's block butterfly factor number ``level`` (0-based).

    ``n`` is split into ``2n/b`` half-blocks of size ``b/2``. Factor ``level`` pairs half-block
    ``j`` with half-block ``j XOR 2**level``; the returned ``perm`` gathers each pair into one
    contiguous block of size ``b``, so the factor is ``perm^T · blockdiag(B) · perm``. Level 0
    is the identity (plain block-diagonal, OFT).

    Args:
        level: factor index ``i`` (``0 <= i``); ``2**level`` must divide ``n / b``.
        block_size: ``b`` (even).
        n: length.

    Returns:
        ``(n,)`` long tensor.
    """
    _check_divides(block_size, n, "block_size")
    if block_size % 2:
        raise BlockSizeError(f"butterfly needs an even block_size, got block_size={block_size}.")
    nblocks = n // block_size
    if level < 0 or nblocks % (2**level):
        raise BlockSizeError(
            f"butterfly factor {level} needs 2**{level} to divide the number of blocks "
            f"n/block_size={nblocks}; use fewer factors or a number of blocks that is a power of 2."
        )
    h = block_size // 2
    j = torch.arange(2 * nblocks, device=device)
    lower = j[(j // (2**level)) % 2 == 0]  # (nblocks,) half-blocks whose bit `level` is 0
    order = torch.stack([lower, lower + 2**level], dim=1).reshape(-1)  # (2*nblocks,)
    return (order[:, None] * h + torch.arange(h, device=device)).reshape(n)


def permute(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """``P @ x`` on the last dim: ``x[..., perm]`` (``None`` means identity)."""
    if perm is None:
        return x
    return x.index_select(-1, perm)


def permutation_matrix(perm: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``P`` with ``P @ x == x[perm]`` (for tests and plots only, never the hot path)."""
    n = perm.numel()
    P = torch.zeros(n, n, dtype=dtype, device=perm.device)
    P[torch.arange(n, device=perm.device), perm] = 1
    return P
