"""diffusers glue: save a UNet / text-encoder adapter pair, load it into a pipeline in one call.

diffusers' ``load_lora_weights`` only understands LoRA, so sorth adapters (and PEFT's OFT/BOFT)
go through PEFT's own ``save_pretrained`` / ``PeftModel.from_pretrained``. An adapter folder is::

    adapter/
      unet/            adapter_config.json + adapter_model.safetensors
      text_encoder/    (optional, same files)
      dreambooth.json  (optional: base model, method, prompts)

Usage::

    import torch
    from diffusers import StableDiffusionPipeline
    from sorth.integrations.diffusers import load_sorth_into_pipeline

    pipe = StableDiffusionPipeline.from_pretrained("path/to/sd", safety_checker=None)
    pipe = load_sorth_into_pipeline(pipe, "runs/dog/adapter", merge=True)  # zero overhead
    image = pipe("a photo of sks dog in the snow").images[0]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sorth.integrations._extras import require

require("sorth.integrations.diffusers", "diffusion", "diffusers", "peft")

__all__ = ["COMPONENTS", "load_sorth_into_pipeline", "save_pipeline_adapter"]

COMPONENTS: tuple[str, ...] = ("unet", "text_encoder")


def save_pipeline_adapter(folder: str | Path, **models: Any) -> Path:
    """``save_pretrained`` each adapted component (a ``PeftModel``) into ``folder/<name>/``.

    Example: ``save_pipeline_adapter(tmp, unet=peft_unet, text_encoder=peft_te)``.
    """
    folder = Path(folder)
    for name, model in models.items():
        if name not in COMPONENTS:
            raise ValueError(f"component {name!r} is not one of {COMPONENTS}")
        if model is not None:
            model.save_pretrained(folder / name)
    return folder


def load_sorth_into_pipeline(pipe: Any, adapter_dir: str | Path, *, merge: bool = False) -> Any:
    """Load the adapters of ``adapter_dir`` into ``pipe``'s UNet (and text encoder).

    Works for sorth (GSOFT, Double GSOFT, ...) and PEFT baselines alike. With ``merge=True`` the
    adapters are folded into the weights (plain modules again, no inference overhead);
    otherwise the components keep PEFT adapter layers (the unmerged, exact form). Returns
    ``pipe``.

    Raises:
        FileNotFoundError: ``adapter_dir`` has no ``unet/adapter_config.json``.
    """
    from peft import PeftModel

    import sorth  # noqa: F401 - registers the sorth PEFT type

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "unet" / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} has no unet/adapter_config.json: not an adapter folder"
        )
    for name in COMPONENTS:
        sub = adapter_dir / name
        if not (sub / "adapter_config.json").is_file():
            continue
        base = getattr(pipe, name)
        model = PeftModel.from_pretrained(base, str(sub))
        model = model.merge_and_unload() if merge else model.get_base_model()
        setattr(pipe, name, model)
    return pipe
