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

This module holds the run and the command line; the options are
:class:`recipes.finetune.config.FinetuneConfig`, the data
(reading, tokenizing, batching) is :mod:`recipes.finetune.data`, the tokenizer, base model and
adapter :mod:`recipes.finetune.model`, the metrics :mod:`recipes.finetune.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recipes.common import (
    RecipeError,
    StepTimer,
    atomic_dir,
    cli,
    parse_config,
    require_options,
    resolve_pretrained,
    save_json,
)
from recipes.finetune.config import FinetuneConfig
from recipes.finetune.data import make_collate, prepare_data
from recipes.finetune.distributed import run_sharded
from recipes.finetune.evaluation import evaluate, select_metric
from recipes.finetune.model import adapt_model, load_model, load_tokenizer
from recipes.output_dir import claim_output_dir, commit_output_dir
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
from sorth.integrations.peft import count_parameters, merge_and_unload

__all__ = ["main", "run"]


def _check(cfg: FinetuneConfig) -> None:
    require_options(cfg, "model", "output_dir", "train_file")
    if cfg.task == "causal_lm" and cfg.metric not in {"auto", "loss"}:
        raise RecipeError(f"--metric={cfg.metric} does not apply to causal_lm; use loss")
    cfg.block_sizes(cfg.method)  # both set: refused before anything loads
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
        return run_sharded(cfg, _lr_lambda)
    accelerator = make_accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        seed=cfg.seed,
    )
    _, run_id = claim_output_dir(cfg, OUTPUTS, write=False)  # refuse before any work
    resume = find_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint, run_id=run_id)
    tokenizer = load_tokenizer(cfg)
    data = prepare_data(cfg, tokenizer)
    model = load_model(cfg, max(data.num_labels, 1), tokenizer.pad_token_id)
    model = adapt_model(cfg, model)
    trainable, total = count_parameters(model)
    collate = make_collate(tokenizer.pad_token_id, data.num_labels == 1)
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
    metric, higher = select_metric(cfg, data.num_labels)
    best = max if higher else min
    eval_every = cfg.eval_steps or per_epoch
    if cfg.eval_before and step == 0:
        history.append(
            {"step": 0, **evaluate(accelerator, model, eval_loader, cfg.task, data.num_labels)}
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
            ev = evaluate(accelerator, model, eval_loader, cfg.task, data.num_labels)
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
    cfg = parse_config(
        FinetuneConfig, argv, __doc__.split("\n\n")[0], prog="python -m recipes.finetune.train"
    )
    result = run(cfg)
    if result["best"] is not None:
        shown = {k: round(v, 4) for k, v in result["best"].items() if isinstance(v, float)}
        print(f"best eval at step {result['best']['step']}: {shown}")
    print(f"adapter saved to {Path(cfg.output_dir) / 'adapter'}")
    return result


if __name__ == "__main__":
    main()
