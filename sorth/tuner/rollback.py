"""A failed adapter load leaves the model as it was (Note [load rollback]).

Note [load rollback]: ``PeftModel.from_pretrained(base, path)`` first injects the adapter into
``base`` (in place), then loads the checkpoint; ``peft_model.load_adapter(path, name)`` adds the
adapter, then loads. PEFT does not undo the injection when the load fails (e.g. a
``modules_to_save`` head saved with 3 labels loaded into one with 2), so sorth does:

* :func:`record_injection` (from ``SOrthModel._prepare_model``, before anything is changed)
  keeps a :class:`ModelSnapshot` of the model *if* the injection runs inside one of PEFT's load
  entry points (:data:`LOADERS`, found on the call stack), tagged with that frame.
* :func:`begin_load` (from ``SOrthModel._remap_adapter_state_dict_for_load``, right before
  PEFT's ``model.load_state_dict``) builds a :class:`LoadTransaction`: the injection snapshot if
  its load frame is still on the stack (the injection belongs to this load), else a snapshot
  of the model as it is now (loading into an existing adapter), plus copies of every tensor the
  load will write. It hooks ``load_state_dict`` once: the pre-hook captures torch's list of
  errors, the post-hook (after the whole tree is loaded, before torch raises) rolls back and
  raises :class:`AdapterCheckpointError` if that list is not empty.

A :class:`ModelSnapshot` keeps, for every module, its attribute dict and a copy of each
container in it (``_modules``, ``_parameters``, ``_buffers``, hooks, ``peft_config``, the
per-adapter dicts of the tuner layers), restored *in place* so aliases (the tuner and the base
model share ``peft_config``) stay aliases; and each parameter's ``requires_grad``. Tensor
values are not copied wholesale: only those the load writes.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sorth.tuner.errors import AdapterCheckpointError

__all__ = ["LOADERS", "LoadTransaction", "ModelSnapshot", "begin_load", "record_injection"]

LOADERS: frozenset[tuple[str, str]] = frozenset(
    {("peft.peft_model", "from_pretrained"), ("peft.peft_model", "load_adapter")}
)
_PENDING: weakref.WeakKeyDictionary[nn.Module, tuple[frozenset, ModelSnapshot]] = (
    weakref.WeakKeyDictionary()
)
_CONTAINERS = (dict, list, set)


def _load_frames() -> frozenset[tuple[int, Any]]:
    """``(id, code)`` of the PEFT load frames on the current call stack."""
    out = set()
    frame = sys._getframe(1)
    while frame is not None:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) in LOADERS:
            out.add((id(frame), frame.f_code))
        frame = frame.f_back
    return frozenset(out)


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, (dict, set)) else list(value)


def _restore_into(target: Any, saved: Any) -> None:
    if isinstance(target, list):
        target[:] = saved
    else:
        target.clear()
        target.update(saved)


class ModelSnapshot:
    """Attribute dicts (containers copied one level) and ``requires_grad`` of ``roots``' modules."""

    def __init__(self, roots: Iterable[nn.Module]):
        seen: set[int] = set()
        self.records: list[tuple[nn.Module, dict, dict]] = []
        self.flags: list[tuple[torch.Tensor, bool]] = []
        for root in roots:
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                attrs = dict(module.__dict__)
                contents = {k: _copy(v) for k, v in attrs.items() if isinstance(v, _CONTAINERS)}
                self.records.append((module, attrs, contents))
                params = [p for p in module._parameters.values() if p is not None]
                self.flags += [(p, p.requires_grad) for p in params]

    def restore(self) -> None:
        for module, attrs, contents in self.records:
            current = module.__dict__
            for key in [k for k in current if k not in attrs]:
                del current[key]
            current.update(attrs)
            for key, saved in contents.items():
                _restore_into(attrs[key], saved)
        for param, flag in self.flags:
            param.requires_grad_(flag)


def record_injection(model: nn.Module, tuner: nn.Module) -> None:
    """Snapshot ``model`` (and ``tuner``) before an injection that is part of a PEFT load."""
    frames = _load_frames()
    _PENDING.pop(model, None)
    if frames:
        _PENDING[model] = (frames, ModelSnapshot([model, tuner]))


class LoadTransaction:
    """Undo of one adapter load: a structural snapshot plus the tensors the load writes."""

    def __init__(
        self,
        snapshot: ModelSnapshot,
        model: nn.Module,
        keys: Iterable[str],
        new_adapter: str | None = None,
    ):
        self.snapshot, self.new_adapter = snapshot, new_adapter
        tensors = model.state_dict(keep_vars=True)
        prefix = "base_model.model."
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []
        for key in keys:
            for candidate in (key, key.removeprefix(prefix), prefix + key):
                t = tensors.get(candidate)
                if t is not None and not t.is_meta:
                    self.values.append((t, t.detach().clone()))
                    break
        self._handles: list[Any] = []

    def rollback(self) -> None:
        self.remove_hooks()
        with torch.no_grad():
            for tensor, saved in self.values:
                tensor.copy_(saved)
        self.snapshot.restore()
        if self.new_adapter is not None:  # PeftModel.add_adapter registers it before injecting
            for module, _, _ in self.snapshot.records:
                config = module.__dict__.get("peft_config")
                if isinstance(config, dict):
                    config.pop(self.new_adapter, None)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def guard(self, model: nn.Module, adapter_name: str, keys: Iterable[str]) -> None:
        """Roll back and raise if the next ``model.load_state_dict`` reports errors."""
        expected = {k.removeprefix("base_model.model.") for k in keys}
        errors: list[list[str]] = []

        def pre_hook(module, state_dict, prefix, *args) -> None:
            loaded = {k.removeprefix("base_model.model.") for k in state_dict}
            if prefix == "" and loaded <= expected:
                errors.append(args[-1])  # torch's error_msgs list, filled during the load
            else:  # not the load this transaction is for
                self.remove_hooks()

        def post_hook(module, incompatible_keys) -> None:
            self.remove_hooks()
            if errors and errors[0]:
                messages = "; ".join(m.replace("\n\t", " ") for m in errors[0])
                self.rollback()
                raise AdapterCheckpointError(
                    f"loading adapter {adapter_name!r} failed: {messages}. The model was left as "
                    "it was. Was the checkpoint saved for another model (e.g. another number of "
                    "labels in a modules_to_save head)?"
                )

        self._handles = [
            model.register_load_state_dict_pre_hook(pre_hook),
            model.register_load_state_dict_post_hook(post_hook),
        ]


def begin_load(model: nn.Module, adapter_name: str, keys: Iterable[str]) -> LoadTransaction:
    """The :class:`LoadTransaction` of a load into ``model`` (see Note [load rollback])."""
    keys = list(keys)
    frames = _load_frames()
    snapshot = None
    for module in model.modules():
        pending = _PENDING.pop(module, None)
        if pending is not None and pending[0] & frames:
            snapshot = pending[1]
            break
    if snapshot is None:  # loading into an adapter that existed before this call
        return LoadTransaction(ModelSnapshot([model]), model, keys)
    return LoadTransaction(snapshot, model, keys, new_adapter=adapter_name)
