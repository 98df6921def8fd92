"""The options of the finetune recipe (:class:`FinetuneConfig`, one ``--flag`` each).

Its own module, so that the recipe's parts (:mod:`recipes.finetune.data`,
:mod:`recipes.finetune.model`, :mod:`recipes.finetune.evaluation`) and other recipes (the demo,
the comparison) import the options without importing the run (:mod:`recipes.finetune.train`).
"""

from __future__ import annotations

from dataclasses import dataclass

from recipes.common import option
from recipes.options import (
    BlockOptions,
    OutputOptions,
    OverwriteOptions,
    ProgressOptions,
    ResumeOptions,
    SeedOptions,
)
from sorth.integrations.methods import METHODS

__all__ = ["METRICS", "FinetuneConfig"]

METRICS = ("auto", "accuracy", "f1", "matthews", "pearson", "loss")


@dataclass(frozen=True)
class FinetuneConfig(
    OutputOptions, OverwriteOptions, ResumeOptions, SeedOptions, ProgressOptions, BlockOptions
):
    """Every option of the finetune recipe (one ``--flag`` each)."""

    model: str = option("", "Local model folder or hub id (required).")
    task: str = option(
        "seq_cls", "seq_cls (GLUE-style) or causal_lm.", choices=("seq_cls", "causal_lm")
    )
    train_file: str = option("", "Training data: .json, .jsonl or .csv (required).")
    eval_file: str = option("", "Evaluation data; empty: hold out --eval_fraction of train.")
    eval_fraction: float = option(
        0.1, "Held-out fraction when --eval_file is empty.", low=0, high=0.9, low_open=True
    )
    text_column: str = option("text", "Text column (seq_cls; causal_lm when no prompt column).")
    text_pair_column: str = option("", "Second text column for sentence-pair tasks (seq_cls).")
    label_column: str = option("label", "Label column (seq_cls): ints, strings or floats.")
    prompt_column: str = option("", "causal_lm: prompt column (loss only on the response).")
    response_column: str = option("response", "causal_lm: response column (with --prompt_column).")
    train_samples: int = option(0, "Use at most this many training rows (0: all).", low=0)
    eval_samples: int = option(0, "Use at most this many eval rows (0: all).", low=0)
    max_length: int = option(128, "Truncate sequences to this many tokens.", low=8)
    method: str = option(
        "gsoft", "Adapter: a method of sorth.integrations.methods.", choices=tuple(METHODS)
    )
    rank: int = option(8, "LoRA rank (HRA: reflections, RoAd: 1, 2 or 4, PSOFT: rank).", low=1)
    alpha: float = option(0.0, "LoRA alpha (0: equal to --rank).", low=0)
    boft_factors: int = option(2, "BOFT butterfly factors m.", low=1)
    scale: bool = option(True, "sorth: learnable per-output scale.")
    adapter_dropout: float = option(0.0, "Adapter (module) dropout.", low=0, high=0.99)
    target_modules: tuple[str, ...] = option(
        (), "Module-name suffixes to adapt (default: preset for the model family)."
    )
    lr: float = option(8e-4, "AdamW learning rate (paper's GLUE code: 8e-4).", low=0, low_open=True)
    weight_decay: float = option(0.0, "AdamW weight decay.", low=0)
    warmup_steps: int = option(0, "Linear warm-up steps, then linear decay to 0.", low=0)
    epochs: float = option(
        3.0, "Training epochs (ignored when --max_steps > 0).", low=0, low_open=True
    )
    max_steps: int = option(0, "Optimizer steps (0: from --epochs).", low=0)
    batch_size: int = option(16, "Per-device training batch size.", low=1)
    eval_batch_size: int = option(32, "Per-device evaluation batch size.", low=1)
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", low=1)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).", low=0)
    metric: str = option("auto", "Metric for best-checkpoint selection.", choices=METRICS)
    eval_steps: int = option(0, "Evaluate every N steps (0: once per epoch and at the end).", low=0)
    eval_before: bool = option(False, "Also evaluate before training (step 0).")
    checkpointing_steps: int = option(
        0, "Save a resumable checkpoint every N steps (0: off).", low=0
    )
    checkpoints_total_limit: int = option(2, "Keep at most this many checkpoints.", low=1)
    export_merged: bool = option(False, "Also save the merged model (zero inference overhead).")
    load_in_4bit: bool = option(False, "QGSOFT: bitsandbytes NF4 base (bf16 compute on GPU).")
    load_in_8bit: bool = option(False, "QGSOFT: bitsandbytes int8 (LLM.int8()) base.")
    mixed_precision: str = option("no", "no, bf16 or fp16 (GPU).", choices=("no", "bf16", "fp16"))
    fsdp: bool = option(False, "Shard the base model with FSDP2 (under torchrun).")
    deepspeed: str = option("", "DeepSpeed config JSON, e.g. ZeRO-3 (under torchrun); empty: off.")
    activation_checkpointing: bool = option(False, "--fsdp: recompute block activations.")
