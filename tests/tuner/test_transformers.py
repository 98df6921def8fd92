"""transformers models built offline from configs: tiny Llama (default targets, generate,
gradient checkpointing, transformers' add_adapter/load_adapter), GPT-2 (Conv1D), RoBERTa
(sequence classification with modules_to_save; the paper's parameter counts)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
)

from sorth import SOrthConfig
from sorth.tuner import Conv1D, SOrthLayer
from tests._tolerances import tol

F32 = tol(torch.float32)


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return GPT2LMHeadModel(cfg).eval()


def tiny_roberta_cls() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=40,
        num_labels=3,
    )
    return RobertaForSequenceClassification(cfg).eval()


IDS = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(1))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_llama_default_targets_merge_and_generate() -> None:
    base = tiny_llama()
    y_base = _logits(base)
    model = get_peft_model(base, SOrthConfig(block_size=8, side="both", init_weights=False))
    layers = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, SOrthLayer)}
    assert layers == {"q_proj", "v_proj"}
    y = _logits(model)
    assert (y - y_base).abs().max() > 1e-3
    out = model.generate(input_ids=IDS, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 10)
    merged = model.merge_and_unload()
    torch.testing.assert_close(_logits(merged), y, **F32)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing(use_reentrant: bool) -> None:
    base = tiny_llama()
    base.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
    )
    base.enable_input_require_grads()
    model = get_peft_model(base, SOrthConfig(target_modules="all-linear", block_size=8))
    model.train()
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "sorth_" in n]
    assert grads
    assert all(g is not None for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


def test_gpt2_conv1d_all_linear() -> None:
    # No orthogonal method in PEFT supports transformers' Conv1D (peft_anchors.md §2.3 D8).
    base = tiny_gpt2()
    y_base = _logits(base)
    cfg = SOrthConfig(target_modules="all-linear", block_size=8, side="both", init_weights=False)
    model = get_peft_model(base, cfg)
    conv1d = [m for m in model.modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per layer
    y = _logits(model)
    assert (y - y_base).abs().max() > 1e-3
    torch.testing.assert_close(_logits(model.merge_and_unload()), y, **F32)


def test_roberta_classifier_modules_to_save_round_trip(tmp_path) -> None:
    cfg = SOrthConfig(
        target_modules=["query", "key", "value", "dense"],
        exclude_modules=["classifier.dense"],
        block_size=8,
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    model = get_peft_model(tiny_roberta_cls(), cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert not any("classifier.dense.sorth" in n for n in trainable)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 2])
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=IDS, labels=labels).loss.backward()
        opt.step()
    model.eval()
    y = _logits(model)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_roberta_cls(), tmp_path)
    torch.testing.assert_close(_logits(loaded), y, rtol=0, atol=0)
    # merge_and_unload keeps the trained head (RobertaClassificationHead has no `.weight`)
    merged = loaded.merge_and_unload()
    assert type(merged.classifier).__name__ == "RobertaClassificationHead"
    assert not any("sorth_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), y, **tol(torch.float32))
    assert (_logits(merged) - _logits(tiny_roberta_cls())).abs().max() > 1e-3


def test_transformers_add_adapter_and_load_adapter(tmp_path) -> None:
    model = tiny_llama()
    y_base = _logits(model)
    cfg = SOrthConfig(target_modules=["q_proj", "v_proj"], block_size=8, init_weights=False)
    model.add_adapter(cfg)
    y = _logits(model)
    assert (y - y_base).abs().max() > 1e-3
    model.save_pretrained(tmp_path)  # transformers saves only the adapter
    assert (tmp_path / "adapter_model.safetensors").exists()
    fresh = tiny_llama()
    fresh.load_adapter(tmp_path)
    torch.testing.assert_close(_logits(fresh), y, rtol=0, atol=0)
    fresh.disable_adapters()
    torch.testing.assert_close(_logits(fresh), y_base, rtol=0, atol=1e-6)
    fresh.enable_adapters()
    fresh.delete_adapter("default")
    torch.testing.assert_close(_logits(fresh), y_base, rtol=0, atol=1e-6)


# Paper §2 counts (paper.md): GSOFT b=8 with scale on every nn.Linear of RoBERTa-base, the unused
# pooler included. storage="full" counts b×b per block (the paper's code); "skew" the free entries.
@pytest.mark.parametrize(("storage", "expected"), [("full", 1_423_104), ("skew", 669_696)])
def test_roberta_base_parameter_counts(storage: str, expected: int) -> None:
    with torch.device("meta"):  # RoBERTa-base sizes, no memory
        base = RobertaModel(RobertaConfig())
    cfg = SOrthConfig(target_modules="all-linear", block_size=8, storage=storage)
    model = get_peft_model(base, cfg)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == expected
    layers = [n for n, m in model.named_modules() if isinstance(m, SOrthLayer)]
    assert len(layers) == 12 * 6 + 1  # q, k, v, attn-out, intermediate, output; + pooler


def test_double_gsoft_count_matches_formula() -> None:
    # Double GSOFT: 2·d_in²/r + 2·d_out²/r + d_out per layer (full storage), nblocks = r.
    with torch.device("meta"):
        base = RobertaModel(RobertaConfig(num_hidden_layers=1))
    cfg = SOrthConfig(target_modules=["query"], nblocks=32, side="both", storage="full")
    trainable, _ = get_peft_model(base, cfg).get_nb_trainable_parameters()
    d, r = 768, 32
    assert trainable == 2 * d * d // r + 2 * d * d // r + d
