"""sorth as a PEFT method: ``get_peft_model(model, SOrthConfig(...))``.

Importing this package registers sorth with PEFT (``PeftType.SORTH``, prefix ``sorth_``); calling
:func:`register` again is harmless. ``import sorth`` arranges the registration without importing
PEFT itself (Note [registration] in :mod:`sorth._peft_hook`).

Layering (as PEFT's method packages): :mod:`~sorth.tuner.peft_type` (the names, a leaf) →
:mod:`~sorth.tuner.config` → :mod:`~sorth.tuner.layer` → :mod:`~sorth.tuner.bnb` →
:mod:`~sorth.tuner.model`; this module is the only one that sees config and model together.
"""

from __future__ import annotations

from peft import mapping
from peft.utils import register_peft_method

from sorth.tuner.config import SOrthConfig
from sorth.tuner.errors import AdapterCheckpointError, UnsupportedLayerError
from sorth.tuner.layer import Conv1D, Conv2d, Embedding, Linear, SOrthLayer
from sorth.tuner.model import SOrthModel
from sorth.tuner.peft_type import NAME, PREFIX, sorth_peft_type

__all__ = [
    "AdapterCheckpointError",
    "Conv1D",
    "Conv2d",
    "Embedding",
    "Linear",
    "SOrthConfig",
    "SOrthLayer",
    "SOrthModel",
    "UnsupportedLayerError",
    "register",
]


def register() -> None:
    """Register :class:`SOrthConfig` / :class:`SOrthModel` with PEFT; harmless to call twice.

    ``register_peft_method`` raises ``KeyError`` when called twice, so PEFT's mappings are
    filled only if they do not already point at sorth.
    """
    peft_type = sorth_peft_type()
    if mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is SOrthModel:
        return
    for table in (
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
        mapping.PEFT_TYPE_TO_TUNER_MAPPING,
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        table.pop(peft_type, None)  # a stale entry, e.g. after importlib.reload(sorth.tuner)
    register_peft_method(name=NAME, config_cls=SOrthConfig, model_cls=SOrthModel, prefix=PREFIX)


register()
