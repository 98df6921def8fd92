"""PEFT's custom-model checks (test_custom_models.py / testing_common.py) over the case matrix."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from sorth import SOrthConfig
from sorth.tuner import SOrthLayer
from tests._tolerances import tol
from tests.tuner._models import CASES, Case, adapter_params

F32 = tol(torch.float32)


def _build(case: Case, *, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    base = case.model().eval()
    torch.manual_seed(seed + 1)
    x = case.inputs()
    return base, x, SOrthConfig(**{**case.config, **overrides})


def _peft(case: Case, **overrides):
    base, x, cfg = _build(case, **overrides)
    with torch.no_grad():
        y_base = base(x)
    model = get_peft_model(base, cfg).eval()
    return model, x, y_base


def _train(model, x, steps: int = 3, lr: float = 0.5) -> None:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.eval()


CASE_IDS = [c.name for c in CASES]
pytestmark = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def test_identity_at_init(case: Case) -> None:
    model, x, y_base = _peft(case)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y_base, **F32)


def test_random_init_is_not_identity(case: Case) -> None:
    model, x, y_base = _peft(case, init_weights=False)
    with torch.no_grad():
        assert (model(x) - y_base).abs().max() > 1e-3


def test_attributes(case: Case) -> None:
    model, _, _ = _peft(case)
    layers = [m for m in model.modules() if isinstance(m, SOrthLayer)]
    assert layers
    for layer in layers:
        assert layer.in_features > 0
        assert layer.out_features > 0
        assert set(layer.sorth_on_weight) == {"default"}
    assert model.active_adapter == "default"


def test_only_adapter_params_trainable_and_updated(case: Case) -> None:
    model, x, _ = _peft(case)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert trainable == set(adapter_params(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(x).pow(2).mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    _train(model, x)
    for n, p in model.named_parameters():
        if n in trainable:
            assert (p.detach() - before[n]).abs().max() > 1e-4, n
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_training_changes_output_and_disable_restores(case: Case) -> None:
    model, x, y_base = _peft(case)
    _train(model, x)
    with torch.no_grad():
        y = model(x)
        assert (y - y_base).abs().max() > 1e-4
        with model.disable_adapter():
            torch.testing.assert_close(model(x), y_base, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), y, rtol=0, atol=0)  # enabled again


def test_save_load_round_trip(case: Case, tmp_path) -> None:
    model, x, _ = _peft(case, init_weights=False)
    with torch.no_grad():
        y = model(x)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved
    assert all("sorth_" in k and ".default" not in k for k in saved), list(saved)
    assert not any("perm" in k or "base_layer" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) == sum(
        p.numel() for p in adapter_params(model).values()
    )
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "SORTH"
    assert not (tmp_path / "model.safetensors").exists()
    fresh, _, _ = _build(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Found missing adapter keys"
        loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = PeftModel.from_pretrained(_build(case)[0], tmp_path, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == set(
        adapter_params(trainable)
    )


def test_merge_equals_unmerged(case: Case) -> None:
    model, x, y_base = _peft(case, init_weights=False)
    _train(model, x, steps=2, lr=0.1)
    with torch.no_grad():
        y = model(x)
        assert (y - y_base).abs().max() > 1e-3  # the adapter is far from the identity
        model.merge_adapter()
        torch.testing.assert_close(model(x), y, **F32)
        model.unmerge_adapter()
        torch.testing.assert_close(model(x), y, **F32)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
        assert not hasattr(merged, "peft_config")
        torch.testing.assert_close(merged(x), y, **F32)
        pickle.loads(pickle.dumps(merged))


def test_merge_unmerge_restores_weights(case: Case) -> None:
    model, _, _ = _peft(case, init_weights=False)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.merge_adapter()
    changed = [n for n, p in model.named_parameters() if n in weights and "weight" in n]
    assert any((dict(model.named_parameters())[n] - weights[n]).abs().max() > 1e-3 for n in changed)
    model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p.detach(), weights[n], **F32)


def test_merge_is_idempotent(case: Case) -> None:
    model, x, _ = _peft(case, init_weights=False)
    with torch.no_grad():
        model.merge_adapter()
        y = model(x)
        with pytest.warns(UserWarning, match="All adapters are already merged"):
            model.merge_adapter()
        torch.testing.assert_close(model(x), y, rtol=0, atol=1e-6)


def test_safe_merge(case: Case) -> None:
    model, x, _ = _peft(case, init_weights=False)
    with torch.no_grad():
        y = model(x)
        merged = copy.deepcopy(model).merge_and_unload(safe_merge=True)
        torch.testing.assert_close(merged(x), y, **F32)
        param = next(iter(adapter_params(model).values()))
        param.data[0] = float("nan")
        msg = r"NaNs detected in the merged weights\. The adapter default seems to be broken"
        with pytest.raises(ValueError, match=msg):
            model.merge_and_unload(safe_merge=True)


def test_unload_gives_base(case: Case) -> None:
    model, x, y_base = _peft(case, init_weights=False)
    with torch.no_grad():
        torch.testing.assert_close(model.unload()(x), y_base, rtol=0, atol=0)
