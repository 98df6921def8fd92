"""The model side of the finetune recipe: tokenizer, base model (optionally quantized), adapter.

* :func:`load_tokenizer` / :func:`load_model` — ``--model`` (a local folder or a hub id) for
  ``--task``, a bitsandbytes base with ``--load_in_4bit`` / ``--load_in_8bit`` (QGSOFT, QLoRA);
  an unusable path is one :class:`~recipes.common.RecipeError`.
* :func:`adapt_model` — the ``--method`` adapter on ``--target_modules``, or on the preset of the
  model family (:data:`PRESETS`); a classifier head is trained fully.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recipes.common import RecipeError, resolve_pretrained
from sorth.integrations.peft import make_peft_config

if TYPE_CHECKING:
    from recipes.finetune.config import FinetuneConfig

__all__ = ["PRESETS", "adapt_model", "load_model", "load_tokenizer"]

PRESETS: tuple[tuple[str, ...], ...] = (
    ("query", "key", "value", "output.dense", "intermediate.dense"),  # BERT / RoBERTa (paper)
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),  # Llama, Qwen
    ("c_attn", "c_proj", "c_fc"),  # GPT-2
)


def load_tokenizer(cfg: FinetuneConfig) -> Any:
    """The model's tokenizer (with a pad token), or a one-line error for an unusable path."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    if not cfg.progress:  # --no-progress: no weight-loading bars either (stderr stays clean)
        transformers.utils.logging.disable_progress_bar()
    path = resolve_pretrained(cfg.model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise RecipeError(f"cannot load a tokenizer from '{cfg.model}': {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(cfg: FinetuneConfig, num_labels: int, pad_token_id: int) -> Any:
    """The base model for ``cfg.task``, or a one-line error for an unusable path."""
    import transformers

    auto = (
        transformers.AutoModelForCausalLM
        if cfg.task == "causal_lm"
        else transformers.AutoModelForSequenceClassification
    )
    kwargs = {} if cfg.task == "causal_lm" else {"num_labels": num_labels}
    kwargs.update(_quantization(cfg))
    try:
        model = auto.from_pretrained(resolve_pretrained(cfg.model), **kwargs)
    except Exception as err:
        raise RecipeError(f"cannot load a {cfg.task} model from '{cfg.model}': {err}") from None
    model.config.pad_token_id = pad_token_id
    if kwargs.get("quantization_config") is not None:
        from peft import prepare_model_for_kbit_training

        from sorth.tuner import keep_4bit_layout

        keep_4bit_layout(model)  # evaluation must not change the training (any --method)
        model = prepare_model_for_kbit_training(model)  # fp32 norms, gradient checkpointing
    return model


def _quantization(cfg: FinetuneConfig) -> dict[str, Any]:
    """``from_pretrained`` kwargs of a bitsandbytes base (QGSOFT / QLoRA), or ``{}``."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    gpu = torch.cuda.is_available()
    quant = BitsAndBytesConfig(
        load_in_4bit=cfg.load_in_4bit,
        load_in_8bit=cfg.load_in_8bit,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16 if gpu else torch.float32,
    )
    return {
        "quantization_config": quant,
        "device_map": {"": torch.cuda.current_device()} if gpu else "cpu",
    }


def _targets(cfg: FinetuneConfig, model: Any) -> list[str]:
    if cfg.target_modules:
        return list(cfg.target_modules)
    names = [n for n, _ in model.named_modules()]
    for preset in PRESETS:
        if any(n.endswith("." + preset[0]) for n in names):
            return [t for t in preset if any(n.endswith("." + t) for n in names)]
    raise RecipeError("no preset matches this model's module names; pass --target_modules")


def adapt_model(cfg: FinetuneConfig, model: Any) -> Any:
    """``get_peft_model`` of ``model`` with the ``--method`` adapter of ``cfg`` (its targets,
    sizes; the classifier head trained fully for seq_cls); a bad size is one line."""
    from peft import get_peft_model

    heads = [h for h in ("classifier", "score") if hasattr(model, h)]
    try:
        peft_cfg = make_peft_config(
            cfg.method,
            _targets(cfg, model),
            **cfg.block_sizes(cfg.method),
            rank=cfg.rank,
            alpha=cfg.alpha or None,
            boft_factors=cfg.boft_factors,
            scale=cfg.scale,
            dropout=cfg.adapter_dropout,
            modules_to_save=heads if cfg.task == "seq_cls" else None,
            task_type="SEQ_CLS" if cfg.task == "seq_cls" else "CAUSAL_LM",
        )
        return get_peft_model(model, peft_cfg)
    except (ValueError, ImportError) as err:
        raise RecipeError(f"cannot build the {cfg.method} adapter: {err}") from None
