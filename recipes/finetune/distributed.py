"""The finetune recipe on a sharded base model: ``--fsdp`` (FSDP2) or ``--deepspeed CONFIG``.

Run under ``torchrun`` (gloo on CPU, NCCL on CUDA)::

    torchrun --nproc_per_node 2 -m recipes.finetune.train --fsdp --model ./llama \\
        --task causal_lm --train_file data.jsonl --method gsoft --output_dir runs/llm
    torchrun --nproc_per_node 2 -m recipes.finetune.train --deepspeed zero3.json ...

The outputs are the ones of the 1-device run: ``adapter/`` and ``best/`` (PEFT folders gathered
from the shards, :func:`sorth.integrations.distributed.save_sharded_adapter`), ``merged/`` with
``--export_merged`` (merged on rank 0 from the saved adapter), ``metrics.json`` and
``checkpoints/checkpoint-N`` — here sharded: ``torch.distributed.checkpoint`` files of the
trainable parameters and the optimizer (FSDP2) or DeepSpeed's own checkpoint (``--deepspeed``),
resumed with ``--resume_from_checkpoint`` by a run with the same number of processes.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, StepTimer, save_json
from recipes.finetune.data import make_collate, prepare_data
from recipes.finetune.evaluation import evaluate, select_metric
from recipes.finetune.model import adapt_model, load_model, load_tokenizer
from recipes.output_dir import claim_output_dir, commit_output_dir
from recipes.training import make_accelerator, steps_per_epoch, train_steps
from sorth.integrations import distributed
from sorth.integrations.peft import count_parameters

__all__ = ["run_sharded"]

OUTPUTS = ("adapter", "best", "merged", "metrics.json", "checkpoints")


def _checkpoint(out: Path, spec: str) -> Path | None:
    """``--resume_from_checkpoint`` for sharded checkpoints: ``latest`` or a folder."""
    if not spec:
        return None
    if spec != "latest":
        path = Path(spec).expanduser()
    else:
        found = sorted(out.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name[11:]))
        path = found[-1] if found else None
    if path is not None and not (path / distributed.STATE_FILE).is_file():
        raise RecipeError(f"--resume_from_checkpoint '{spec}': {path} is not a sharded checkpoint")
    return path


def _deepspeed_config(cfg: Any, world: int) -> dict[str, Any]:
    """The ``--deepspeed`` JSON, its ``"auto"`` (or missing) batch / clipping values filled in."""
    try:
        config = json.loads(Path(cfg.deepspeed).read_text())
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"--deepspeed '{cfg.deepspeed}' is not a readable JSON file: {err}"
        ) from None
    filled = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "train_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * world,
    }
    for key, value in filled.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    return config


def run_sharded(cfg: Any, lr_lambda: Callable[[int, int], Any]) -> dict[str, Any]:
    """Train with ``--fsdp`` or ``--deepspeed``; ``lr_lambda(warmup, total)`` is the recipe's
    schedule. Returns the metrics written to ``metrics.json``."""
    import torch
    from torch.utils.data import DataLoader

    if cfg.fsdp and cfg.deepspeed:
        raise RecipeError("--fsdp and --deepspeed exclude each other; pick one")
    if cfg.fsdp and cfg.load_in_8bit:
        raise RecipeError("--fsdp cannot shard an 8-bit base; use --load_in_4bit or no --fsdp")
    accelerator = make_accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, seed=cfg.seed
    )
    mesh = distributed.init_distributed()  # the group accelerate started under torchrun
    _, run_id = claim_output_dir(cfg, OUTPUTS, write=False)
    resume = _checkpoint(Path(cfg.output_dir).expanduser(), cfg.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg)
    data = prepare_data(cfg, tokenizer)
    model = adapt_model(cfg, load_model(cfg, max(data.num_labels, 1), tokenizer.pad_token_id))
    trainable, total = count_parameters(model)
    collate = make_collate(tokenizer.pad_token_id, data.num_labels == 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(data.train, cfg.batch_size, True, collate_fn=collate, generator=gen)
    eval_loader = DataLoader(data.eval, cfg.eval_batch_size, collate_fn=collate)
    train_loader, eval_loader = accelerator.prepare(train_loader, eval_loader)
    per_epoch = steps_per_epoch(len(train_loader), cfg.gradient_accumulation_steps)
    steps = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    if cfg.fsdp:
        param_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
        model = distributed.fully_shard_peft(
            model,
            mesh=mesh,
            param_dtype=param_dtype,
            activation_checkpointing=cfg.activation_checkpointing,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = lr_lambda(cfg.warmup_steps, steps)
    engine = model
    if cfg.deepspeed:
        import deepspeed

        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=_deepspeed_config(cfg, mesh.size()),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )  # fmt: skip
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step, history = 0, []
    if resume is not None:
        if cfg.deepspeed:
            _, state = engine.load_checkpoint(
                str(resume.parent), tag=resume.name, load_module_strict=False
            )
        else:
            state = distributed.load_sharded_checkpoint(resume, model, optimizer)
        if state.get("run", run_id) != run_id:
            raise RecipeError(f"cannot resume from {resume}: it was written by another run")
        step, history = state["step"], state.get("history", [])
        if not cfg.deepspeed:
            scheduler.last_epoch = step
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * schedule(step)
    out = commit_output_dir(cfg, OUTPUTS, accelerator)
    metric, higher = select_metric(cfg, data.num_labels)
    best = max if higher else min
    eval_every = cfg.eval_steps or per_epoch
    timer, losses = StepTimer(), []

    def after_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step % eval_every == 0 or step == steps:
            ev = evaluate(accelerator, engine, eval_loader, cfg.task, data.num_labels)
            recent = losses[-eval_every:]
            history.append({"step": step, "train_loss": sum(recent) / len(recent), **ev})
            if ev[metric] == best(h[metric] for h in history if metric in h):
                distributed.save_sharded_adapter(model, out / "best", tokenizer=tokenizer)
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
            _save_checkpoint(cfg, out, engine, optimizer, step, {"run": run_id, "history": history})

    model.train()
    if cfg.deepspeed:
        _deepspeed_steps(engine, train_loader, step, steps, after_step, timer)
    else:
        train_steps(
            accelerator, [model], optimizer, train_loader, loss_fn=lambda b: model(**b).loss,
            params=params, start=step, total=steps, accumulation=cfg.gradient_accumulation_steps,
            max_grad_norm=cfg.max_grad_norm, scheduler=scheduler, on_step=after_step, timer=timer,
        )  # fmt: skip
    distributed.save_sharded_adapter(model, out / "adapter", tokenizer=tokenizer)
    result = {
        "config": asdict(cfg),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "num_labels": data.num_labels,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "seconds_per_step": timer.mean,
        "metric": metric,
        "history": history,
        "best": best((h for h in history if h["step"] > 0), key=lambda h: h[metric], default=None),
        "num_processes": accelerator.num_processes,
        "sharding": "deepspeed" if cfg.deepspeed else "fsdp2",
    }
    if accelerator.is_main_process:
        if cfg.export_merged:
            from sorth.cli import merge_adapter

            merge_adapter(cfg.model, out / "adapter", out / "merged", overwrite=True)
        save_json(result, out / "metrics.json")
    accelerator.wait_for_everyone()
    return result


def _deepspeed_steps(engine: Any, loader: Any, step: int, total: int, on_step: Any, timer: Any):
    """DeepSpeed's own loop: it accumulates, clips and steps the scheduler itself."""
    from recipes.training import resume_position

    accumulation = engine.gradient_accumulation_steps()
    while step < total:
        epoch, skip = resume_position(step, len(loader), accumulation)
        loader.set_epoch(epoch)
        timer.start()
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            loss = engine(**batch).loss
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            if boundary:
                timer.stop()
                step += 1
                on_step(step, loss.item())
                if step >= total:
                    return
                timer.start()


def _save_checkpoint(cfg: Any, out: Path, engine: Any, optimizer: Any, step: int, state: dict):
    import torch.distributed as dist

    root = out / "checkpoints"
    state = {**state, "step": step}
    if cfg.deepspeed:
        engine.save_checkpoint(
            str(root), tag=f"checkpoint-{step}", client_state=state, exclude_frozen_parameters=True
        )
        if dist.get_rank() == 0:
            (root / f"checkpoint-{step}" / distributed.STATE_FILE).write_text(json.dumps(state))
    else:
        folder = root / f"checkpoint-{step}"
        distributed.save_sharded_checkpoint(folder, engine, optimizer, state=state)
    if dist.get_rank() == 0:
        found = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
        for old in found[: -cfg.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
