"""One clear error for a missing optional dependency: the module and the extra that has it."""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency of ``sorth.integrations`` is not installed (names the extra)."""


def require(feature: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` unless every one of ``modules`` can be imported.

    Only looks the modules up (``importlib.util.find_spec``); nothing is imported, so calling
    this at the top of a glue module keeps its heavy imports lazy.

    Example: ``require("sorth.integrations.diffusers", "diffusion", "diffusers", "peft")``.
    """
    missing = [m for m in modules if not _available(m)]
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)}, which is not installed: install sorth's "
            f'"{extra}" extra (in a clone: pip install -c constraints.txt -e ".[{extra}]")',
            name=missing[0],
        )


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or sys.modules[name] is None
        return False
