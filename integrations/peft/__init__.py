"""PEFT glue: one switch from a method name to a PEFT config, sorth or baseline.

``make_peft_config(method, targets, ...)`` is the only place a recipe chooses its adapter, so every
recipe compares sorth with PEFT's own LoRA / OFT / BOFT by changing one flag:

============  ==========================================  ===========================
method        config                                      size flags used
============  ==========================================  ===========================
gsoft         ``SOrthConfig(structure="gs", side="input")``  block_size or nblocks
double_gsoft  ``SOrthConfig(structure="gs", side="both")``   block_size or nblocks
oft           ``SOrthConfig(structure="oft")``               block_size or nblocks
butterfly     ``SOrthConfig(structure="butterfly")``         block_size or nblocks
monarch       ``SOrthConfig(structure="monarch")``           block_size or nblocks
lora          ``peft.LoraConfig(r=rank, lora_alpha=alpha)``   rank, alpha
peft_oft      ``peft.OFTConfig(oft_block_size=block_size)``  block_size
peft_boft     ``peft.BOFTConfig(boft_block_size=...)``       block_size, boft_factors
peft_hra      ``peft.HRAConfig(r=rank)``                     rank (Householder vectors)
peft_road     ``peft.RoadConfig(variant=f"road_{rank}")``    rank in {1, 2, 4}
peft_psoft    ``peft.PsoftConfig(r=rank, psoft_alpha=...)``  rank, alpha
============  ==========================================  ===========================

Adapters are saved with ``save_pretrained`` and loaded with ``PeftModel.from_pretrained`` after
``import sorth`` (see :func:`load_adapter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METHODS",
    "SORTH_METHODS",
    "count_parameters",
    "load_adapter",
    "make_peft_config",
    "merge_and_unload",
]

SORTH_METHODS: dict[str, dict[str, str]] = {
    "gsoft": {"structure": "gs", "side": "input"},
    "double_gsoft": {"structure": "gs", "side": "both"},
    "oft": {"structure": "oft", "side": "input"},
    "butterfly": {"structure": "butterfly", "side": "input"},
    "monarch": {"structure": "monarch", "side": "input"},
}
METHODS: tuple[str, ...] = (
    *SORTH_METHODS,
    "lora",
    "peft_oft",
    "peft_boft",
    "peft_hra",
    "peft_road",
    "peft_psoft",
)


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
) -> Any:
    """Build the PEFT config of ``method`` (see the module table) for ``target_modules``.

    Args:
        method: one of :data:`METHODS`.
        target_modules: module-name suffixes (list) or a regex (str).
        block_size, nblocks: block size ``b`` or number of blocks ``r`` (sorth: exactly one;
            PEFT OFT/BOFT: ``block_size``).
        rank, alpha: LoRA rank and alpha (``alpha`` defaults to ``rank``); HRA vectors, RoAd
            variant, PSOFT rank and alpha.
        boft_factors: BOFT's number of butterfly factors ``m``.
        scale: sorth's learnable per-output scale ``s``.
        dropout: sorth module dropout, LoRA dropout, OFT/BOFT module dropout.
        modules_to_save: extra modules trained fully and saved (e.g. a classifier head).
        task_type: PEFT task type (``"SEQ_CLS"``, ``"CAUSAL_LM"``) or ``None``.

    Raises:
        ValueError: unknown ``method`` or sizes that do not fit it.
    """
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    common: dict[str, Any] = {
        "target_modules": targets,
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "task_type": task_type,
    }
    if method in SORTH_METHODS:
        from sorth import SOrthConfig  # registers sorth with PEFT

        if (block_size is None) == (nblocks is None):
            raise ValueError(f"method {method!r} needs exactly one of block_size or nblocks")
        return SOrthConfig(
            **common,
            **SORTH_METHODS[method],
            block_size=block_size,
            nblocks=nblocks,
            scale=scale,
            module_dropout=dropout,
        )
    import peft

    if method == "lora":
        return peft.LoraConfig(
            **common, r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout
        )
    if method in {"peft_oft", "peft_boft"} and block_size is None:
        raise ValueError(f"method {method!r} needs block_size (PEFT counts blocks by size)")
    if method == "peft_oft":
        return peft.OFTConfig(**common, oft_block_size=block_size, r=0, module_dropout=dropout)
    if method == "peft_boft":
        return peft.BOFTConfig(
            **common,
            boft_block_size=block_size,
            boft_n_butterfly_factor=boft_factors,
            boft_dropout=dropout,
        )
    if method == "peft_hra":
        return peft.HRAConfig(**common, r=rank)
    if method == "peft_road":
        if rank not in {1, 2, 4}:
            raise ValueError(
                f"method 'peft_road' needs rank 1, 2 or 4 (variant road_<rank>), not {rank}"
            )
        return peft.RoadConfig(**common, variant=f"road_{rank}")
    if method == "peft_psoft":
        return peft.PsoftConfig(
            **common, r=rank, psoft_alpha=rank if alpha is None else alpha, psoft_dropout=dropout
        )
    raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def load_adapter(model: Any, adapter_dir: str | Path, *, merge: bool = False, **kwargs: Any) -> Any:
    """Load a saved adapter (sorth or PEFT baseline) onto ``model``; optionally merge it.

    ``import sorth`` first registers sorth's adapter type with PEFT, so the same call loads
    GSOFT and LoRA folders. With ``merge=True`` the adapter is folded into the weights and the
    plain model is returned (no inference overhead).
    """
    from peft import PeftModel

    import sorth  # noqa: F401 - registers the sorth PEFT type

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
