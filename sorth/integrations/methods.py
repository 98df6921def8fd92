"""The one method registry: an adapter name → its PEFT config, for sorth and PEFT's baselines.

Every program that chooses an adapter by name — the recipes' ``--method``, the benchmark, the
demo and the ``sorth`` command — reads :data:`METHODS` and builds the config with
:func:`make_peft_config`, so one name always means one config:

================  ============================================================  ===============
name              config                                                        size flags
================  ============================================================  ===============
gsoft             ``SOrthConfig(structure="gs", side="input")``                 block_size|nblocks
double_gsoft      ``SOrthConfig(structure="gs", side="both")``                  block_size|nblocks
oft               ``SOrthConfig(structure="oft")``                              block_size|nblocks
butterfly         ``SOrthConfig(structure="butterfly")``                        block_size|nblocks
monarch           ``SOrthConfig(structure="monarch")``                          block_size|nblocks
lora              ``LoraConfig(r=rank, lora_alpha=alpha or rank)``              rank, alpha
peft_oft          ``OFTConfig(oft_block_size=b, use_cayley_neumann=False)``     block_size
peft_oft_neumann  ``OFTConfig(oft_block_size=b, use_cayley_neumann=True)``      block_size
peft_boft         ``BOFTConfig(boft_block_size=b, boft_n_butterfly_factor=m)``  block_size, m
peft_hra          ``HRAConfig(r=rank)`` (Householder reflections)               rank
peft_road         ``RoadConfig(variant=f"road_{rank}")``                        rank in 1, 2, 4
peft_psoft        ``PsoftConfig(r=rank, psoft_alpha=alpha or rank)``            rank, alpha
================  ============================================================  ===============

``peft_oft`` is PEFT's OFT with the exact Cayley map, like sorth's default
``orthogonal_map="cayley"`` (PEFT 0.21's own default is the truncated Cayley–Neumann series:
``peft_oft_neumann``). This module imports nothing heavy; PEFT is imported when a PEFT config
is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sorth.integrations._extras import require

__all__ = ["METHODS", "Method", "describe", "make_peft_config", "method_of"]


@dataclass(frozen=True)
class Method:
    """One adapter of the registry.

    Attributes:
        name: the ``--method`` value.
        label: how tables and plots name it (``"sorth GSOFT"``).
        library: ``"sorth"`` or ``"peft"``.
        config: the config class (``"SOrthConfig"``, ``"LoraConfig"``, ...).
        size: which size flag it reads: ``"blocks"`` (``block_size`` or ``nblocks``),
            ``"block_size"`` or ``"rank"``.
        fixed: config fields that define the method (e.g. ``structure``/``side``).
    """

    name: str
    label: str
    library: str
    config: str
    size: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size_flag(self) -> str:
        """The one size flag that scales it: ``"rank"`` or ``"block_size"`` (a sorth method's
        ``nblocks`` is the same choice expressed as ``r = n / b``)."""
        return "rank" if self.size == "rank" else "block_size"


def _m(name: str, label: str, library: str, config: str, size: str, **fixed: Any) -> Method:
    return Method(name, label, library, config, size, fixed)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _m("gsoft", "sorth GSOFT", "sorth", "SOrthConfig", "blocks", structure="gs", side="input"),
        _m("double_gsoft", "sorth Double GSOFT", "sorth", "SOrthConfig", "blocks",
           structure="gs", side="both"),
        _m("oft", "sorth OFT", "sorth", "SOrthConfig", "blocks", structure="oft", side="input"),
        _m("butterfly", "sorth butterfly", "sorth", "SOrthConfig", "blocks",
           structure="butterfly", side="input"),
        _m("monarch", "sorth Monarch", "sorth", "SOrthConfig", "blocks",
           structure="monarch", side="input"),
        _m("lora", "PEFT LoRA", "peft", "LoraConfig", "rank"),
        _m("peft_oft", "PEFT OFT", "peft", "OFTConfig", "block_size", use_cayley_neumann=False),
        _m("peft_oft_neumann", "PEFT OFT (Cayley-Neumann)", "peft", "OFTConfig", "block_size",
           use_cayley_neumann=True),
        _m("peft_boft", "PEFT BOFT", "peft", "BOFTConfig", "block_size"),
        _m("peft_hra", "PEFT HRA", "peft", "HRAConfig", "rank"),
        _m("peft_road", "PEFT RoAd", "peft", "RoadConfig", "rank"),
        _m("peft_psoft", "PEFT PSOFT", "peft", "PsoftConfig", "rank"),
    )
}  # fmt: skip


def describe(
    method: str,
    *,
    block_size: int | None = None,
    nblocks: int | None = None,
    rank: int | None = None,
    boft_factors: int | None = None,
) -> str:
    """``"sorth GSOFT b=8"``: the label of ``method`` with the size it is given."""
    m = METHODS[method]
    if m.size == "rank":
        size = f"r={rank}" if rank is not None else ""
    elif nblocks is not None:
        size = f"r={nblocks} blocks"
    else:
        size = f"b={block_size}" if block_size is not None else ""
    if method == "peft_boft" and boft_factors is not None:
        size += f" m={boft_factors}"
    return f"{m.label} {size}".strip()


def method_of(config: Mapping[str, Any]) -> str | None:
    """The registry name of a saved sorth ``adapter_config.json`` (``structure`` + ``side``)."""
    if str(config.get("peft_type", "")).upper() != "SORTH":
        return None
    key = (config.get("structure", "gs"), config.get("side", "input"))
    for m in METHODS.values():
        if m.library == "sorth" and (m.fixed["structure"], m.fixed["side"]) == key:
            return m.name
    return None


def make_peft_config(
    method: str,
    target_modules: Sequence[str] | str,
    *,
    block_size: int | None = None,
    nblocks: int | None = None,
    rank: int = 8,
    alpha: float | None = None,
    boft_factors: int = 2,
    scale: bool = True,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] | None = None,
    task_type: str | None = None,
    **overrides: Any,
) -> Any:
    """Build the PEFT config of ``method`` (see the module table) for ``target_modules``.

    Args:
        method: a key of :data:`METHODS`.
        target_modules: module-name suffixes (list) or a regex (str).
        block_size, nblocks: block size ``b`` or number of blocks ``r`` (sorth: at most one;
            neither gives each layer the default of :func:`sorth.sizing.default_block_size`;
            PEFT OFT/BOFT: ``block_size``).
        rank, alpha: LoRA rank and alpha (``alpha`` defaults to ``rank``); HRA's number of
            reflections; RoAd's variant (1, 2 or 4); PSOFT's rank and alpha.
        boft_factors: BOFT's number of butterfly factors ``m``.
        scale: sorth's learnable per-output scale ``s``.
        dropout: sorth/OFT module dropout, LoRA/BOFT/PSOFT dropout (HRA, RoAd: none).
        modules_to_save: extra modules trained fully and saved (e.g. a classifier head).
        task_type: PEFT task type (``"SEQ_CLS"``, ``"CAUSAL_LM"``) or ``None``.
        overrides: further fields of the config class (e.g. ``storage="full"`` for sorth).

    Raises:
        ValueError: unknown ``method`` or sizes that do not fit it.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
    m = METHODS[method]
    common: dict[str, Any] = {
        "target_modules": target_modules
        if isinstance(target_modules, str)
        else list(target_modules),
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "task_type": task_type,
        **m.fixed,
    }
    if m.library == "sorth":
        from sorth import SOrthConfig  # registers sorth with PEFT

        if block_size is not None and nblocks is not None:
            raise ValueError(
                f"method {method!r} takes block_size or nblocks, not both (b = n / r); neither: "
                "each layer's default size"
            )
        return SOrthConfig(
            **common, block_size=block_size, nblocks=nblocks, scale=scale, module_dropout=dropout,
            **overrides,
        )  # fmt: skip
    if m.size == "block_size" and block_size is None:
        raise ValueError(f"method {method!r} needs block_size (PEFT counts blocks by size)")
    if method == "peft_road" and rank not in (1, 2, 4):
        raise ValueError(
            f"method 'peft_road' needs rank 1, 2 or 4 (variant road_<rank>), not {rank}"
        )
    require(f"method {method!r}", "peft", "peft")
    import peft

    sizes: dict[str, Any] = {
        "LoraConfig": {"r": rank, "lora_alpha": rank if alpha is None else alpha,
                       "lora_dropout": dropout},
        "OFTConfig": {"oft_block_size": block_size, "r": 0, "module_dropout": dropout},
        "BOFTConfig": {"boft_block_size": block_size, "boft_n_butterfly_factor": boft_factors,
                       "boft_dropout": dropout},
        "HRAConfig": {"r": rank},
        "RoadConfig": {"variant": f"road_{rank}"},
        "PsoftConfig": {"r": rank, "psoft_alpha": rank if alpha is None else alpha,
                        "psoft_dropout": dropout},
    }[m.config]  # fmt: skip
    return getattr(peft, m.config)(**common, **sizes, **overrides)
