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

from sorth.errors import SOrthValueError
from sorth.integrations._extras import require
from sorth.integrations.peft import load_adapter

require("sorth.integrations.transformers", "peft", "transformers", "peft", "safetensors")

__all__ = ["TASKS", "TASK_AUTO_CLASSES", "adapter_head", "from_adapter", "saved_num_labels"]

TASKS: dict[str, str] = {
    "seq_cls": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
}
# PEFT task types -> the transformers Auto class whose head the adapter was trained with
TASK_AUTO_CLASSES: dict[str, str] = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}
_HEADS = ("out_proj.weight", "score.weight", "classifier.weight")  # (num_labels, hidden)


def saved_num_labels(adapter_dir: str | Path) -> int | None:
    """Rows of the classification head saved with the adapter (``modules_to_save``), if any."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    with safe_open(path, "pt") as f:
        keys = [k for k in f.keys() if "sorth_" not in k]  # noqa: SIM118 - not a dict
        for head in _HEADS:
            found = [k for k in keys if k.endswith(head)]
            if found:
                return int(f.get_slice(found[-1]).get_shape()[0])
    return None


def adapter_head(adapter_dir: str | Path) -> tuple[str | None, dict[str, Any]]:
    """The class (or Auto class) an adapter was trained on, and ``num_labels`` if it has a head.

    Read from ``adapter_config.json`` (``auto_mapping.base_model_class``, else ``task_type``
    through :data:`TASK_AUTO_CLASSES`) and the saved head's shape (:func:`saved_num_labels`).
    """
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    task = str(config.get("task_type"))
    wanted = (config.get("auto_mapping") or {}).get("base_model_class")
    wanted = wanted or TASK_AUTO_CLASSES.get(task)
    n = saved_num_labels(adapter_dir) if task in ("SEQ_CLS", "TOKEN_CLS") else None
    return wanted, ({"num_labels": n} if n else {})


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
        ValueError: unknown ``task``; no ``base_model`` given and none recorded in the config.
    """
    import transformers

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not an adapter folder")
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}")
    base = base_model or json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise SOrthValueError(
            f"{config_file} records no base model (base_model_name_or_path is null: the base "
            "was built in memory, not loaded from a folder); pass base_model=PATH"
        )
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
