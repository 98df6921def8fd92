"""Every SOrthConfig field does something (STYLE §3.6): changing it changes the adapter."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from sorth import GSOrthogonal, SOrthConfig
from sorth.tuner import SOrthLayer
from tests.tuner._models import MLP, mlp_input
from tests.tuner.test_transformers import IDS, tiny_llama

BASE = {"target_modules": ["lin0", "lin1"], "block_size": 4, "init_weights": False}


def _adapter(**kw):
    torch.manual_seed(0)
    model = get_peft_model(MLP(), SOrthConfig(**{**BASE, **kw})).eval()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if "sorth_" in n}
    torch.manual_seed(1)
    with torch.no_grad():
        return shapes, model(mlp_input())


@pytest.mark.parametrize(
    "change",
    [
        {"block_size": None, "nblocks": 2},
        {"structure": "oft"},
        {"structure": "butterfly"},
        {"structure": "monarch"},
        {"n_factors": 3},
        {"side": "output"},
        {"side": "both"},
        {"scale": False},
        {"orthogonal_map": "expm"},
        {
            "orthogonal_map": "cayley_neumann"
        },  # terms=1 would be the exact solve (Note [neumann fallback])
        {"storage": "full"},
        {"init_std": 0.3},
        {"target_modules": ["lin0"]},
        {"exclude_modules": ["lin1"]},
    ],
    ids=str,
)
def test_field_changes_adapter(change: dict) -> None:
    shapes, y = _adapter()
    shapes2, y2 = _adapter(**change)
    assert shapes2 != shapes or (y2 - y).abs().max() > 1e-5


def test_neumann_terms_change_output() -> None:
    # small generators, so that both series are used (not the exact-solve fallback)
    _, y3 = _adapter(orthogonal_map="cayley_neumann", neumann_terms=3, init_std=0.03)
    _, y8 = _adapter(orthogonal_map="cayley_neumann", neumann_terms=8, init_std=0.03)
    assert (y3 - y8).abs().max() > 1e-5


def test_layers_to_transform() -> None:
    cfg = SOrthConfig(
        target_modules=["q_proj"], block_size=8, layers_to_transform=[1], layers_pattern="layers"
    )
    model = get_peft_model(tiny_llama(), cfg)
    adapted = [n for n, m in model.named_modules() if isinstance(m, SOrthLayer)]
    assert adapted == ["base_model.model.model.layers.1.self_attn.q_proj"]
    assert model(input_ids=IDS).logits.shape[:2] == IDS.shape


def test_rotation_settings_reach_gsorthogonal() -> None:
    cfg = SOrthConfig(
        target_modules=["lin0"],
        nblocks=2,
        structure="butterfly",
        orthogonal_map="expm",
        storage="full",
        module_dropout=0.25,
        neumann_terms=7,
    )
    model = get_peft_model(MLP(), cfg)
    (q,) = [m for m in model.modules() if isinstance(m, GSOrthogonal)]
    assert (q.nblocks, q.structure, q.method, q.storage) == (2, "butterfly", "expm", "full")
    assert (q.block_dropout, q.neumann_terms) == (0.25, 7)
