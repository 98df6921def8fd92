"""Generate per-prompt samples of a DreamBooth adapter and score them: CLIP-I, CLIP-T, DINO.
Prompt i is sampled with seed ``--seed + i``.

Metric definitions (DreamBooth, Ruiz et al. 2023), with
``norm(v) = v/‖v‖`` and the subject's real photos as references:

* CLIP-I: mean over all (generated, real) pairs of cos(CLIP image embeddings);
* CLIP-T: mean over generated images of cos(CLIP text embedding of its prompt *without the
  identifier*, CLIP image embedding) — raw cosine, no ×100, no clamp;
* DINO: like CLIP-I with the CLS token of a self-supervised ViT (``last_hidden_state[:, 0]``).

Models are local folders (``--clip_model``, ``--dino_model``); nothing is downloaded. Example::

    python -m recipes.dreambooth.evaluate --pretrained_model ./sd2-base \\
        --adapter_dir runs/dog/adapter \\
        --instance_data_dir ./dog --clip_model ./clip-vit-b32 --dino_model ./dino-vits16 \\
        --prompts "a photo of sks dog" "a sks dog in the jungle" --output_dir runs/dog/eval

Writes ``metrics.csv`` (one row per prompt and an ``ALL`` row), ``samples/<prompt>/<i>.png`` and
``contact_sheet.png`` (one row per prompt, real photos in the first row).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.common import (
    RecipeError,
    atomic_dir,
    atomic_file,
    cli,
    option,
    parse_config,
    require_dir,
)
from recipes.dreambooth.data import list_images
from recipes.dreambooth.sampling import image_grid
from recipes.options import OutputOptions, OverwriteOptions, SeedOptions
from recipes.output_dir import claim_output_dir
from sorth.integrations.diffusers import load_sorth_into_pipeline

__all__ = ["EvalConfig", "clip_scores", "dino_score", "main", "run"]


OUTPUTS = ("metrics.csv", "samples", "contact_sheet.png")


@dataclass(frozen=True)
class EvalConfig(OutputOptions, OverwriteOptions, SeedOptions):
    """Every option of the DreamBooth evaluation (one ``--flag`` each)."""

    pretrained_model: str = option("", "Local diffusers Stable Diffusion folder (required).")
    adapter_dir: str = option("", "Adapter folder from train.py (empty: the base model).")
    merge: bool = option(True, "Merge the adapter into the weights before sampling.")
    instance_data_dir: str = option("", "Real photos of the subject (required).")
    prompts: tuple[str, ...] = option(
        ("a photo of sks dog",), "Prompts to sample (with the identifier)."
    )
    identifier: str = option("sks", "Rare token removed from prompts for CLIP-T.")
    clip_model: str = option("", "Local CLIP folder (CLIPModel + processor + tokenizer; required).")
    dino_model: str = option("", "Local DINO ViT folder (optional; adds the DINO column).")
    num_images_per_prompt: int = option(4, "Samples per prompt.", low=1)
    inference_steps: int = option(50, "Sampler steps (paper: DDIM 50).", low=1)
    guidance_scale: float = option(7.0, "Classifier-free guidance (paper: 7.0).", low=0)
    resolution: int = option(0, "Image side (0: the UNet's native size).", low=0)


def _embed(features: Any) -> Any:
    """L2-normalised embeddings from a tensor or a transformers-5 ``BaseModelOutputWithPooling``."""
    import torch.nn.functional as F

    tensor = getattr(features, "pooler_output", features)
    return F.normalize(tensor.float(), dim=-1)


def clip_scores(
    clip: Any,
    processor: Any,
    tokenizer: Any,
    generated: list[Any],
    real: list[Any],
    texts: list[str],
) -> tuple[float, float]:
    """(CLIP-I, CLIP-T): all-pairs image cosine and per-image prompt cosine."""
    import torch

    with torch.no_grad():
        G = _embed(clip.get_image_features(**processor(images=generated, return_tensors="pt")))
        R = _embed(clip.get_image_features(**processor(images=real, return_tensors="pt")))
        tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        T = _embed(clip.get_text_features(**tokens))
    return float((G @ R.T).mean()), float((G * T).sum(-1).mean())


def dino_score(dino: Any, processor: Any, generated: list[Any], real: list[Any]) -> float:
    """All-pairs cosine of DINO CLS tokens (``last_hidden_state[:, 0]``)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        G = F.normalize(
            dino(**processor(images=generated, return_tensors="pt")).last_hidden_state[:, 0], dim=-1
        )
        R = F.normalize(
            dino(**processor(images=real, return_tensors="pt")).last_hidden_state[:, 0], dim=-1
        )
    return float((G @ R.T).mean())


