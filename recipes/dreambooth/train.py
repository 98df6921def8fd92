"""DreamBooth on Stable Diffusion with a sorth adapter (GSOFT, Double GSOFT, ...) or LoRA.

Paper §5.2 defaults: adapters on q, k, v and out.0 of every UNet attention (self and cross),
AdamW lr 2e-5 (weight decay 0.01), 3000 steps, batch 4, constant lr, gradient clipping 1.0, no
prior preservation unless asked. Example::

    accelerate launch -m recipes.dreambooth.train --pretrained_model ./stable-diffusion-2-base \\
        --instance_data_dir ./dog --instance_prompt "a photo of sks dog" \\
        --method double_gsoft --nblocks 32 --output_dir runs/dog \\
        --validation_prompts "a photo of sks dog in a bucket" --validation_steps 500

Outputs in ``--output_dir``: ``adapter/`` (``unet/`` and optionally ``text_encoder/`` PEFT
folders plus ``dreambooth.json``; load with
``sorth.integrations.diffusers.load_sorth_into_pipeline``),
``validation/step-N.png`` grids, ``metrics.json`` and resumable ``checkpoints/checkpoint-N``.

This module holds the loss, the run and the command line; the options are
:class:`recipes.dreambooth.config.DreamBoothConfig`, the images and prompt ids
:mod:`recipes.dreambooth.data`, the Stable Diffusion parts and adapters
:mod:`recipes.dreambooth.model`, class images and validation grids
:mod:`recipes.dreambooth.sampling`.
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
    save_json,
)
from recipes.dreambooth.config import DreamBoothConfig
from recipes.dreambooth.data import DreamBoothDataset, list_images, tokenize_prompt
from recipes.dreambooth.model import adapt_model, load_components
from recipes.dreambooth.sampling import class_images, eval_parts, render_validation
from recipes.output_dir import claim_output_dir, commit_output_dir
from recipes.training import (
    find_checkpoint,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    train_steps,
)
from sorth.integrations.diffusers import save_pipeline_adapter
from sorth.integrations.peft import count_parameters

__all__ = ["main", "run"]


def _check(cfg: DreamBoothConfig) -> None:
    require_options(cfg, "pretrained_model", "instance_data_dir", "output_dir")
    if cfg.with_prior_preservation and not (cfg.class_prompt and cfg.class_data_dir):
        raise RecipeError("--with_prior_preservation needs --class_prompt and --class_data_dir")
    if cfg.resolution % 8:
        raise RecipeError(
            f"--resolution={cfg.resolution} is out of range: it must be a multiple of 8"
        )
    cfg.block_sizes(cfg.method)  # both set: refused before anything loads


def _diffusion_loss(
    batch: dict[str, Any], parts: dict[str, Any], models: dict[str, Any], cfg: DreamBoothConfig
) -> Any:
    """Noise-prediction MSE (plus the prior loss on the second half of the batch)."""
    import torch
    import torch.nn.functional as F

    vae, sched = parts["vae"], parts["noise_scheduler"]
    pixels = batch["pixel_values"].to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    t = torch.randint(
        0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    )
    noisy = sched.add_noise(latents, noise, t)
    hidden = models["text_encoder"](batch["input_ids"])[0]
    pred = models["unet"](noisy, t, hidden).sample
    target = (
        noise
        if sched.config.prediction_type == "epsilon"
        else sched.get_velocity(latents, noise, t)
    )
    if not cfg.with_prior_preservation:
        return F.mse_loss(pred.float(), target.float())
    pred, prior_pred = pred.chunk(2)
    target, prior_target = target.chunk(2)
    loss = F.mse_loss(pred.float(), target.float())
    return loss + cfg.prior_loss_weight * F.mse_loss(prior_pred.float(), prior_target.float())


OUTPUTS = ("adapter", "metrics.json", "checkpoints", "validation")


def run(cfg: DreamBoothConfig) -> dict[str, Any]:
    """Train the adapter, save it, return the metrics written to ``metrics.json``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    _check(cfg)
    accelerator = make_accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        seed=cfg.seed,
    )
    _, run_id = claim_output_dir(cfg, OUTPUTS, write=False)  # refuse before any work
    resume = find_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint, run_id=run_id)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        cfg.mixed_precision, torch.float32
    )
    instance = list_images(cfg.instance_data_dir, "--instance_data_dir")
    parts = load_components(cfg.pretrained_model, progress=cfg.progress)
    classes = class_images(cfg, accelerator, parts) if cfg.with_prior_preservation else []
    for name in ("vae", "text_encoder", "unet"):
        parts[name].requires_grad_(False)
    parts["vae"].to(accelerator.device, weight_dtype)
    unet = adapt_model(parts["unet"], cfg, cfg.target_modules)
    text_encoder = (
        adapt_model(parts["text_encoder"], cfg, cfg.text_encoder_modules)
        if cfg.train_text_encoder
        else parts["text_encoder"].to(accelerator.device, weight_dtype)
    )
    trainable_models = {
        "unet": unet,
        **({"text_encoder": text_encoder} if cfg.train_text_encoder else {}),
    }
    holder = torch.nn.ModuleDict(trainable_models)  # one module for checkpoints
    params = [p for p in holder.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    tok = parts["tokenizer"]
    dataset = DreamBoothDataset(
        instance,
        tokenize_prompt(tok, cfg.instance_prompt),
        classes,
        tokenize_prompt(tok, cfg.class_prompt) if classes else None,
        resolution=cfg.resolution,
        center_crop=cfg.center_crop,
        flip=cfg.random_flip,
        seed=cfg.seed,
    )
    loader = DataLoader(
        dataset,
        cfg.train_batch_size,
        shuffle=True,
        collate_fn=DreamBoothDataset.collate,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prepared = accelerator.prepare(*trainable_models.values(), optimizer, loader)
    models = dict(zip(trainable_models, prepared[: len(trainable_models)], strict=True))
    models.setdefault("text_encoder", text_encoder)
    optimizer, loader = prepared[-2:]
    step, history = 0, []
    if resume is not None:
        state = load_checkpoint(resume, holder, optimizer, run_id=run_id)
        step, history = state["step"], state.get("history", [])
    out = commit_output_dir(cfg, OUTPUTS, accelerator)  # main process writes run.json
    timer = StepTimer()
    bar = tqdm(
        total=cfg.max_train_steps,
        initial=step,
        desc=f"dreambooth {cfg.method}",
        disable=not (cfg.progress and accelerator.is_local_main_process),
    )
    for m in trainable_models.values():
        m.train()

    def after_step(step: int, loss: float) -> None:
        history.append({"step": step, "loss": loss})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if cfg.validation_steps and step % cfg.validation_steps == 0:
            render_validation(cfg, accelerator, eval_parts(parts, models, accelerator), step)
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
            save_checkpoint(
                accelerator, holder, optimizer, step, out, run_id=run_id,
                total_limit=cfg.checkpoints_total_limit, extra={"history": history},
            )  # fmt: skip

    def new_epoch(epoch: int) -> None:
        dataset.set_epoch(epoch)

    step = train_steps(
        accelerator, trainable_models.values(), optimizer, loader,
        loss_fn=lambda batch: _diffusion_loss(batch, parts, models, cfg), params=params,
        start=step, total=cfg.max_train_steps, accumulation=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm, on_epoch_start=new_epoch, on_step=after_step,
        timer=timer,
    )  # fmt: skip
    bar.close()
    result = {
        "config": asdict(cfg),
        "trainable_parameters": n_trainable,
        "unet_parameters": count_parameters(parts["unet"])[1],
        "seconds_per_step": timer.mean,
        "final_loss": history[-1]["loss"] if history else math.nan,
        "history": history,
    }
    if accelerator.is_main_process:
        unwrapped = {k: accelerator.unwrap_model(v) for k, v in trainable_models.items()}
        with atomic_dir(out / "adapter") as tmp:
            save_pipeline_adapter(tmp, **unwrapped)
            save_json(
                {
                    "base_model": str(Path(cfg.pretrained_model).resolve()),
                    "method": cfg.method,
                    "instance_prompt": cfg.instance_prompt,
                    "resolution": cfg.resolution,
                },
                tmp / "dreambooth.json",
            )
        save_json(result, out / "metrics.json")
    accelerator.wait_for_everyone()
    if cfg.validation_prompts and cfg.validation_steps:
        result["validation"] = str(
            render_validation(cfg, accelerator, eval_parts(parts, models, accelerator), step)
        )
    return result


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(
        DreamBoothConfig, argv, __doc__.split("\n\n")[0], prog="python -m recipes.dreambooth.train"
    )
    result = run(cfg)
    print(
        f"{cfg.method}: {result['trainable_parameters']:,} trainable parameters, "
        f"{result['seconds_per_step']:.3f} s/step, final loss {result['final_loss']:.4f}"
    )
    print(f"adapter saved to {Path(cfg.output_dir) / 'adapter'}")
    return result


if __name__ == "__main__":
    main()
