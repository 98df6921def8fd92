"""Error types raised on bad user input.

Every error is a :class:`ValueError` subclass whose message names the bad value, the rule it
breaks and how to fix it. They are raised when an object is built, never deep inside a forward.
"""

from __future__ import annotations

__all__ = [
    "BlockSizeError",
    "MethodError",
    "PermutationError",
    "SOrthValueError",
    "ShapeError",
    "divisors",
]


class SOrthValueError(ValueError):
    """Base class of every input error raised by sorth."""


class BlockSizeError(SOrthValueError):
    """A block size / number of blocks that does not fit the feature size."""


class PermutationError(SOrthValueError):
    """An index vector that is not a permutation of the expected length."""


class ShapeError(SOrthValueError):
    """Factor or input shapes that do not chain together."""


class MethodError(SOrthValueError):
    """An unknown option string (method, structure, ...)."""


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` in increasing order (used in error messages)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise :class:`MethodError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise MethodError(f"{name}={value!r} is not supported; choose one of {list(choices)}.")


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive ``int``, else raise :class:`BlockSizeError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BlockSizeError(f"{name}={value!r} must be a positive integer.")
    return value
