"""The model side of the DreamBooth recipe: a local Stable Diffusion folder, and its adapters.

* :func:`load_components` — tokenizer, text encoder, VAE, UNet and noise scheduler of
  ``--pretrained_model``; a folder that is not a diffusers pipeline is one
  :class:`~recipes.common.RecipeError`.
* :func:`adapt_model` — the ``--method`` adapter on the UNet (or text-encoder) modules named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from recipes.common import RecipeError, require_dir
from sorth.integrations.peft import make_peft_config

if TYPE_CHECKING:
    from recipes.dreambooth.config import DreamBoothConfig

__all__ = ["adapt_model", "load_components"]


def load_components(path: str, dtype: Any = None, progress: bool = True) -> dict[str, Any]:
    """Tokenizer, text encoder, VAE, UNet and DDPM noise scheduler of a local SD folder;
    ``progress=False`` (``--no-progress``) also silences the libraries' weight-loading bars."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    if not progress:
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()

    root = require_dir(path, "--pretrained_model")
    if not (root / "model_index.json").is_file():
        raise RecipeError(
            f"--pretrained_model '{path}' is not a diffusers pipeline folder (no model_index.json)"
        )
    try:
        return {
            "tokenizer": AutoTokenizer.from_pretrained(root, subfolder="tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(
                root, subfolder="text_encoder", torch_dtype=dtype
            ),
            "vae": AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype),
            "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype),
            "noise_scheduler": DDPMScheduler.from_pretrained(root, subfolder="scheduler"),
        }
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"cannot load Stable Diffusion from '{path}': {str(err).splitlines()[0]}"
        ) from None


def adapt_model(model: Any, cfg: DreamBoothConfig, targets: Sequence[str]) -> Any:
    """``get_peft_model`` of ``model`` (the UNet or the text encoder) with the ``--method``
    adapter of ``cfg`` on ``targets``; a bad size is one line."""
    from peft import get_peft_model

    try:
        peft_cfg = make_peft_config(
            cfg.method, list(targets),
            **cfg.block_sizes(cfg.method),
            rank=cfg.rank, boft_factors=cfg.boft_factors, scale=cfg.scale,
        )  # fmt: skip
        return get_peft_model(model, peft_cfg)
    except ValueError as err:
        raise RecipeError(f"cannot build the {cfg.method} adapter: {err}") from None
