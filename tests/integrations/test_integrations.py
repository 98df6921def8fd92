"""sorth.integrations: the PEFT method switch, diffusers loading (merged or not), reloading."""

from __future__ import annotations

from dataclasses import fields

import peft
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import get_peft_model
from transformers import AutoModelForCausalLM

import sorth
from sorth.integrations.diffusers import load_sorth_into_pipeline, save_pipeline_adapter
from sorth.integrations.peft import (
    METHODS,
    count_parameters,
    load_adapter,
    make_peft_config,
)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.mark.parametrize("method", METHODS)
def test_make_peft_config_every_method(method):
    cfg = make_peft_config(method, ["q_proj"], block_size=8, rank=4, dropout=0.0)
    entry = METHODS[method]
    assert type(cfg).__name__ == entry.config
    assert isinstance(cfg, sorth.SOrthConfig if entry.library == "sorth" else peft.PeftConfig)
    for key, value in entry.fixed.items():
        assert getattr(cfg, key) == value, key
    assert cfg.target_modules == {"q_proj"}


def test_registry_has_the_methods_the_programs_name():
    """One table for recipes, benchmark, demo and CLI (issue 11): the names they all accept."""
    expected = {"gsoft", "double_gsoft", "oft", "butterfly", "monarch", "lora", "peft_oft",
                "peft_boft", "peft_hra", "peft_road", "peft_psoft"}  # fmt: skip
    assert expected <= set(METHODS)
    assert not make_peft_config("peft_oft", ["q"], block_size=8).use_cayley_neumann  # exact
    assert make_peft_config("peft_oft_neumann", ["q"], block_size=8).use_cayley_neumann
    assert make_peft_config("gsoft", ["q"], nblocks=4, storage="full").storage == "full"


def test_every_program_uses_the_registry():
    """The finetune, dreambooth and demo recipes and the benchmark take their names from it."""
    from recipes import benchmark
    from recipes.demo.config import DemoConfig
    from recipes.dreambooth.config import DreamBoothConfig
    from recipes.finetune.config import FinetuneConfig
    from sorth.integrations.methods import method_of  # what `sorth inspect` prints

    def choices(cls, name):
        return set(next(f for f in fields(cls) if f.name == name).metadata["choices"])

    assert choices(FinetuneConfig, "method") == set(METHODS)
    assert choices(DreamBoothConfig, "method") == set(METHODS)
    assert choices(DemoConfig, "methods") <= set(METHODS)
    assert {row.method for row in benchmark.ROWS.values()} <= set(METHODS)
    assert "gs" not in benchmark.ROWS  # the old private names
    assert "both" not in benchmark.ROWS
    assert method_of({"peft_type": "SORTH", "structure": "gs", "side": "both"}) == "double_gsoft"


def test_make_peft_config_errors():
    with pytest.raises(ValueError, match="method='dora' is not one of gsoft"):
        make_peft_config("dora", ["q_proj"], block_size=8)
    with pytest.raises(ValueError, match="block_size or nblocks, not both"):
        make_peft_config("gsoft", ["q_proj"], block_size=8, nblocks=4)
    cfg = make_peft_config("gsoft", ["q_proj"])  # neither: each layer's default size
    assert (cfg.block_size, cfg.nblocks) == (None, None)
    with pytest.raises(ValueError, match="needs block_size"):
        make_peft_config("peft_oft", ["q_proj"])
    with pytest.raises(ValueError, match="rank 1, 2 or 4"):
        make_peft_config("peft_road", ["q_proj"], rank=3)


def _perturb(model: torch.nn.Module) -> None:
    """Move every adapter parameter away from its identity init so the checks can fail."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _noise_pred(unet: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x, hidden = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 16, 32, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([10]), hidden).sample


@pytest.mark.parametrize(
    ("method", "sizes"), [("gsoft", {"nblocks": 4}), ("double_gsoft", {"block_size": 8})]
)
def test_diffusers_load_merged_and_unmerged(tiny_sd_dir, tmp_path, method, sizes):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    adapted = get_peft_model(unet, make_peft_config(method, UNET_TARGETS, **sizes))
    _perturb(adapted)
    expected = _noise_pred(adapted)
    save_pipeline_adapter(tmp_path / "adapter", unet=adapted)
    base = _noise_pred(StableDiffusionPipeline.from_pretrained(tiny_sd_dir).unet)
    for merge in (False, True):
        pipe = load_sorth_into_pipeline(
            StableDiffusionPipeline.from_pretrained(tiny_sd_dir), tmp_path / "adapter", merge=merge
        )
        got = _noise_pred(pipe.unet)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert (got - base).abs().max() > 1e-3
    assert not any("sorth_" in n for n, _ in pipe.unet.named_parameters())  # merged: plain UNet
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        load_sorth_into_pipeline(pipe, tmp_path)


def test_transformers_reload_and_merge(tiny_llama_dir, tmp_path):
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        make_peft_config(
            "gsoft", ["q_proj", "v_proj", "down_proj"], block_size=8, task_type="CAUSAL_LM"
        ),
    )
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    _perturb(model)
    ids = torch.tensor([[2, 5, 9, 11, 4]])
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    for merge in (False, True):
        reloaded = load_adapter(
            AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path, merge=merge
        )
        with torch.no_grad():
            torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-4, rtol=1e-4)
