"""PEFT glue: build a config by method name, load / merge adapters, count parameters.

:func:`make_peft_config` and :data:`METHODS` are the method registry of
:mod:`sorth.integrations.methods` (one table for every recipe, the benchmark, the demo and the
``sorth`` command), re-exported here. Adapters are saved with ``save_pretrained`` and loaded with
``PeftModel.from_pretrained`` after ``import sorth`` (see :func:`load_adapter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sorth.integrations._extras import require
from sorth.integrations.methods import METHODS, make_peft_config

require("sorth.integrations.peft", "peft", "peft")

__all__ = [
    "METHODS",
    "count_parameters",
    "load_adapter",
    "make_peft_config",
    "merge_and_unload",
]


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def load_adapter(model: Any, adapter_dir: str | Path, *, merge: bool = False, **kwargs: Any) -> Any:
    """Load a saved adapter (sorth or PEFT baseline) onto ``model``; optionally merge it.

    Registers sorth's adapter type with PEFT first (``sorth.tuner.register()``, whatever was
    imported before), so the same call loads GSOFT and LoRA folders. With ``merge=True`` the
    adapter is folded into the weights and the plain model is returned (no inference overhead).
    """
    from peft import PeftModel

    import sorth.tuner

    sorth.tuner.register()  # idempotent; see Note [registration]

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), **kwargs)
    return merge_and_unload(peft_model) if merge else peft_model


def merge_and_unload(peft_model: Any) -> Any:
    """``peft_model.merge_and_unload()`` that also works with non-Linear ``modules_to_save``.

    Note [modules_to_save merge]: on peft 0.21.2, ``merge_and_unload`` of an OFT/BOFT (and
    sorth) model whose ``modules_to_save`` holds a module without ``.weight`` (RoBERTa's
    ``RobertaClassificationHead``) raises ``AttributeError: ... has no attribute 'weight'``;
    LoRA is unaffected. The trained copies are put in place of their wrappers first, so every
    method merges the same way. Modifies ``peft_model``; returns the plain base model.
    """
    from peft.utils import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    wrappers = [(n, m) for n, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    for name, wrapper in wrappers:
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, wrapper.modules_to_save[wrapper.active_adapters[0]])
    return peft_model.merge_and_unload()
