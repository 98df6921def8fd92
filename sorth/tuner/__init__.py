"""sorth as a PEFT method: ``get_peft_model(model, SOrthConfig(...))``.

Importing this package registers sorth with PEFT (``PeftType.SORTH``, prefix ``sorth_``); calling
:func:`register` again is harmless. ``import sorth`` arranges the registration without importing
PEFT itself (Note [registration] in :mod:`sorth._peft_hook`).
"""

from __future__ import annotations

from sorth.tuner.config import SOrthConfig
from sorth.tuner.errors import AdapterCheckpointError, UnsupportedLayerError
from sorth.tuner.layer import SOrthLayer
from sorth.tuner.layer_types import Conv1D, Conv2d, Embedding, Linear
from sorth.tuner.model import SOrthModel
from sorth.tuner.registration import register

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

register()
