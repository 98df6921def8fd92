"""Sampling in the DreamBooth recipe: class images for the prior loss, validation grids.

* :func:`class_images` — tops ``--class_data_dir`` up to ``--num_class_images`` with samples
  of the base model (main process).
* :func:`render_validation` — renders ``--validation_prompts`` into ``validation/step-N.png``
  with the adapted parts of :func:`eval_parts`.
* :func:`image_grid` — rows of PIL images as one image (also the contact sheet of
  :mod:`recipes.dreambooth.evaluate`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.common import atomic_file
from recipes.dreambooth.data import list_images

if TYPE_CHECKING:
    from recipes.dreambooth.config import DreamBoothConfig

__all__ = ["class_images", "eval_parts", "image_grid", "render_validation"]


def _pipeline(path: str, parts: dict[str, Any]) -> Any:
    """A ``StableDiffusionPipeline`` over ``parts`` with a DPM-Solver sampler, no safety checker."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sampler = DPMSolverMultistepScheduler.from_pretrained(path, subfolder="scheduler")
    pipe = StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        unet=parts["unet"], scheduler=sampler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def eval_parts(parts: dict[str, Any], models: dict[str, Any], accelerator: Any) -> dict[str, Any]:
    """Pipeline components with the adapted UNet / text encoder (adapter layers active)."""
    unwrap = {k: accelerator.unwrap_model(v) for k, v in models.items()}
    bare = {
        k: (v.get_base_model() if hasattr(v, "get_base_model") else v) for k, v in unwrap.items()
    }
    return {**parts, **bare}


def _generate(pipe: Any, prompt: str, n: int, cfg: DreamBoothConfig, seed: int) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = pipe(
        prompt, num_images_per_prompt=n, num_inference_steps=cfg.inference_steps,
        guidance_scale=cfg.guidance_scale, height=cfg.resolution, width=cfg.resolution,
        generator=gen,
    )  # fmt: skip
    return out.images


def image_grid(rows: list[list[Any]]) -> Any:
    """Paste a list of rows of equally sized PIL images into one image."""
    from PIL import Image

    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            grid.paste(img, (j * w, i * h))
    return grid


def class_images(cfg: DreamBoothConfig, accelerator: Any, parts: dict[str, Any]) -> list[Any]:
    """Top the class folder up to --num_class_images with base-model samples (main process)."""
    folder = Path(cfg.class_data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    have = len([p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}])
    if have < cfg.num_class_images and accelerator.is_main_process:
        from tqdm.auto import tqdm

        pipe = _pipeline(cfg.pretrained_model, parts)
        todo = list(range(have, cfg.num_class_images))
        bar = tqdm(total=len(todo), desc="class images", disable=not cfg.progress)
        for start in range(0, len(todo), cfg.sample_batch_size):
            chunk = todo[start : start + cfg.sample_batch_size]
            for i, img in zip(
                chunk,
                _generate(pipe, cfg.class_prompt, len(chunk), cfg, cfg.seed + chunk[0]),
                strict=True,
            ):
                digest = hashlib.sha1(img.tobytes()).hexdigest()[:12]
                with atomic_file(folder / f"{i}-{digest}.png") as tmp:
                    img.save(tmp, format="PNG")
            bar.update(len(chunk))
        bar.close()
    accelerator.wait_for_everyone()
    return list_images(folder, "--class_data_dir")[: cfg.num_class_images]


def render_validation(
    cfg: DreamBoothConfig, accelerator: Any, parts: dict[str, Any], step: int
) -> Path | None:
    """Render the validation prompts into ``validation/step-N.png`` (main process)."""
    if not (cfg.validation_prompts and accelerator.is_main_process):
        return None
    pipe = _pipeline(cfg.pretrained_model, parts)
    rows = [
        _generate(pipe, p, cfg.num_validation_images, cfg, cfg.seed) for p in cfg.validation_prompts
    ]
    path = Path(cfg.output_dir).expanduser() / "validation" / f"step-{step}.png"
    with atomic_file(path) as tmp:
        image_grid(rows).save(tmp, format="PNG")
    return path
