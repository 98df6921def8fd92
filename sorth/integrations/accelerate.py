"""accelerate glue: save adapters once per run and check that ranks agree.

Recipes never write distribution code: ``accelerate launch`` (DDP, FSDP, DeepSpeed through
accelerate's config) wraps the model; these helpers only make the two places where ranks matter
explicit — saving (main process, atomically) and verifying that every rank holds the same
adapter weights after training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sorth.integrations._extras import require
from sorth.integrations.io import atomic_dir

require("sorth.integrations.accelerate", "peft", "accelerate")

__all__ = ["rank_max_abs_diff", "save_adapter"]


def save_adapter(accelerator: Any, model: Any, folder: str | Path, tokenizer: Any = None) -> Path:
    """``save_pretrained`` the unwrapped adapter (and tokenizer) on the main process only.

    The folder appears atomically (written next to it, then ``os.replace``); every rank waits
    for the save before returning. A model sharded by accelerate's FSDP2 or DeepSpeed ZeRO-3
    plugin is gathered first, on every rank (:mod:`sorth.integrations.distributed`), so the
    file holds whole tensors, not rank 0's shards.
    """
    from sorth.tuner.sharding import sharding_of

    unwrapped = accelerator.unwrap_model(model)
    kwargs = {}
    if any(sharding_of(p) for p in unwrapped.parameters()):
        from sorth.integrations.distributed import gather_adapter_state_dict

        kwargs["state_dict"] = gather_adapter_state_dict(unwrapped)  # a collective
    if accelerator.is_main_process:
        with atomic_dir(folder) as tmp:
            unwrapped.save_pretrained(tmp, **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()
    return folder


def rank_max_abs_diff(accelerator: Any, model: Any) -> float:
    """Largest difference of any trainable parameter between processes (0.0 on one process).

    Every rank contributes its own flattened trainable parameters (float64) through
    ``accelerator.gather``; the result is the same on every rank.
    """
    import torch

    whole = [  # an FSDP2 shard is gathered first (every rank then holds the same tensor)
        p.full_tensor() if hasattr(p, "full_tensor") else p
        for p in model.parameters()
        if p.requires_grad
    ]
    flat = torch.cat([p.detach().double().flatten() for p in whole]).to(accelerator.device)
    every = accelerator.gather(flat[None])  # (num_processes, n)
    return float((every - every[0]).abs().max().item())
