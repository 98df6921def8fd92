"""Several adapters: add/load, set_adapter, two active (forward and merge order), mixed batches,
delete, module_dropout, gradient flow."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

import sorth.orthogonal
from sorth import GSOrthogonal, SOrthConfig, orthogonality_error
from sorth.tuner import SOrthLayer
from tests._tolerances import tol
from tests.tuner._models import MLP, ModelConv2D, mlp_input

F32 = tol(torch.float32)
LIN = {"target_modules": ["lin0", "lin1"], "init_weights": False}


def _two_adapters(cfg_b: dict | None = None):
    torch.manual_seed(0)
    base = MLP().eval()
    x = mlp_input()
    with torch.no_grad():
        y_base = base(x)
    model = get_peft_model(base, SOrthConfig(**LIN, block_size=4, side="both"))
    model.add_adapter("other", SOrthConfig(**(cfg_b or {**LIN, "nblocks": 2})))
    return model.eval(), x, y_base


def _run(model, x, adapters):
    model.base_model.set_adapter(adapters)
    with torch.no_grad():
        return model(x)


def test_second_adapter_not_trainable_until_set() -> None:
    model, _, _ = _two_adapters()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".default" in n for n in trainable)
    model.set_adapter("other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".other" in n for n in trainable)


def test_set_adapter_switches_output() -> None:
    model, x, y_base = _two_adapters()
    y_a, y_b = _run(model, x, ["default"]), _run(model, x, ["other"])
    assert (y_a - y_b).abs().max() > 1e-3
    assert (y_a - y_base).abs().max() > 1e-3


@pytest.mark.parametrize("order", [["default", "other"], ["other", "default"]])
def test_two_active_adapters_merge_in_application_order(order: list[str]) -> None:
    # PEFT's OFT merges two active adapters in the reverse order (peft_anchors.md §2.3 D2).
    model, x, _ = _two_adapters({**LIN, "nblocks": 2, "side": "both"})
    y_one = _run(model, x, order[:1])
    y_both = _run(model, x, order)
    assert (y_both - y_one).abs().max() > 1e-3
    y_swapped = _run(model, x, order[::-1])
    assert (y_both - y_swapped).abs().max() > 1e-4  # order matters, so the test can fail
    model.base_model.set_adapter(order)
    with torch.no_grad():
        model.merge_adapter()
        torch.testing.assert_close(model(x), y_both, **F32)
        model.unmerge_adapter()
        torch.testing.assert_close(model(x), y_both, **F32)


def test_mixed_adapter_batches() -> None:
    model, x, y_base = _two_adapters()
    y_a, y_b = _run(model, x, ["default"]), _run(model, x, ["other"])
    names = ["default", "other", "__base__", "other", "default", "__base__"]
    with torch.no_grad():
        y_mixed = model(x, adapter_names=names)
    expected = {"default": y_a, "other": y_b, "__base__": y_base}
    for i, name in enumerate(names):
        torch.testing.assert_close(y_mixed[i], expected[name][i], **F32)
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\]"):
        model(x, adapter_names=["nope"] * x.shape[0])
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        model(x, adapter_names=names)


def test_mixed_batches_conv2d() -> None:
    torch.manual_seed(0)
    base = ModelConv2D(padding=1).eval()
    x = torch.randn(3, 8, 10, 10)
    cfg = {"target_modules": ["conv"], "block_size": 8, "init_weights": False}
    model = get_peft_model(base, SOrthConfig(**cfg)).eval()
    model.add_adapter("b", SOrthConfig(**{**cfg, "block_size": 4}))
    y_a, y_b = _run(model, x, ["default"]), _run(model, x, ["b"])
    with torch.no_grad():
        y = model(x, adapter_names=["b", "default", "b"])
    torch.testing.assert_close(y, torch.stack([y_b[0], y_a[1], y_b[2]]), **F32)


def test_delete_adapter() -> None:
    model, x, _ = _two_adapters()
    y_b = _run(model, x, ["other"])
    model.set_adapter("default")
    model.delete_adapter("default")
    assert "default" not in model.peft_config
    for layer in model.modules():
        if isinstance(layer, SOrthLayer):
            assert layer._all_available_adapter_names() == ["other"]
            assert "default" not in layer.sorth_in
            assert "default" not in layer.sorth_out
            assert "default" not in layer.sorth_s
    assert model.active_adapters == ["other"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), y_b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="nope"):
        model.delete_adapter("nope")


def test_load_second_adapter_from_disk(tmp_path) -> None:
    model, x, _ = _two_adapters()
    y_a, y_b = _run(model, x, ["default"]), _run(model, x, ["other"])
    model.save_pretrained(tmp_path)  # default -> tmp_path, other -> tmp_path/other
    torch.manual_seed(0)
    fresh = PeftModel.from_pretrained(MLP().eval(), tmp_path)
    fresh.load_adapter(tmp_path / "other", adapter_name="other")
    torch.testing.assert_close(_run(fresh, x, ["default"]), y_a, rtol=0, atol=0)
    torch.testing.assert_close(_run(fresh, x, ["other"]), y_b, rtol=0, atol=0)
    # an adapter can be loaded under any name (the name is not stored in the checkpoint)
    fresh.load_adapter(tmp_path, adapter_name="renamed")
    torch.testing.assert_close(_run(fresh, x, ["renamed"]), y_a, rtol=0, atol=0)


def test_module_dropout_acts_in_training_only() -> None:
    # PEFT's OFT creates but never calls its module_dropout (peft_anchors.md §2.3 D3).
    torch.manual_seed(0)
    cfg = SOrthConfig(**LIN, block_size=4, module_dropout=0.5)
    model = get_peft_model(MLP(), cfg)
    x = mlp_input()
    model.train()
    outs = [model(x).detach() for _ in range(4)]
    assert any((o - outs[0]).abs().max() > 1e-4 for o in outs[1:])
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        expected = model.base_model.model.lin0.get_merged_weight("default")
        model.merge_adapter()  # in train mode: merging never drops blocks
        merged = model.base_model.model.lin0.base_layer.weight
        torch.testing.assert_close(merged, expected, rtol=0, atol=0)
        model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p.detach(), weights[n], **F32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_bias_sorth_only_trains_adapted_biases() -> None:
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0"], block_size=4, bias="sorth_only")
    model = get_peft_model(MLP(), cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.lin0.base_layer.bias" in trainable
    assert "base_model.model.lin1.bias" not in trainable
    cfg_all = SOrthConfig(target_modules=["lin0"], block_size=4, bias="all")
    model = get_peft_model(MLP(), cfg_all)
    assert model.base_model.model.lin1.bias.requires_grad


def test_neumann_unmerge_restores_weights_far_from_identity(monkeypatch) -> None:
    # The truncated series is not orthogonal far from I: unmerge must invert, not transpose.
    # (The plain series, without the exact-solve fallback of Note [neumann fallback].)
    monkeypatch.setattr(sorth.orthogonal, "NEUMANN_MAX_ERROR", None)
    torch.manual_seed(0)
    cfg = SOrthConfig(
        **LIN, block_size=8, orthogonal_map="cayley_neumann", init_std=0.3, side="both"
    )
    model = get_peft_model(MLP(), cfg)
    rotations = [m for m in model.modules() if isinstance(m, GSOrthogonal)]
    assert max(float(orthogonality_error(q.dense())) for q in rotations) > 1.0  # Aᵀ ≠ A⁻¹
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.merge_adapter()
    model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p.detach(), weights[n], rtol=1e-4, atol=1e-4)


def test_load_low_cpu_mem_usage(tmp_path) -> None:
    model, x, _ = _two_adapters()
    y_a = _run(model, x, ["default"])
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(MLP().eval(), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y_a, rtol=0, atol=0)


def test_conv2d_unbatched_input() -> None:
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["conv"], block_size=4, side="both", init_weights=False)
    model = get_peft_model(ModelConv2D(padding=1), cfg).eval()
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x[0]), model(x)[0], **F32)
