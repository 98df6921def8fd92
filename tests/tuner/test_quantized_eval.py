"""Evaluation never changes a QGSOFT run (Note [4-bit CPU layout] in sorth/tuner/bnb.py).

On CPUs with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit`` repacks its weight the first time
it runs in eval mode without a gradient (absmax rounded to bfloat16, a layout with no backward,
an inverse that scrambles the save). These tests train with and without evaluation forwards in
between and compare bit for bit; on a CPU without AVX512-BF16 bitsandbytes never repacks and
they hold trivially.
"""

from __future__ import annotations

from pathlib import Path

import pytest

bnb = pytest.importorskip("bitsandbytes")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from sorth import SOrthConfig  # noqa: E402
from sorth.tuner import keep_4bit_layout  # noqa: E402

TARGETS = ["q_proj", "v_proj"]  # k_proj, o_proj and the MLP stay plain Linear4bit


def _load(path: Path) -> nn.Module:
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map="cpu")
    return prepare_model_for_kbit_training(model)


def _sorth(path: Path) -> nn.Module:
    torch.manual_seed(0)
    return get_peft_model(_load(path), SOrthConfig(target_modules=TARGETS, block_size=8))


def _tokens() -> torch.Tensor:
    return torch.randint(4, 40, (4, 12), generator=torch.Generator().manual_seed(0))


def _logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(_tokens()).logits


def _train(model: nn.Module, steps: int, eval_every: int = 0) -> dict[str, torch.Tensor]:
    x = _tokens()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, steps + 1):
        model.train()
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        if eval_every and step % eval_every == 0:
            _logits(model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _dequantized(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every 4-bit weight of ``model``, dequantized (adapted and plain layers)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            W = module.weight
            out[name] = bnb.functional.dequantize_4bit(W.data, W.quant_state).clone()
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluation_does_not_change_training(tiny_llama_dir: Path) -> None:
    """Bitwise identical adapters after 6 steps with an eval forward every 2 steps and none
    (before: the adapters ended up to 84% of their update apart)."""
    with_eval = _train(_sorth(tiny_llama_dir), 6, eval_every=2)
    without = _train(_sorth(tiny_llama_dir), 6)
    _assert_same(with_eval, without)


def test_evaluation_does_not_change_lora_training(tiny_llama_dir: Path) -> None:
    """The same for a PEFT method on a model passed through :func:`keep_4bit_layout` (the
    recipes do so for every --method)."""

    def lora() -> nn.Module:
        torch.manual_seed(0)
        base = _load(tiny_llama_dir)
        assert keep_4bit_layout(base) == 2 * 7  # q k v o gate up down per layer
        return get_peft_model(base, LoraConfig(target_modules=TARGETS, r=4))

    _assert_same(_train(lora(), 4, eval_every=2), _train(lora(), 4))


def test_eval_then_save_keeps_model_and_frozen_weights(tiny_llama_dir: Path, tmp_path: Path):
    """An eval forward, then ``save_pretrained``: the logits do not change (before: 3% off) and
    no frozen 4-bit weight moves, adapted or not (before: max relative 2.5e-3)."""
    model = _sorth(tiny_llama_dir)
    _train(model, 2)
    frozen = _dequantized(model)
    before = _logits(model)
    model.save_pretrained(tmp_path / "adapter")
    assert torch.equal(_logits(model), before)
    _train(model, 1)
    _assert_same(_dequantized(model), frozen)


def test_merged_model_saved_after_eval(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A merged 4-bit model evaluated, then saved: its logits do not change (before: 2.9% off)
    and the saved model reloads to the same logits."""
    model = _sorth(tiny_llama_dir)
    _train(model, 3)
    merged = model.merge_and_unload()
    before = _logits(merged)
    assert torch.equal(_logits(merged), before)  # a second eval forward
    merged.save_pretrained(tmp_path / "merged")
    assert torch.equal(_logits(merged), before)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", device_map="cpu")
    keep_4bit_layout(reloaded)
    assert torch.equal(_logits(reloaded), before)


def test_finetune_recipe_eval_steps_do_not_change_the_adapter(
    tiny_llama_dir: Path, instruction_file: Path, tmp_path: Path
) -> None:
    """``recipes.finetune --load_in_4bit``, 6 steps, --eval_steps 2 vs 6: the same adapter,
    bit for bit (before: 18% of the update apart with targets q_proj/v_proj)."""
    from recipes.finetune.train import main

    def adapter(eval_steps: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"eval{eval_steps}"
        main(
            [
                "--model", str(tiny_llama_dir), "--task", "causal_lm",
                "--train_file", str(instruction_file), "--prompt_column", "prompt",
                "--response_column", "response", "--method", "gsoft", "--block_size", "8",
                "--target_modules", *TARGETS, "--batch_size", "4", "--lr", "1e-2",
                "--max_steps", "6", "--eval_steps", str(eval_steps), "--load_in_4bit",
                "--output_dir", str(out), "--no-progress",
            ]
        )  # fmt: skip
        return load_file(out / "adapter" / "adapter_model.safetensors")

    _assert_same(adapter(2), adapter(6))
