"""A tiny diffusers UNet2DConditionModel (config from diffusion_and_data.md §2.2): GSOFT on the
attention projections and Double GSOFT on the 3×3 ResNet convs, through get_peft_model and
through diffusers' own ``unet.add_adapter``."""

from __future__ import annotations

import pytest
import torch

from sorth import SOrthConfig
from sorth.tuner import Conv2d, SOrthLayer
from tests._tolerances import tol

diffusers = pytest.importorskip("diffusers")

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
F32 = tol(torch.float32)


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.tensor([10, 500]),
        torch.randn(2, 5, 32, generator=g),
    )


def _noise(unet) -> torch.Tensor:
    sample, t, text = _inputs()
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=text).sample


def test_unet_get_peft_model_attention_and_3x3_convs() -> None:
    from peft import get_peft_model

    unet = tiny_unet()
    y_base = _noise(unet)
    cfg = SOrthConfig(
        target_modules=[*ATTN, "conv1", "conv2"], block_size=8, side="both", init_weights=False
    )
    model = get_peft_model(unet, cfg).eval()
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert convs
    assert any(m.get_base_layer().kernel_size == (3, 3) for m in convs)
    y = _noise(model)
    assert (y - y_base).abs().max() > 1e-3
    with model.disable_adapter():
        torch.testing.assert_close(_noise(model), y_base, rtol=0, atol=1e-6)
    merged = model.merge_and_unload()
    torch.testing.assert_close(_noise(merged), y, **F32)


def test_unet_add_adapter_identity_then_trained() -> None:
    unet = tiny_unet()
    y_base = _noise(unet)
    unet.add_adapter(SOrthConfig(target_modules=ATTN, nblocks=4))
    assert sum(isinstance(m, SOrthLayer) for m in unet.modules()) == 4 * 8  # 8 attention modules
    torch.testing.assert_close(_noise(unet), y_base, **F32)  # identity at init
    params = [p for n, p in unet.named_parameters() if "sorth_" in n]
    assert params
    assert all(p.requires_grad for p in params)
    opt = torch.optim.SGD(params, lr=0.5)
    sample, t, text = _inputs()
    unet.train()
    for _ in range(2):
        opt.zero_grad()
        unet(sample, t, encoder_hidden_states=text).sample.pow(2).mean().backward()
        opt.step()
    unet.eval()
    assert (_noise(unet) - y_base).abs().max() > 1e-4
    unet.disable_adapters()
    torch.testing.assert_close(_noise(unet), y_base, rtol=0, atol=1e-6)