def _load_scorers(cfg: EvalConfig) -> dict[str, Any]:
    import transformers
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel

    transformers.utils.logging.set_verbosity_error()
    scorers = {}
    for what, path in (("clip", cfg.clip_model), ("dino", cfg.dino_model)):
        if not path:
            continue
        root = require_dir(path, f"--{what}_model")
        try:
            model = (
                CLIPModel.from_pretrained(root)
                if what == "clip"
                else AutoModel.from_pretrained(root)
            )
            scorers[what] = (model.eval(), AutoImageProcessor.from_pretrained(root))
            if what == "clip":
                scorers["clip_tokenizer"] = AutoTokenizer.from_pretrained(root)
        except (OSError, ValueError) as err:
            raise RecipeError(
                f"cannot load --{what}_model '{path}': {str(err).splitlines()[0]}"
            ) from None
    return scorers


def _pipeline(cfg: EvalConfig) -> Any:
    import diffusers
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()
    root = require_dir(cfg.pretrained_model, "--pretrained_model")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            root, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"cannot load Stable Diffusion from '{root}': {str(err).splitlines()[0]}"
        ) from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if cfg.adapter_dir:
        try:
            load_sorth_into_pipeline(
                pipe, require_dir(cfg.adapter_dir, "--adapter_dir"), merge=cfg.merge
            )
        except FileNotFoundError as err:
            raise RecipeError(str(err)) from None
    return pipe


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "prompt"


def run(cfg: EvalConfig) -> list[dict[str, Any]]:
    """Sample, score, write the CSV and the contact sheet; return the CSV rows."""
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    for name in ("pretrained_model", "instance_data_dir", "clip_model", "output_dir"):
        if not getattr(cfg, name):
            raise RecipeError(f"--{name} is required (see --help)")
    real = [
        Image.open(p).convert("RGB")
        for p in list_images(cfg.instance_data_dir, "--instance_data_dir")
    ]
    claim_output_dir(cfg, OUTPUTS)  # an earlier evaluation there: only with --overwrite_output_dir
    scorers = _load_scorers(cfg)
    pipe = _pipeline(cfg)
    side = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    rows, samples = [], {}
    for i, prompt in enumerate(tqdm(cfg.prompts, desc="prompts")):
        gen = torch.Generator().manual_seed(cfg.seed + i)
        images = pipe(
            prompt,
            num_images_per_prompt=cfg.num_images_per_prompt,
            num_inference_steps=cfg.inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=side,
            width=side,
            generator=gen,
        ).images
        samples[prompt] = images
        plain = " ".join(w for w in prompt.split() if w != cfg.identifier)
        clip_i, clip_t = clip_scores(
            *scorers["clip"], scorers["clip_tokenizer"], images, real, [plain] * len(images)
        )
        row = {
            "prompt": prompt,
            "clip_prompt": plain,
            "images": len(images),
            "clip_i": clip_i,
            "clip_t": clip_t,
        }
        if "dino" in scorers:
            row["dino"] = dino_score(*scorers["dino"], images, real)
        rows.append(row)
    total = sum(r["images"] for r in rows)
    overall = {"prompt": "ALL", "clip_prompt": "", "images": total}
    for key in ("clip_i", "clip_t", "dino"):
        if key in rows[0]:
            overall[key] = sum(r[key] * r["images"] for r in rows) / total
    rows.append(overall)
    _write(cfg, rows, samples, real, side)
    return rows


def _write(
    cfg: EvalConfig,
    rows: list[dict[str, Any]],
    samples: dict[str, list[Any]],
    real: list[Any],
    side: int,
) -> None:
    out = Path(cfg.output_dir).expanduser()
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(rows[-1]) + [k for k in rows[0] if k not in rows[-1]]
    )
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(out / "metrics.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_dir(out / "samples") as tmp:
        for prompt, images in samples.items():
            (tmp / _slug(prompt)).mkdir(exist_ok=True)
            for j, img in enumerate(images):
                img.save(tmp / _slug(prompt) / f"{j}.png")
    sheet = [[r.resize((side, side)) for r in real], *samples.values()]
    with atomic_file(out / "contact_sheet.png") as tmp:
        image_grid(sheet).save(tmp, format="PNG")


@cli
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(EvalConfig, argv, __doc__.split("\n\n")[0])
    rows = run(cfg)
    for row in rows:
        scores = ", ".join(f"{k} {row[k]:.4f}" for k in ("clip_i", "clip_t", "dino") if k in row)
        print(f"{row['prompt']}: {scores}")
    print(f"metrics written to {Path(cfg.output_dir) / 'metrics.csv'}")
    return rows


if __name__ == "__main__":
    main()
