"""The names sorth registers with PEFT: ``PeftType.SORTH`` and the parameter prefix ``sorth_``.

A leaf of the tuner (imports only ``peft.utils.PeftType``), as PEFT's ``peft/utils/peft_types.py``:
:mod:`sorth.tuner.config` reads the type, :mod:`sorth.tuner.model` the prefix, and
:func:`sorth.tuner.register` (the only place that sees config and model together) both.
``register_peft_method`` accepts only names that are members of the closed ``PeftType`` enum, so
:func:`sorth_peft_type` first extends the enum (once; pinned: peft 0.21.x). See Note
[registration] in :mod:`sorth._peft_hook` for *when* the registration runs.
"""

from __future__ import annotations

from peft.utils import PeftType

__all__ = ["NAME", "PREFIX", "sorth_peft_type"]

NAME = "sorth"
PREFIX = "sorth_"


def sorth_peft_type() -> PeftType:
    """``PeftType.SORTH``, adding the member to PEFT's enum on first use (idempotent).

    The enum has no public way to grow, so the member is inserted into the enum's private maps
    (CPython 3.10–3.13 ``Enum`` layout): ``PeftType.SORTH``, ``PeftType("SORTH")``, iteration and
    pickling then behave as for built-in members.
    """
    key = NAME.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, key, member)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    return member
