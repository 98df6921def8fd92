"""sorth on ``nn.MultiheadAttention.out_proj`` and a ``TransformerEncoderLayer``'s linears (Note
[weight read by the parent] in sorth/tuner/weight_read.py).

MHA reads ``out_proj.weight`` instead of calling ``out_proj``: an adapter acting in its forward
had no effect and got no gradient (also when picked by ``"all-linear"``), and its merged model
differed from the unmerged one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from sorth import SOrthConfig, SOrthValueError
from sorth.tuner import UnsupportedLayerError
from sorth.tuner.weight_read import MultiheadOutProj, WeightReadLinear
from tests._tolerances import tol

F32 = tol(torch.float32)
TARGETS = [["self_attn.out_proj"], "all-linear"]


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _model(targets) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    base = Encoder()
    cfg = SOrthConfig(target_modules=targets, block_size=4, init_weights=False)
    return base, get_peft_model(copy.deepcopy(base), cfg)


def _x() -> torch.Tensor:
    return torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("targets", TARGETS, ids=["out_proj", "all-linear"])
def test_out_proj_adapter_acts_and_learns(targets) -> None:
    base, model = _model(targets)
    out_proj = model.base_model.model.layer.self_attn.out_proj
    assert isinstance(out_proj, MultiheadOutProj)
    if targets == "all-linear":
        assert isinstance(model.base_model.model.layer.linear1, WeightReadLinear)
    x = _x()
    model.train()
    y = model(x)
    # the reference: the same encoder with out_proj's weight replaced by the merged weight
    ref = copy.deepcopy(base)
    ref.layer.self_attn.out_proj.weight.data = out_proj.get_merged_weight("default")
    if targets == "all-linear":
        for name in ("linear1", "linear2"):
            getattr(ref.layer, name).weight.data = getattr(
                model.base_model.model.layer, name
            ).get_merged_weight("default")
    torch.testing.assert_close(y, ref(x), **F32)
    with torch.no_grad(), model.disable_adapter():
        assert (model(x) - y).abs().max() > 1e-2  # the adapter has an effect
        torch.testing.assert_close(model(x), base(x), **F32)  # (frozen: another SDPA kernel)
    y.square().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "out_proj.sorth_" in n}
    assert grads
    assert all(g is not None and g.abs().max() > 0 for g in grads.values()), grads


@pytest.mark.parametrize("targets", TARGETS, ids=["out_proj", "all-linear"])
def test_out_proj_merge_eval_fast_path_and_save(targets, tmp_path: Path) -> None:
    base, model = _model(targets)
    x = _x()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(2):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    y = model(x).detach()
    model.eval()  # MHA's and TransformerEncoderLayer's fused inference paths read the weight
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, **F32)
        model.merge_adapter()
        torch.testing.assert_close(model(x), y, **F32)
        model.unmerge_adapter()
        torch.testing.assert_close(model(x), y, **F32)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, **F32)
    merged = loaded.merge_and_unload()
    plain = nn.modules.linear.NonDynamicallyQuantizableLinear
    assert type(merged.layer.self_attn.out_proj) is plain
    with torch.no_grad():
        torch.testing.assert_close(merged(x), y, **F32)


def test_out_proj_mixed_batch_refused() -> None:
    _, model = _model(["self_attn.out_proj"])
    model.eval()
    with pytest.raises(SOrthValueError, match="out_proj of a MultiheadAttention"):
        model(_x(), adapter_names=["default", "__base__"])


def test_targeting_the_attention_module_names_out_proj() -> None:
    torch.manual_seed(0)
    with pytest.raises(UnsupportedLayerError, match=r"Target its layer\.self_attn\.out_proj"):
        get_peft_model(Encoder(), SOrthConfig(target_modules=["self_attn"], block_size=4))
