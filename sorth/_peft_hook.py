"""Register sorth with PEFT as soon as both are imported, in either order.

Note [registration]: PEFT finds a method through dicts filled by ``register_peft_method``, so
``PeftModel.from_pretrained`` on a sorth adapter works only once sorth has registered itself.
``import sorth`` must stay torch-only, so it cannot import PEFT just to register. Instead:

* if ``peft`` is already in ``sys.modules`` at ``import sorth``, :func:`install` registers now;
* otherwise it puts a finder at the front of ``sys.meta_path``. Each time ``peft`` is looked up,
  the finder lets the normal finders locate it and wraps that spec's ``exec_module`` so that
  ``sorth.tuner.register()`` runs right after the ``peft`` package finished executing. The finder
  removes itself only then, once ``peft`` has really been executed: a mere look-up
  (``importlib.util.find_spec("peft")``, as transformers' ``from_pretrained`` and sorth's own
  ``require()`` do) returns a spec that is never executed, and must not disarm it. Nothing else
  is imported or changed.

Registration is idempotent (see :func:`sorth.tuner.register`). This module imports no third-party
package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from types import ModuleType

__all__ = ["install"]


def _register() -> None:
    tuner = sys.modules.get("sorth.tuner")
    if tuner is not None and getattr(tuner.__spec__, "_initializing", False):
        return  # `import sorth.tuner` itself imported peft; it registers when it finishes
    try:
        importlib.import_module("sorth.tuner").register()
    except Exception as err:  # never break `import peft` because of sorth
        warnings.warn(
            f"sorth could not register with PEFT ({type(err).__name__}: {err}); "
            "call sorth.tuner.register() to see the full error.",
            stacklevel=2,
        )


class _PeftImportHook(importlib.abc.MetaPathFinder):
    """Finder that registers sorth right after the ``peft`` package is executed, then leaves."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _PeftImportHook):
                continue
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            _disarm()  # peft is executed: no later look-up needs the hook
            _register()

        loader.exec_module = exec_module  # instance attribute: this spec's loader only
        return spec


def _disarm() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PeftImportHook)]


def install() -> None:
    """Register now if PEFT is imported, else arm the one-shot import hook (idempotent)."""
    if "peft" in sys.modules:
        _register()
        return
    if not any(isinstance(f, _PeftImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportHook())
