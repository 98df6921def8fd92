"""Every tutorial script in docs/tutorials runs on its tiny model and does what its page says.

The scripts are imported and their ``main(argv)`` called in-process (one PEFT/transformers import
for all); each returns the numbers it printed, which are checked here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TUTORIALS = Path(__file__).resolve().parents[2] / "docs" / "tutorials"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_tutorial_has_a_page_and_a_test() -> None:
    scripts = {p.stem for p in TUTORIALS.glob("*.py")}
    assert scripts == {"llm_finetuning", "dreambooth", "lipschitz_cnn", "lipschitz_transformer"}
    pages = "\n".join(p.read_text() for p in TUTORIALS.glob("*.md"))
    for name in scripts:
        assert f'--8<-- "docs/tutorials/{name}.py"' in pages


@pytest.mark.slow
def test_llm_finetuning(tmp_path: Path) -> None:
    out = _load("llm_finetuning").main(["--out", str(tmp_path), "--steps", "12"])
    # tiny Llama, b = 16: per layer 6 rotations on 64 features + 1 on 128 (d·(b−1) each) and
    # scales of 64+32+32+64+128+128+64; two layers
    assert out["trainable"] == 2 * (6 * 64 * 15 + 128 * 15 + 512)
    assert out["loss_last"] < out["loss_first"]
    assert out["reload_diff"] == 0.0  # save_pretrained -> PeftModel.from_pretrained is exact
    assert out["merge_diff"] < 1e-4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_dreambooth(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--steps", "2", "--inference-steps", "2"]
    out = _load("dreambooth").main(args)
    assert out["trainable"] > 0
    assert out["merge_diff"] < 1e-4
    assert out["image_size"] == 32
    assert (tmp_path / "sample.png").is_file()
    assert (tmp_path / "adapter" / "unet" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_lipschitz_cnn() -> None:
    args = ["--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--init-channels", "4"]
    out = _load("lipschitz_cnn").main([*args, "--power-iters", "5"])
    assert out["steps"] == 2
    # every layer is orthogonal or 1-Lipschitz: the strict bound is 1 up to the Taylor
    # truncation and rounding allowances; the power iteration approaches it from below
    assert 1.0 <= out["lipschitz_bound"] <= 1.0 + 1e-4
    assert 0.9 < out["lipschitz_estimate"] <= out["lipschitz_bound"]
    assert 0.0 <= out["certified"] <= out["clean"] <= 1.0


@pytest.mark.slow
def test_lipschitz_transformer() -> None:
    args = ["--steps", "30", "--attack-steps", "20", "--jasmin-steps", "4"]
    out = _load("lipschitz_transformer").main(args)
    assert out["bound"] == pytest.approx(2.0, rel=1e-6)  # GS layers: calibrated, fixed
    assert out["loss_last"] < out["loss_first"]
    assert 0.0 < out["attack"] <= out["bound_l2"]  # no attack beats the certificate
    assert out["jasmin_last"] < out["jasmin_first"]  # the regulariser lowers the local bounds
