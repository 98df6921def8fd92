"""DreamBooth images without torchvision: PIL + numpy resize, crop, flip, scale to [-1, 1].

:class:`DreamBoothDataset` pairs them with the prompt's token ids (:func:`tokenize_prompt`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, require_dir

__all__ = ["IMAGE_SUFFIXES", "DreamBoothDataset", "list_images", "load_image", "tokenize_prompt"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str | Path, what: str) -> list[Path]:
    """Image files of ``folder`` (sorted), or a one-line error if it is missing or has none."""
    root = require_dir(folder, what)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RecipeError(f"{what} '{folder}' is empty: no {'/'.join(IMAGE_SUFFIXES)} images")
    return files


def load_image(
    path: Path, resolution: int, *, center_crop: bool, flip: bool, rng: random.Random
) -> Any:
    """``(3, res, res)`` float tensor in [-1, 1]: shortest side to ``res``, crop, maybe flip."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise RecipeError(f"cannot read image '{path}': {err}") from None
    w, h = img.size
    scale = resolution / min(w, h)
    img = img.resize(
        (max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BILINEAR
    )
    w, h = img.size
    if center_crop:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
    img = img.crop((left, top, left + resolution, top + resolution))
    if flip and rng.random() < 0.5:
        img = ImageOps.mirror(img)
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0  # (res, res, 3) in [-1, 1]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, res, res)


class DreamBoothDataset:
    """Instance (and class) images with their tokenized prompts; length max(#inst, #class)."""

    def __init__(
        self,
        instance: list[Path],
        instance_ids: Any,
        classes: list[Path],
        class_ids: Any,
        *,
        resolution: int,
        center_crop: bool,
        flip: bool,
        seed: int,
    ):
        self.instance, self.classes = instance, classes
        self.instance_ids, self.class_ids = instance_ids, class_ids
        self.options = {"center_crop": center_crop, "flip": flip}
        self.resolution, self.seed, self.epoch = resolution, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """New random crops / flips for each epoch (reproducible from seed, epoch, index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.instance), len(self.classes))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
        item = {
            "pixel_values": load_image(
                self.instance[i % len(self.instance)], self.resolution, rng=rng, **self.options
            ),
            "input_ids": self.instance_ids,
        }
        if self.classes:
            item["class_pixel_values"] = load_image(
                self.classes[i % len(self.classes)], self.resolution, rng=rng, **self.options
            )
            item["class_input_ids"] = self.class_ids
        return item

    @staticmethod
    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack a batch; class examples go after the instance ones (one forward for both)."""
        import torch

        pixels = [r["pixel_values"] for r in rows] + [
            r["class_pixel_values"] for r in rows if "class_pixel_values" in r
        ]
        ids = [r["input_ids"] for r in rows] + [
            r["class_input_ids"] for r in rows if "class_input_ids" in r
        ]
        return {"pixel_values": torch.stack(pixels), "input_ids": torch.stack(ids)}


def tokenize_prompt(tokenizer: Any, prompt: str) -> Any:
    """``prompt`` as the text encoder's ``input_ids`` padded to its maximum length, ``(1, L)``."""
    ids = tokenizer(
        prompt,
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    return ids.input_ids[0]
