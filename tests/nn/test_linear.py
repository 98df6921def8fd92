"""Orthogonal linear layers: exact orthogonality of the dense weight, padding/truncation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import sorth.nn as snn
from sorth.errors import BlockSizeError, ShapeError
from tests._tolerances import orth_atol

CASES = [(64, 64), (32, 64), (64, 10)]


def _make(kind: str, fin: int, fout: int, **kw) -> torch.nn.Module:
    if kind == "gs":
        return snn.GSOrthogonalLinear(fin, fout, block_size=8, dtype=torch.float64, **kw)
    return snn.CayleyLinear(fin, fout, dtype=torch.float64, **kw)


@pytest.mark.parametrize("kind", ["gs", "cayley"])
@pytest.mark.parametrize(("fin", "fout"), CASES)
def test_weight_has_orthonormal_rows_or_columns(kind: str, fin: int, fout: int) -> None:
    layer = _make(kind, fin, fout)
    W = layer.dense_weight().detach()  # (out, in)
    gram = W.mT @ W if fin <= fout else W @ W.mT
    eye = torch.eye(min(fin, fout), dtype=torch.float64)
    assert (gram - eye).abs().max() <= orth_atol(torch.float64, max(fin, fout))
    assert (W - W[: min(fin, fout), : min(fin, fout)].new_zeros(())).abs().max() > 0.05  # not I


@pytest.mark.parametrize("kind", ["gs", "cayley"])
@pytest.mark.parametrize(("fin", "fout"), CASES)
def test_forward_is_dense_weight_plus_bias(kind: str, fin: int, fout: int) -> None:
    layer = _make(kind, fin, fout)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, fin, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().mT + layer.bias)


def test_gs_linear_uses_gs_orthogonal_and_counts_parameters() -> None:
    layer = snn.GSOrthogonalLinear(64, 64, bias=False, block_size=8)
    assert layer.orth.block_size == 8
    assert sum(p.numel() for p in layer.parameters()) == 64 * 7  # n(b-1), skew storage
    dense = snn.CayleyLinear(64, 64, bias=False)
    assert sum(p.numel() for p in dense.parameters()) == 64 * 63 // 2


def test_errors_and_save_round_trip(tmp_path) -> None:
    with pytest.raises(BlockSizeError, match="block_size=7 must divide n=64"):
        snn.GSOrthogonalLinear(64, 32, block_size=7)
    with pytest.raises(ShapeError, match=r"expects \(\.\.\., 64\)"):
        snn.GSOrthogonalLinear(64, 32)(torch.randn(2, 63))
    a = snn.GSOrthogonalLinear(64, 10, generator=torch.Generator().manual_seed(0))
    save_file(a.state_dict(), tmp_path / "lin.safetensors")
    b = snn.GSOrthogonalLinear(64, 10, generator=torch.Generator().manual_seed(1))
    b.load_state_dict(load_file(tmp_path / "lin.safetensors"))
    x = torch.randn(3, 64)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_lipschitz_bound_of_gs_linear_is_one() -> None:
    layer = snn.GSOrthogonalLinear(64, 10, dtype=torch.float64)
    assert 1.0 <= snn.lipschitz_bound(layer, (64,)) <= 1.0 + 1e-9
    assert snn.lipschitz_estimate(layer, (64,), n_iter=100) == pytest.approx(1.0, abs=1e-9)
