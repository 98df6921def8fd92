"""Tiny models and adapters saved to disk once per session for the `sorth` command tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _tiny_llama(folder: Path, hidden: int = 64) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{}\n")  # a non-weight file merge must copy
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def other_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, hidden size 32: adapters saved for `llama_dir` do not fit it."""
    return _tiny_llama(tmp_path_factory.mktemp("llama32"), hidden=32)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """Double GSOFT, b = 8, on q_proj / v_proj / down_proj, moved away from the identity."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import sorth

    torch.manual_seed(1)
    config = sorth.SOrthConfig(
        target_modules=["q_proj", "v_proj", "down_proj"], block_size=8, side="both",
        init_weights=False, init_std=0.3,
    )  # fmt: skip
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sorth_s.default"):
                p.uniform_(0.5, 1.5)  # a non-trivial scale too
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama_dir),
        LoraConfig(target_modules=["q_proj"], r=2, init_lora_weights=False),
    )
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    return out
