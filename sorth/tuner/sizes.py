"""The default block size of a sorth adapter (``SOrthConfig`` without ``block_size``/``nblocks``).

For a side of size ``n``, the block size is
the smallest divisor ``b`` of ``n`` with ``b ≥ √n``, i.e. ``b² ≥ n``, so ``r = n / b ≤ b``. By
Theorem 2 of the GSOFT paper the 2-factor GS matrix ``Pᵀ L P R`` with ``r`` blocks of size ``b`` is
dense exactly when ``b ≥ r``; this rule is the dense choice with the fewest parameters
(``2 · r · b(b−1)/2 = (b − 1) · n`` per side). Examples: ``n = 768 → b = 32`` (``r = 24``),
``n = 10 → b = 5``, ``n = 20 → b = 5``, a prime ``n → b = n`` (one dense block), ``n = 1 → b = 1``
(refused by the tuner: no rotation to train).

The rule is applied per layer and per side when the adapter is built. The config keeps
``block_size=None, nblocks=None`` (saved so in ``adapter_config.json``), so a saved adapter is
rebuilt with the same structure on load; ``sorth inspect`` shows ``block_size=auto`` and each
layer's resulting ``r × b``. Changing this rule would change the structure of saved adapters:
it is part of the checkpoint format.
"""

from __future__ import annotations

import math

from sorth.errors import check_positive_int

__all__ = ["default_block_size"]


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
