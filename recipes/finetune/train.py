"""Fine-tune a causal LM or a sequence classifier with a sorth adapter or a PEFT baseline.

Examples::

    # GLUE-style classification (paper §5.1: GSOFT b=8 on query, key, value, output.dense,
    # intermediate.dense; the head is trained fully)
    python -m recipes.finetune.train --model roberta-base --task seq_cls \\
        --train_file train.jsonl --eval_file dev.jsonl --method gsoft --block_size 8 \\
        --output_dir runs/cola-gsoft

    # instruction tuning on prompt/response JSONL, any number of GPUs
    accelerate launch -m recipes.finetune.train --model ./llama --task causal_lm \\
        --train_file data.jsonl --method double_gsoft --block_size 16 --output_dir runs/llm

Outputs in ``--output_dir``: ``adapter/`` (final, ``PeftModel.from_pretrained`` after
``import sorth``), ``best/`` (adapter at the best evaluation), ``merged/`` with
``--export_merged``, ``metrics.json`` and ``checkpoints/checkpoint-N`` for resuming.

This module holds the options (:class:`FinetuneConfig`), the run and the command line; the data
(reading, tokenizing, batching) is :mod:`recipes.finetune.data`, the tokenizer, base model and
adapter :mod:`recipes.finetune.model`, the metrics :mod:`recipes.finetune.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recipes.common import (
    RecipeError,
    StepTimer,
    atomic_dir,
    block_sizes,
    cli,
    option,
    parse_config,
    require_options,
    resolve_pretrained,
    save_json,
)
from recipes.finetune.data import _collate, _prepare_data
from recipes.finetune.evaluation import _evaluate, _metric
from recipes.finetune.model import PRESETS as PRESETS  # re-export: was defined here
from recipes.finetune.model import _adapt, _load_model, _load_tokenizer
from recipes.finetune.model import _quantization as _quantization  # re-export: was defined here
from recipes.finetune.model import _targets as _targets  # re-export: was defined here
from recipes.output_dir import (
    claim_output_dir,
    commit_output_dir,
    overwrite_output_dir_option,
    resume_from_checkpoint_option,
)
from recipes.training import (
    fast_forward,
    find_checkpoint,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    steps_per_epoch,
    train_steps,
)
from sorth.integrations.accelerate import rank_max_abs_diff, save_adapter
from sorth.integrations.peft import METHODS, count_parameters, merge_and_unload

__all__ = ["FinetuneConfig", "main", "run"]

METRICS = ("auto", "accuracy", "f1", "matthews", "pearson", "loss")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of the finetune recipe (one ``--flag`` each)."""

    model: str = option("", "Local model folder or hub id (required).")
    output_dir: str = option("", "Folder for the adapter, metrics and checkpoints (required).")
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
    block_size: int = option(
        0, "Block size b (sorth, peft_oft, peft_boft; 0: 8 unless --nblocks).", low=0
    )
    nblocks: int = option(
        0, "Number of blocks r instead of --block_size (sorth; 0: unused).", low=0
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
    resume_from_checkpoint: str = resume_from_checkpoint_option()
    overwrite_output_dir: bool = overwrite_output_dir_option("its adapter, metrics and checkpoints")
    export_merged: bool = option(False, "Also save the merged model (zero inference overhead).")
    load_in_4bit: bool = option(False, "QGSOFT: bitsandbytes NF4 base (bf16 compute on GPU).")
    load_in_8bit: bool = option(False, "QGSOFT: bitsandbytes int8 (LLM.int8()) base.")
    mixed_precision: str = option("no", "no, bf16 or fp16 (GPU).", choices=("no", "bf16", "fp16"))
    fsdp: bool = option(False, "Shard the base model with FSDP2 (under torchrun).")
    deepspeed: str = option("", "DeepSpeed config JSON, e.g. ZeRO-3 (under torchrun); empty: off.")
    activation_checkpointing: bool = option(False, "--fsdp: recompute block activations.")
    seed: int = option(42, "Random seed (data order, head init).", low=0)
    progress: bool = option(True, "Show tqdm progress bars.")


def _check(cfg: FinetuneConfig) -> None:
    require_options(cfg, "model", "output_dir", "train_file")
    if cfg.task == "causal_lm" and cfg.metric not in {"auto", "loss"}:
        raise RecipeError(f"--metric={cfg.metric} does not apply to causal_lm; use loss")
    block_sizes(cfg.block_size, cfg.nblocks, default=("block_size", 8))
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise RecipeError("--load_in_4bit and --load_in_8bit exclude each other; pick one")


def _lr_lambda(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


OUTPUTS = ("adapter", "best", "merged", "metrics.json", "checkpoints")


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train, evaluate, save; return the metrics written to ``metrics.json``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    _check(cfg)
    resolve_pretrained(cfg.model)  # fail fast, before the heavy imports
    if cfg.fsdp or cfg.deepspeed:  # a sharded base model: recipes.finetune.distributed
        from recipes.finetune.distributed import run_sharded

        return run_sharded(cfg, _lr_lambda)
    accelerator = make_accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        seed=cfg.seed,
    )
    _, run_id = claim_output_dir(cfg, OUTPUTS, write=False)  # refuse before any work
    resume = find_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint, run_id=run_id)
    tokenizer = _load_tokenizer(cfg)
    data = _prepare_data(cfg, tokenizer)
    model = _load_model(cfg, max(data.num_labels, 1), tokenizer.pad_token_id)
    model = _adapt(cfg, model)
    trainable, total = count_parameters(model)
    collate = _collate(tokenizer.pad_token_id, data.num_labels == 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        data.train, cfg.batch_size, shuffle=True, collate_fn=collate, generator=gen
    )
    eval_loader = DataLoader(data.eval, cfg.eval_batch_size, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )
    per_epoch = steps_per_epoch(len(train_loader), cfg.gradient_accumulation_steps)
    steps = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps, steps))
    step, history = 0, []
    if resume is not None:
        state = load_checkpoint(resume, accelerator.unwrap_model(model), optimizer, run_id=run_id)
        step, history = state["step"], state.get("history", [])
        fast_forward(scheduler, step)
    out = commit_output_dir(cfg, OUTPUTS, accelerator)  # main process writes run.json
    metric, higher = _metric(cfg, data.num_labels)
    best = max if higher else min
    eval_every = cfg.eval_steps or per_epoch
    if cfg.eval_before and step == 0:
        history.append(
            {"step": 0, **_evaluate(accelerator, model, eval_loader, cfg.task, data.num_labels)}
        )
    timer, losses = StepTimer(), []
    bar = tqdm(
        total=steps,
        initial=step,
        desc=f"{cfg.method} {cfg.task}",
        disable=not (cfg.progress and accelerator.is_local_main_process),
    )

    def after_step(step: int, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % eval_every == 0 or step == steps:
            ev = _evaluate(accelerator, model, eval_loader, cfg.task, data.num_labels)
            recent = losses[-eval_every:]
            history.append({"step": step, "train_loss": sum(recent) / len(recent), **ev})
            if ev[metric] == best(h[metric] for h in history if metric in h and h["step"] > 0):
                save_adapter(accelerator, model, out / "best", tokenizer)
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
            save_checkpoint(
                accelerator, model, optimizer, step, out, run_id=run_id,
                total_limit=cfg.checkpoints_total_limit, extra={"history": history},
            )  # fmt: skip

    model.train()
    train_steps(
        accelerator, [model], optimizer, train_loader, loss_fn=lambda batch: model(**batch).loss,
        params=params, start=step, total=steps, accumulation=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm, scheduler=scheduler, on_step=after_step, timer=timer,
    )  # fmt: skip
    bar.close()
    save_adapter(accelerator, model, out / "adapter", tokenizer)
    result = {
        "config": asdict(cfg),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "num_labels": data.num_labels,
        "label_names": list(data.label_names),
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "seconds_per_step": timer.mean,
        "metric": metric,
        "history": history,
        "best": best((h for h in history if h["step"] > 0), key=lambda h: h[metric], default=None),
        "num_processes": accelerator.num_processes,
        "rank_max_abs_diff": rank_max_abs_diff(accelerator, model),
    }
    if cfg.export_merged:
        _export_merged(accelerator, model, tokenizer, out / "merged")
    if accelerator.is_main_process:
        save_json(result, out / "metrics.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _export_merged(accelerator: Any, model: Any, tokenizer: Any, folder: Path) -> None:
    """Fold the adapter into a copy of the weights and save a plain transformers model."""
    import copy

    if accelerator.is_main_process:
        merged = merge_and_unload(copy.deepcopy(accelerator.unwrap_model(model)))
        with atomic_dir(folder) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(FinetuneConfig, argv, __doc__.split("\n\n")[0])
    result = run(cfg)
    if result["best"] is not None:
        shown = {k: round(v, 4) for k, v in result["best"].items() if isinstance(v, float)}
        print(f"best eval at step {result['best']['step']}: {shown}")
    print(f"adapter saved to {Path(cfg.output_dir) / 'adapter'}")
    return result


if __name__ == "__main__":
    main()
