"""The options of the DreamBooth recipe (:class:`DreamBoothConfig`, one ``--flag`` each).

Its own module, so that the recipe's parts (:mod:`recipes.dreambooth.model`,
:mod:`recipes.dreambooth.sampling`) import the options without importing the run
(:mod:`recipes.dreambooth.train`).
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

__all__ = ["DreamBoothConfig"]


@dataclass(frozen=True)
class DreamBoothConfig(
    OutputOptions, OverwriteOptions, ResumeOptions, SeedOptions, ProgressOptions, BlockOptions
):
    """Every option of the DreamBooth recipe (one ``--flag`` each)."""

    pretrained_model: str = option("", "Local diffusers Stable Diffusion folder (required).")
    instance_data_dir: str = option("", "Folder with the subject's photos (required).")
    instance_prompt: str = option("a photo of sks dog", "Prompt with the rare identifier.")
    with_prior_preservation: bool = option(
        False, "Add the class-prior loss (needs --class_prompt)."
    )
    class_prompt: str = option("", "Prompt of the class, e.g. 'a photo of dog'.")
    class_data_dir: str = option(
        "", "Class images; missing ones are generated with the base model."
    )
    num_class_images: int = option(100, "Class images wanted for prior preservation.", low=1)
    prior_loss_weight: float = option(1.0, "Weight of the prior-preservation loss.", low=0)
    sample_batch_size: int = option(4, "Batch size when generating class images.", low=1)
    method: str = option(
        "gsoft", "Adapter: a method of sorth.integrations.methods.", choices=tuple(METHODS)
    )
    rank: int = option(4, "LoRA rank (paper: 4, 32, 128).", low=1)
    boft_factors: int = option(4, "peft_boft: butterfly factors m.", low=1)
    scale: bool = option(True, "sorth: learnable per-output scale.")
    target_modules: tuple[str, ...] = option(
        ("to_q", "to_k", "to_v", "to_out.0"), "UNet modules to adapt."
    )
    train_text_encoder: bool = option(False, "Also adapt the text encoder.")
    text_encoder_modules: tuple[str, ...] = option(
        ("q_proj", "k_proj", "v_proj", "out_proj"), "Text-encoder modules to adapt."
    )
    resolution: int = option(512, "Training image side (multiple of 8).", low=8)
    center_crop: bool = option(False, "Center crop instead of random crop.")
    random_flip: bool = option(False, "Random horizontal flips.")
    lr: float = option(2e-5, "AdamW learning rate (constant).", low=0, low_open=True)
    weight_decay: float = option(0.01, "AdamW weight decay.", low=0)
    max_train_steps: int = option(3000, "Optimizer steps.", low=1)
    train_batch_size: int = option(4, "Instance images per device and micro-batch.", low=1)
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", low=1)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).", low=0)
    mixed_precision: str = option(
        "no", "no, bf16 or fp16 (GPU); adapters stay fp32.", choices=("no", "bf16", "fp16")
    )
    checkpointing_steps: int = option(
        500, "Save a resumable checkpoint every N steps (0: off).", low=0
    )
    checkpoints_total_limit: int = option(2, "Keep at most this many checkpoints.", low=1)
    validation_prompts: tuple[str, ...] = option((), "Prompts rendered every --validation_steps.")
    validation_steps: int = option(500, "Render validation grids every N steps (0: off).", low=0)
    num_validation_images: int = option(4, "Images per validation prompt.", low=1)
    inference_steps: int = option(25, "Sampler steps for validation and class images.", low=1)
    guidance_scale: float = option(7.0, "Classifier-free guidance scale.", low=0)
