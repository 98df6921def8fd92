"""The base models a benchmark adapts: a Llama from a config, a small diffusers UNet, and the
Llama saved and reloaded on a bitsandbytes base (``--quant``).

A :class:`Workload` is a base model, one batch, the loss of one training step and the adapted
module names; ``widths`` are the feature sizes ``d`` the adapters act on (BOFT's factor count
``m`` must suit every one of them).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F

from recipes.benchmark.settings import Settings

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def llama_config(d: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=d,
        intermediate_size=(8 * d // 3 + 63) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, d // 64),
        num_key_value_heads=max(1, d // 64),
        vocab_size=1024,
        max_position_embeddings=max(2048, d),
    )


@dataclasses.dataclass
class Workload:
    """A base model, a batch, the loss of one training step and the adapted module names."""

    model: torch.nn.Module
    batch: dict[str, torch.Tensor]
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    targets: list[str]
    widths: list[int]  # feature sizes the adapters act on (for BOFT's factor count)


def llama_workload(d: int, layers: int, tokens: int, batch: int, device: str) -> Workload:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(d, layers)).to(device)
    ids = torch.randint(0, 1024, (batch, tokens), device=device)

    def loss(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(input_ids=b["input_ids"], labels=b["input_ids"]).loss

    return Workload(model, {"input_ids": ids}, loss, LLAMA_TARGETS, [d])


def unet_workload(batch: int, device: str) -> Workload:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(320, 640),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=8,
    ).to(device)
    b = {
        "sample": torch.randn(batch, 4, 32, 32, device=device),
        "timestep": torch.tensor([500] * batch, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, 1024, device=device),
        "noise": torch.randn(batch, 4, 32, 32, device=device),
    }

    def loss(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m(b["sample"], b["timestep"], encoder_hidden_states=b["encoder_hidden_states"])
        return F.mse_loss(out.sample, b["noise"])

    return Workload(model, b, loss, UNET_TARGETS, [320, 640, 1024])


def quant_workload(s: Settings) -> Workload:
    """The Llama workload saved and reloaded with bitsandbytes (``--quant 4bit``: NF4, compute
    dtype float32 on CPU, bfloat16 on GPU; ``8bit``: LLM.int8()), then
    ``prepare_model_for_kbit_training`` (without gradient checkpointing)."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    w = llama_workload(s.hidden, s.layers, s.tokens, s.batch, "cpu")
    gpu = s.device.startswith("cuda")
    quant = BitsAndBytesConfig(
        load_in_4bit=s.quant == "4bit",
        load_in_8bit=s.quant == "8bit",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16 if gpu else torch.float32,
    )
    with tempfile.TemporaryDirectory() as tmp:
        w.model.save_pretrained(tmp)
        model = LlamaForCausalLM.from_pretrained(
            tmp, quantization_config=quant, device_map={"": s.device} if gpu else "cpu"
        )
    w.model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    w.batch = {k: v.to(s.device) for k, v in w.batch.items()}
    return w


def make_workload(
    s: Settings, d: int | None = None, layers: int | None = None, tokens: int | None = None
) -> Workload:
    if s.unet:
        return unet_workload(s.batch, s.device)
    if s.quant:
        return quant_workload(s)
    return llama_workload(d or s.hidden, layers or s.layers, tokens or s.tokens, s.batch, s.device)
