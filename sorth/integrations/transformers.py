"""transformers glue: rebuild an adapted model from an adapter folder, optionally merged.

An adapter folder written by ``save_pretrained`` (the finetune recipe's ``adapter/`` or
``best/``) records its base model in ``adapter_config.json``; :func:`from_adapter` reloads base +
adapter (+ tokenizer when saved alongside) in one call::

    from sorth.integrations.transformers import from_adapter

    model, tokenizer = from_adapter("runs/cola-gsoft/best", task="seq_cls", merge=True)

Works with transformers' ``Trainer`` as well: a ``PeftModel`` with a sorth adapter trains and
checkpoints like any PEFT model (only the adapter is written per checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from sorth.integrations._extras import require
from sorth.integrations.peft import load_adapter

require("sorth.integrations.transformers", "peft", "transformers", "peft", "safetensors")

__all__ = ["TASKS", "from_adapter"]

TASKS: dict[str, str] = {
    "seq_cls": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
}


def _saved_num_labels(adapter_dir: Path) -> int:
    """Outputs of the classifier head saved with the adapter (``modules_to_save``), else 2."""
    from safetensors import safe_open

    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        heads = sorted(
            k
            for k in f.keys()  # noqa: SIM118 - safe_open is not a dict
            if k.endswith("weight") and (".classifier" in k or ".score" in k)
        )
        return int(f.get_slice(heads[-1]).get_shape()[0]) if heads else 2


def from_adapter(
    adapter_dir: str | Path,
    *,
    task: Literal["seq_cls", "causal_lm"] = "seq_cls",
    base_model: str | Path | None = None,
    merge: bool = False,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from an adapter folder (base path read from its config).

    Args:
        adapter_dir: folder with ``adapter_config.json`` + ``adapter_model.safetensors``.
        task: which ``AutoModelFor...`` class rebuilds the base model.
        base_model: override the base model path stored in the adapter config.
        merge: fold the adapter into the weights (a plain transformers model is returned).
        model_kwargs: passed to ``from_pretrained`` of the base (e.g. ``num_labels``).

    Raises:
        FileNotFoundError: no ``adapter_config.json`` in ``adapter_dir``.
        ValueError: unknown ``task``.
    """
    import transformers

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not an adapter folder")
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}")
    base = base_model or json.loads(config_file.read_text())["base_model_name_or_path"]
    if task == "seq_cls" and "num_labels" not in model_kwargs:
        head = (
            json.loads((Path(base) / "config.json").read_text())
            if Path(base, "config.json").is_file()
            else {}
        )
        model_kwargs["num_labels"] = len(head.get("id2label", {})) or 2
    model = getattr(transformers, TASKS[task]).from_pretrained(base, **model_kwargs)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base)
    return load_adapter(model, adapter_dir, merge=merge), tokenizer
