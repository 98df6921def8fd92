"""A load that fails inside PEFT's own state-dict load is rolled back (Note [load rollback] in
sorth/tuner/rollback.py): ``PeftModel.from_pretrained`` leaves the base model, ``load_adapter``
the PeftModel, exactly as they were — module types, parameter values, requires_grad,
peft_config keys — and ``save_pretrained`` afterwards writes what it wrote before."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from sorth import SOrthConfig
from sorth.tuner import AdapterCheckpointError, SOrthLayer


class Classifier(nn.Module):
    def __init__(self, labels: int = 2) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(32, 16)
        self.head = nn.Linear(16, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin1(self.relu(self.lin0(x))))


def _config(bias: str = "none", **kw) -> SOrthConfig:
    return SOrthConfig(target_modules=["lin0", "lin1"], block_size=4, modules_to_save=["head"],
                       bias=bias, **kw)  # fmt: skip


def _state(model: nn.Module) -> dict:
    return {
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
        "peft_config": sorted(getattr(model, "peft_config", {}) or {}),
        "attrs": sorted(vars(model)),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        torch.testing.assert_close(after["tensors"][key], value, rtol=0, atol=0, msg=key)
    for key in ("grad", "training", "peft_config", "attrs"):
        assert after[key] == before[key], key


@pytest.fixture
def three_labels(tmp_path):
    """An adapter saved from a model whose modules_to_save head has 3 labels."""
    torch.manual_seed(0)
    for bias in ("none", "all"):
        model = get_peft_model(Classifier(3), _config(bias, init_weights=False))
        model.save_pretrained(tmp_path / bias)
    return tmp_path


@pytest.mark.parametrize("bias", ["none", "all"])
def test_from_pretrained_failure_leaves_the_base_model_unchanged(three_labels, bias) -> None:
    torch.manual_seed(1)
    base = Classifier(2).train()
    before = _state(base)
    x = torch.randn(4, 16)
    y = base(x).detach()
    with pytest.raises(AdapterCheckpointError, match=r"size mismatch for .*head.*left as it was"):
        PeftModel.from_pretrained(base, three_labels / bias)
    _assert_same(before, _state(base))
    assert not any(isinstance(m, SOrthLayer) for m in base.modules())
    torch.testing.assert_close(base(x), y, rtol=0, atol=0)
    # the base model can be adapted as usual afterwards
    get_peft_model(base, _config()).save_pretrained(three_labels / "again")


@pytest.mark.parametrize("bias", ["none", "all"])
def test_load_adapter_failure_removes_the_half_added_adapter(three_labels, tmp_path, bias) -> None:
    """bias="all": the checkpoint also holds the base biases and the existing head copy's."""
    torch.manual_seed(2)
    model = get_peft_model(Classifier(2), _config("none", init_weights=False))
    model.save_pretrained(tmp_path / "before")
    before = _state(model)
    with pytest.raises(AdapterCheckpointError, match="loading adapter 'other' failed"):
        model.load_adapter(three_labels / bias, adapter_name="other")
    _assert_same(before, _state(model))
    assert list(model.peft_config) == ["default"]
    assert model.active_adapters == ["default"]
    model.save_pretrained(tmp_path / "after")
    assert sorted(p.name for p in (tmp_path / "after").iterdir()) == sorted(
        p.name for p in (tmp_path / "before").iterdir()
    )  # no "other/" folder
    old = load_file(tmp_path / "before" / "adapter_model.safetensors")
    new = load_file(tmp_path / "after" / "adapter_model.safetensors")
    assert new.keys() == old.keys()
    assert all(torch.equal(new[k], old[k]) for k in old)


def test_failed_load_into_an_existing_adapter_restores_its_values(three_labels) -> None:
    """torch copies every matching tensor before it reports the mismatch: the existing
    adapter's sorth tensors were overwritten with the checkpoint's; they are restored."""
    torch.manual_seed(3)
    model = get_peft_model(Classifier(2), _config("all", init_weights=False))
    before = _state(model)
    with pytest.raises(AdapterCheckpointError, match="size mismatch"):
        model.load_adapter(three_labels / "all", adapter_name="default")
    _assert_same(before, _state(model))


def test_successful_loads_still_load(three_labels) -> None:
    loaded = PeftModel.from_pretrained(Classifier(3), three_labels / "none")
    saved = load_file(three_labels / "none" / "adapter_model.safetensors")
    state = loaded.state_dict()
    key = next(k for k in saved if "sorth_in" in k)
    model_key = key.replace("base_model.model.", "base_model.model.").replace(
        ".sorth_in.", ".sorth_in.default."
    )
    assert torch.equal(state[model_key], saved[key])
    loaded.load_adapter(three_labels / "none", adapter_name="other")
    assert sorted(loaded.peft_config) == ["default", "other"]
