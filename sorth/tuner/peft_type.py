"""Adding ``PeftType.SORTH`` and registering sorth with PEFT (pinned: peft 0.21.x).

``register_peft_method`` accepts only names that are members of the closed ``PeftType`` enum and
raises ``KeyError`` when called twice, so :func:`register` first extends the enum (once) and then
fills PEFT's mappings only if they do not already point at sorth. See Note [registration] in
:mod:`sorth._peft_hook` for *when* this runs.
"""

from __future__ import annotations

from peft.utils import PeftType

__all__ = ["NAME", "PREFIX", "register", "sorth_peft_type"]

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


def register() -> None:
    """Register :class:`SOrthConfig` / :class:`SOrthModel` with PEFT; harmless to call twice."""
    from peft import mapping
    from peft.utils import register_peft_method

    from sorth.tuner.config import SOrthConfig
    from sorth.tuner.model import SOrthModel

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
