"""Spectral constraints (normalize / hard cap / soft cap), the norm helpers, and Muon."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sorth.nn as snn
from sorth.nn.constraints import weight_matrix
from sorth.nn.muon import NS_MAX
from tests._tolerances import tol_vs_float64

F64 = torch.float64


def _sigma(W: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(W.detach().to(F64))


def _spread(m: int, n: int, top: float, seed: int = 0) -> torch.Tensor:
    """A random ``(m, n)`` matrix with singular values spread over ``(0, top]``."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    k = min(m, n)
    S = torch.linspace(top, top / 20, k, dtype=F64)
    return U[:, :k] @ torch.diag(S) @ V[:, :k].mT


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (12, 5)])
def test_projections_cap_the_spectral_norm(shape) -> None:
    W = _spread(*shape, top=3.0)
    s = _sigma(W)
    torch.testing.assert_close(_sigma(snn.hard_cap(W, 1.5)), s.clamp(max=1.5))
    torch.testing.assert_close(_sigma(snn.spectral_normalize(W, 1.5)), s * 1.5 / 3.0)
    assert snn.spectral_normalize(W, 5.0) is W  # already inside: untouched
    torch.testing.assert_close(snn.spectral_norm_bound(W), float(s[0]), rtol=1e-9, atol=0)
    assert snn.spectral_norm_bound(W) >= float(s[0])


@pytest.mark.parametrize("update", [0.0, 0.05, 0.2, 0.3])
def test_soft_cap_maps_everything_below_cap_plus_update_to_the_cap(update: float) -> None:
    """The coupling: any σ ≤ w + u lands at ≤ w (for u ≤ 0.306 w, see soft_cap_strength)."""
    w = 1.0
    a = snn.soft_cap_strength(w, update)
    W = _spread(10, 7, top=w + update)
    s = _sigma(snn.soft_cap(W, a))
    assert float(s.max()) <= w * (1 + 1e-9)
    if update:
        assert float(s.max()) == pytest.approx(w, rel=1e-6)  # the top value is mapped to w
    with pytest.raises(ValueError, match="max_norm > 0"):
        snn.soft_cap_strength(0.0, 0.1)


@pytest.mark.parametrize("constraint", ["normalize", "hard_cap", "soft_cap"])
def test_spectral_linear_projects_after_a_step(constraint: str) -> None:
    torch.manual_seed(0)
    layer = snn.SpectralLinear(12, 9, max_norm=0.8, constraint=constraint).double()
    assert float(_sigma(layer.weight).max()) == pytest.approx(0.8, rel=1e-9)
    with torch.no_grad():
        layer.weight.add_(0.05 * torch.randn_like(layer.weight) / 12**0.5)
    layer.project_(max_update=0.1)
    assert float(_sigma(layer.weight).max()) <= 0.8 * (1 + 1e-9)
    assert "max_norm=0.8" in repr(layer)
    with pytest.raises(ValueError, match="constraint='clip' is not supported"):
        snn.SpectralLinear(4, 4, constraint="clip")


def test_weight_matrix_of_gs_is_its_dense_product() -> None:
    torch.manual_seed(0)
    gs = snn.GSOrthogonalLinear(16, 24, bias=False, block_size=4)
    W = weight_matrix(gs)
    assert W.dtype == F64
    x = torch.randn(3, 16)
    torch.testing.assert_close(gs(x).double(), x.double() @ W.mT, **tol_vs_float64(torch.float32))
    # float32 factors: orthogonal to a few float32 ulps
    torch.testing.assert_close(
        _sigma(W), torch.ones(16, dtype=F64), **tol_vs_float64(torch.float32)
    )
    with pytest.raises(TypeError, match="weight_matrix supports"):
        weight_matrix(nn.Conv2d(2, 2, 3))


def test_newton_schulz_orthogonalises() -> None:
    """5 quintic steps move every singular value into [0.47, 1.21] ⊂ (0, NS_MAX]."""
    for m, n in [(16, 16), (8, 32), (40, 12)]:
        G = _spread(m, n, top=5.0, seed=m)
        s = _sigma(snn.newton_schulz(G.float()))
        assert float(s.min()) > 0.4
        assert float(s.max()) <= NS_MAX
    x = torch.logspace(-6, 0, 100_001, dtype=F64)  # the polynomial itself: sup ≤ NS_MAX
    for _ in range(5):
        x = 3.4445 * x - 4.7750 * x**3 + 2.0315 * x**5
    assert float(x.max()) <= NS_MAX
    with pytest.raises(ValueError, match="needs a matrix"):
        snn.newton_schulz(torch.ones(3))


def test_muon_trains_and_bounds_its_update() -> None:
    torch.manual_seed(0)
    A = torch.randn(64, 10)
    B = A @ torch.randn(10, 6)  # realisable: the loss can go to 0
    W = nn.Parameter(torch.zeros(10, 6))
    opt = snn.Muon([W], lr=0.1)
    losses = []
    for _ in range(100):
        before = W.detach().clone()
        loss = (A @ W - B).pow(2).mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step = float(_sigma(W.detach() - before).max())
        assert step <= opt.max_update_norm() * (1 + 1e-5)
    assert losses[-1] < 0.1 * losses[0]
    with pytest.raises(ValueError, match="Muon updates matrices only"):
        snn.Muon([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="lr > 0"):
        snn.Muon([W], lr=0.0)
