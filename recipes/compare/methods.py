"""The compared adapters and how each one's size flag is matched to a parameter budget.

Every method has one size flag (``block_size`` for the block-structured orthogonal methods,
``rank`` for LoRA / HRA / RoAd / PSOFT). For a budget ``B`` the flag whose *actual* trainable
count ``n`` (adapter + the fully trained classifier head, counted the same way for everyone)
minimises ``|log(n / B)|`` is chosen; counts are measured by building the PEFT model, not by a
formula, so they are exactly what training reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, save_json
from sorth.integrations.methods import Method

__all__ = [
    "COMPARED",
    "FIXED",
    "candidates",
    "count_trainable",
    "fixed_sizes",
    "match_budget",
]


# the compared methods, by their name in sorth's one method registry (labels and size flags come
# from there); the comparison adds only its own column, the fixed sizes of some methods
COMPARED = ("gsoft", "double_gsoft", "oft", "butterfly", "lora", "peft_oft", "peft_boft",
            "peft_hra", "peft_road", "peft_psoft")  # fmt: skip
FIXED: dict[str, tuple[tuple[str, Any], ...]] = {
    "peft_boft": (("boft_factors", 2),)  # m=1 on CPU anyway (PEFT's fbd_cuda fallback)
}


def fixed_sizes(method: Method) -> dict[str, Any]:
    """The ``FinetuneConfig`` fields the comparison fixes for ``method`` (e.g. BOFT's ``m``)."""
    return dict(FIXED.get(method.name, ()))


def candidates(method: Method, width: int) -> list[int]:
    """Size-flag values to try for ``method``, ascending (``width``: gcd of the adapted
    features)."""
    if method.size_flag == "block_size":
        return [b for b in range(1, width + 1) if width % b == 0]
    if method.name == "peft_road":
        return [1, 2, 4]
    if method.name == "peft_hra":
        return list(range(2, 129, 2))  # HRA's identity init needs an even r
    if method.name == "peft_psoft":
        return [4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 192, 224, 256]
    return list(range(1, 129))


def _feature_gcd(model: Any, targets: Sequence[str]) -> int:
    import torch

    g = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            g = math.gcd(g, math.gcd(module.in_features, module.out_features))
    if not g:
        raise RecipeError(f"no nn.Linear module ends with any of {list(targets)}")
    return g


def count_trainable(
    model_dir: str, method: Method, size: int, targets: Sequence[str]
) -> int | None:
    """Trainable parameters of ``method`` at ``size`` on a 2-class head, or ``None`` if invalid.

    Builds the model exactly as the finetune recipe does (same targets, the ``classifier`` /
    ``score`` head in ``modules_to_save``).
    """
    import transformers
    from peft import get_peft_model

    from sorth.integrations.peft import count_parameters, make_peft_config

    transformers.utils.logging.set_verbosity_error()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    heads = [h for h in ("classifier", "score") if hasattr(model, h)]
    sizes = fixed_sizes(method)
    sizes[method.size_flag] = size
    try:
        cfg = make_peft_config(
            method.name, list(targets), modules_to_save=heads, task_type="SEQ_CLS", **sizes
        )
        return count_parameters(get_peft_model(model, cfg))[0]
    except (ValueError, RuntimeError, AssertionError):  # this size does not fit the model
        return None


def match_budget(
    model_dir: str,
    method: Method,
    budgets: Sequence[int],
    targets: Sequence[str],
    cache: Path,
    log: Callable[[str], None] = print,
) -> dict[int, tuple[int, int | None]]:
    """``{budget: (size, trainable)}``: the size flag landing closest (in log ratio) to each.

    Counts are cached in ``cache`` (JSON, one file per method so that processes comparing
    different methods never overwrite each other's counts) keyed by model, targets and size.
    """
    import transformers

    known = json.loads(cache.read_text()) if cache.is_file() else {}
    base = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    width = _feature_gcd(base, targets)
    del base
    counts: list[tuple[int, int]] = []
    for size in candidates(method, width):
        key = f"{model_dir}|{','.join(targets)}|{method.name}|{fixed_sizes(method)}|{size}"
        if key not in known:
            known[key] = count_trainable(model_dir, method, size, targets)
            save_json(known, cache)
        if known[key] is None:
            continue
        counts.append((size, known[key]))
        if known[key] > 1.6 * max(budgets):  # counts grow with the size flag: stop here
            break
    if not counts:
        raise RecipeError(f"no {method.size_flag} of {method.name} fits this model's layers")
    picked = {}
    for budget in budgets:
        size, n = min(counts, key=lambda c: abs(math.log(c[1] / budget)))
        picked[budget] = (size, n)
        log(f"  {method.label:<20} budget {budget:>9,}: {method.size_flag}={size:<4} -> {n:>9,}")
    return picked
