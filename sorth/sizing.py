"""Block counts and factor counts: ``n = nblocks · block_size``, Theorem 2's density counts and
the default block size.

Legend: ``n`` features, ``r`` = ``nblocks``, ``b`` = ``block_size``, ``m`` factors.

The default block size (:func:`default_block_size`; a ``SOrthConfig`` without
``block_size``/``nblocks``, and the recipes' unset ``--block_size``): for a side of size ``n``,
the smallest divisor ``b`` of ``n`` with ``b ≥ √n``, i.e. ``b² ≥ n``, so ``r = n / b ≤ b``. By
Theorem 2 of the GSOFT paper the 2-factor GS matrix ``Pᵀ L P R`` with ``r`` blocks of size ``b`` is
dense exactly when ``b ≥ r``; this rule is the dense choice with the fewest parameters
(``2 · r · b(b−1)/2 = (b − 1) · n`` per side). Examples: ``n = 768 → b = 32`` (``r = 24``),
``n = 10 → b = 5``, ``n = 20 → b = 5``, a prime ``n → b = n`` (one dense block), ``n = 1 → b = 1``
(refused by the tuner: no rotation to train).

The tuner applies the rule per layer and per side when the adapter is built. The config keeps
``block_size=None, nblocks=None`` (saved so in ``adapter_config.json``), so a saved adapter is
rebuilt with the same structure on load; ``sorth inspect`` shows ``block_size=auto`` and each
layer's resulting ``r × b``. Changing this rule would change the structure of saved adapters:
it is part of the checkpoint format.
"""

from __future__ import annotations

import math

from sorth.errors import BlockSizeError, check_positive_int, divisors

__all__ = [
    "default_block_size",
    "min_butterfly_factors_for_density",
    "min_factors_for_density",
    "resolve_blocks",
]


def default_block_size(n: int) -> int:
    """The smallest divisor ``b`` of ``n`` with ``b ≥ √n`` (the default block size of a side).

    Example:
        >>> default_block_size(768), default_block_size(10), default_block_size(7)
        (32, 5, 7)
    """
    check_positive_int("n", n)
    b = math.isqrt(n)
    if b * b < n:
        b += 1
    while n % b:
        b += 1
    return b


def min_factors_for_density(n: int, block_size: int) -> int:
    """Theorem 2: least ``m`` with ``GS(P_L, P_(r,n), …, P_R)`` dense, ``r = n/b``.

    ``m = 1 + ⌈log_b r⌉`` (exact integer arithmetic): each input reaches at most ``b^m`` outputs.
    """
    _blocks_for(n, block_size)  # validates that block_size divides n
    if block_size == 1:
        return 1 if n == 1 else n  # no mixing ever happens with 1×1 blocks
    m, reach = 1, block_size
    while reach < n:
        reach *= block_size
        m += 1
    return m


def min_butterfly_factors_for_density(n: int, block_size: int) -> int:
    """Block butterfly (BOFT) needs ``m = 1 + ⌈log_2 r⌉`` factors to be dense, ``r = n/b``."""
    r = _blocks_for(n, block_size)
    return 1 + max(0, (r - 1).bit_length())


def _blocks_for(n: int, block_size: int) -> int:
    return resolve_blocks(n, block_size=block_size)[0]


def resolve_blocks(
    n: int, *, nblocks: int | None = None, block_size: int | None = None
) -> tuple[int, int]:
    """``(nblocks, block_size)`` with ``nblocks · block_size == n`` from exactly one of them.

    Raises :class:`~sorth.errors.BlockSizeError` naming the value and the valid choices.
    """
    check_positive_int("n", n)
    if nblocks is None and block_size is None:
        raise BlockSizeError(f"give nblocks or block_size for n={n}; valid: {divisors(n)}.")
    if nblocks is not None:
        check_positive_int("nblocks", nblocks)
        if n % nblocks:
            raise BlockSizeError(
                f"nblocks={nblocks} must divide n={n}; valid choices here: {divisors(n)} "
                "(or pass block_size instead)."
            )
        if block_size is not None and block_size * nblocks != n:
            raise BlockSizeError(
                f"nblocks={nblocks} and block_size={block_size} disagree for n={n} "
                f"(need nblocks*block_size == n); pass only one of them."
            )
        return nblocks, n // nblocks
    check_positive_int("block_size", block_size)
    if n % block_size:
        raise BlockSizeError(
            f"block_size={block_size} must divide n={n}; valid choices here: {divisors(n)} "
            "(or pass nblocks instead)."
        )
    return n // block_size, block_size
