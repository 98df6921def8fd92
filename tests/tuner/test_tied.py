"""Merging an adapter on a tied weight (``tie_word_embeddings=True``: ``lm_head`` and
``embed_tokens`` are one parameter) must not change the other module (Note [tied weights] in
sorth/tuner/merge.py). Before, the merged weight was written into the shared parameter and the
merged model's logits were 0.21 off at a largest logit of 0.71."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sorth import SOrthConfig
from tests._tolerances import tol

F32 = tol(torch.float32)
CASES = {"lm_head": {}, "embed_tokens": {"side": "output"}}


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tied")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_tokens()).logits


def _model(path: Path, target: str) -> torch.nn.Module:
    base = AutoModelForCausalLM.from_pretrained(path)
    assert base.lm_head.weight is base.model.embed_tokens.weight
    cfg = SOrthConfig(
        target_modules=[target, "q_proj"], block_size=4, init_weights=False, **CASES[target]
    )
    return get_peft_model(base, cfg).eval()


@pytest.mark.parametrize("target", list(CASES))
def test_merge_adapter_on_a_tied_weight(tied_dir: Path, target: str) -> None:
    model = _model(tied_dir, target)
    inner = model.base_model.model
    shared = inner.lm_head.get_base_layer().weight if target == "lm_head" else inner.lm_head.weight
    before = shared.detach().clone()
    y = _logits(model)
    with torch.no_grad(), model.disable_adapter():
        base = _logits(model)
    model.merge_adapter()
    torch.testing.assert_close(_logits(model), y, **F32)
    assert torch.equal(shared, before)  # the other module's weight is untouched
    model.unmerge_adapter()
    assert torch.equal(shared, before)
    torch.testing.assert_close(_logits(model), y, **F32)
    head = inner.lm_head.get_base_layer() if target == "lm_head" else inner.lm_head
    emb = inner.model.embed_tokens
    assert head.weight is (emb.get_base_layer() if target == "embed_tokens" else emb).weight
    model.merge_adapter()
    with model.disable_adapter():  # unmerges
        torch.testing.assert_close(_logits(model), base, **F32)


@pytest.mark.parametrize("target", list(CASES))
def test_merge_and_unload_and_sorth_merge_on_a_tied_weight(
    tied_dir: Path, tmp_path: Path, target: str
) -> None:
    from sorth.cli import merge_adapter

    model = _model(tied_dir, target)
    y = _logits(model)
    model.save_pretrained(tmp_path / "adapter")
    merged = model.merge_and_unload()
    assert merged.config.tie_word_embeddings is False
    torch.testing.assert_close(_logits(merged), y, **F32)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(_logits(reloaded), y, **F32)
    out = merge_adapter(tied_dir, tmp_path / "adapter", tmp_path / "cli")
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out).eval()), y, **F32)
