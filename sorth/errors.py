"""Error types raised on bad user input.

Every error is a :class:`ValueError` subclass whose message names the bad value, the rule it
breaks and how to fix it. They are raised when an object is built, never deep inside a forward.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = [
    "BlockSizeError",
    "MethodError",
    "PermutationError",
    "SOrthValueError",
    "ShapeError",
    "check_choice",
    "check_positive_int",
    "divisors",
    "renamed_keyword",
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


def renamed_keyword(
    where: str, old: str, new: str, old_value: Any, new_value: Any, default: Any
) -> Any:
    """The value of keyword ``new`` of ``where``, also accepted under its deprecated name ``old``.

    ``old_value`` is ``None`` when ``old`` was not given; then ``new_value`` is returned. Else
    ``old_value`` is returned with a :class:`DeprecationWarning` naming the new keyword, unless
    ``new`` was given too with another value (``new_value`` not ``default``), which raises
    :class:`SOrthValueError`: the two spellings disagree.

    Example:
        >>> renamed_keyword("f", "method", "orthogonal_map", None, "expm", "cayley")
        'expm'
    """
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise SOrthValueError(
            f"{where}: {new}={new_value!r} and its deprecated name {old}={old_value!r} disagree; "
            f"pass only {new}=."
        )
    warnings.warn(
        f"{where}({old}=...) is deprecated; the keyword is {new}= (here {new}={old_value!r}).",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
