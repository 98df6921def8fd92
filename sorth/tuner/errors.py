"""Errors of the PEFT adapter (``ValueError`` subclasses, see :mod:`sorth.errors`)."""

from __future__ import annotations

import os

from sorth.errors import SOrthValueError

__all__ = ["ADAPTER_FILE", "AdapterCheckpointError", "UnsupportedLayerError", "check_adapter_file"]

ADAPTER_FILE = "adapter_model.safetensors"


class UnsupportedLayerError(SOrthValueError):
    """A targeted module whose type (or geometry) sorth cannot adapt."""


class AdapterCheckpointError(SOrthValueError):
    """An adapter checkpoint that is unreadable or does not fit the model it is loaded into."""


def check_adapter_file(directory: str) -> None:
    """Raise :class:`AdapterCheckpointError` if ``directory/adapter_model.safetensors`` exists
    but cannot be read completely (truncated, corrupted); hub ids and missing files pass."""
    path = os.path.join(directory, ADAPTER_FILE)
    if not os.path.isfile(path):
        return
    from safetensors.torch import load_file

    try:
        load_file(path)
    except Exception as err:  # safetensors raises its own (Rust) error types
        raise AdapterCheckpointError(
            f"{path} ({os.path.getsize(path)} bytes) cannot be read as safetensors: "
            f"{type(err).__name__}: {err}. The file is truncated or corrupted; save or copy the "
            "adapter again."
        ) from err
