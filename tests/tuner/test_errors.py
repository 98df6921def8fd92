"""Bad input raises a clear ValueError subclass naming the module and value, and leaves the model
unchanged: config values, sizes the block size does not divide, unsupported layers, checkpoints
saved for another model / structure, truncated or corrupted safetensors."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from sorth import BlockSizeError, MethodError, SOrthConfig, SOrthValueError
from sorth.tuner import AdapterCheckpointError, UnsupportedLayerError
from tests.tuner._models import MLP, ModelConv2D, mlp_input


def _snapshot(model: nn.Module) -> tuple[list[tuple[str, type]], dict[str, torch.Tensor], set]:
    modules = [(n, type(m)) for n, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    return modules, state, grads


def _assert_unchanged(model: nn.Module, snap) -> None:
    modules, state, grads = _snapshot(model)
    assert modules == snap[0]
    assert state.keys() == snap[1].keys()
    assert all(torch.equal(state[k], snap[1][k]) for k in state)
    assert grads == snap[2]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"block_size": 4, "nblocks": 2}, BlockSizeError, r"at most one of block_size \(4\)"),
        ({"block_size": 0}, BlockSizeError, "block_size=0 must be a positive integer"),
        ({"block_size": 4, "side": "left"}, MethodError, r"side='left'.*\['input', 'output'"),
        ({"block_size": 4, "orthogonal_map": "svd"}, MethodError, "orthogonal_map='svd'"),
        ({"block_size": 4, "structure": "kron"}, MethodError, "structure='kron'"),
        ({"block_size": 4, "storage": "half"}, MethodError, "storage='half'"),
        ({"block_size": 4, "conv_side": "rows"}, MethodError, "conv_side='rows'"),
        ({"block_size": 4, "bias": "lora_only"}, MethodError, "bias='lora_only'"),
        ({"block_size": 4, "module_dropout": 1.0}, SOrthValueError, "module_dropout=1.0"),
        ({"block_size": 4, "neumann_terms": 0}, BlockSizeError, "neumann_terms=0"),
        ({"block_size": 4, "layers_pattern": "h"}, SOrthValueError, "layers_to_transform"),
    ],
)
def test_config_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SOrthConfig(target_modules=["lin0"], **kwargs)


def test_block_size_not_dividing_names_module_and_leaves_model_unchanged() -> None:
    model = MLP()
    snap = _snapshot(model)
    # lin0 (16 in) is fine with block_size=16; lin1 (32 in) too; but side="both" needs lin1's
    # 8 outputs to be divisible by 16.
    cfg = SOrthConfig(target_modules=["lin0", "lin1"], block_size=16, side="both")
    with pytest.raises(
        BlockSizeError, match=r"'lin1'.*block_size=16 must divide n=8.*\[1, 2, 4, 8\]"
    ):
        get_peft_model(model, cfg)
    _assert_unchanged(model, snap)


def test_unsupported_layer_names_module() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Conv1d(8, 8, 3))
    snap = _snapshot(model)
    cfg = SOrthConfig(target_modules=["0", "1"], block_size=4)
    with pytest.raises(UnsupportedLayerError, match=r"'1' is a Conv1d; sorth supports"):
        get_peft_model(model, cfg)
    _assert_unchanged(model, snap)


def test_embedding_needs_output_side() -> None:
    model = nn.Sequential(nn.Embedding(10, 8))
    snap = _snapshot(model)
    with pytest.raises(SOrthValueError, match=r"'0'.*side='input' on nn.Embedding.*side='output'"):
        get_peft_model(model, SOrthConfig(target_modules=["0"], block_size=4))
    _assert_unchanged(model, snap)


def test_fan_in_fan_out_on_linear() -> None:
    cfg = SOrthConfig(target_modules=["lin0"], block_size=4, fan_in_fan_out=True)
    with pytest.raises(UnsupportedLayerError, match="fan_in_fan_out=True but target module 'lin0'"):
        get_peft_model(MLP(), cfg)


@pytest.mark.parametrize(
    ("conv", "cfg", "match"),
    [
        ({"groups": 2}, {"conv_side": "channels"}, "conv_side='channels' needs groups=1"),
        ({"groups": 2}, {"side": "both"}, "grouped conv"),
        ({}, {"block_size": 7}, r"'conv'.*Conv2d.*block_size=7 must divide n=72"),
    ],
)
def test_conv_geometry_errors(conv: dict, cfg: dict, match: str) -> None:
    model = ModelConv2D(**conv)
    snap = _snapshot(model)
    config = SOrthConfig(target_modules=["conv"], **{"block_size": 4, **cfg})
    with pytest.raises(SOrthValueError, match=match):
        get_peft_model(model, config)
    _assert_unchanged(model, snap)


class WideMLP(MLP):
    """Same module names as MLP, other sizes: an MLP adapter does not fit it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 64)
        self.lin1 = nn.Linear(64, 8)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0", "lin1"], block_size=4, init_weights=False)
    get_peft_model(MLP(), cfg).save_pretrained(tmp_path)
    return tmp_path


def test_checkpoint_for_another_model(saved) -> None:
    model = WideMLP()
    snap = _snapshot(model)
    with pytest.raises(
        AdapterCheckpointError,
        match=r"'lin0\.sorth_s' has shape \(32,\), the model expects \(64,\)",
    ):
        PeftModel.from_pretrained(model, saved)
    _assert_unchanged(model, snap)


def test_checkpoint_with_another_structure(saved) -> None:
    config = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**config, "structure": "oft"}))
    model = MLP()
    snap = _snapshot(model)
    with pytest.raises(AdapterCheckpointError, match=r"unexpected key\(s\).*sorth_in\.params\.1"):
        PeftModel.from_pretrained(model, saved)
    _assert_unchanged(model, snap)


def test_load_adapter_failure_keeps_existing_adapter(saved) -> None:
    torch.manual_seed(0)
    peft_model = PeftModel.from_pretrained(MLP(), saved).eval()
    x = mlp_input()
    with torch.no_grad():
        y = peft_model(x)
    config = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**config, "block_size": 8}))
    with pytest.raises(AdapterCheckpointError, match=r"'lin0\.sorth_in\.params\.0' has shape"):
        peft_model.load_adapter(saved, adapter_name="second")
    assert list(peft_model.peft_config) == ["default"]
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors(saved, damage: str) -> None:
    path = saved / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 8 + data[8:])
    model = MLP()
    snap = _snapshot(model)
    with pytest.raises(AdapterCheckpointError, match=r"adapter_model\.safetensors.*truncated or"):
        PeftModel.from_pretrained(model, saved)
    _assert_unchanged(model, snap)


def test_nan_in_checkpoint(saved) -> None:
    from safetensors.torch import load_file, save_file

    path = saved / "adapter_model.safetensors"
    tensors = load_file(path)
    key = sorted(tensors)[0]
    tensors[key][0] = float("nan")
    save_file(tensors, path)
    model = MLP()
    snap = _snapshot(model)
    with pytest.raises(AdapterCheckpointError, match="NaN"):
        PeftModel.from_pretrained(model, saved)
    _assert_unchanged(model, snap)
