"""The softmax-attention bounds of sorth.nn.softmax_bounds against exact values (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sorth.nn as snn

F64 = torch.float64


def _exact_norm(p: torch.Tensor) -> torch.Tensor:
    J = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    return torch.linalg.eigvalsh(J)[..., -1]  # J is PSD


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 24),
    temperature=st.floats(0.01, 30.0),
    zeros=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_softmax_jacobian_bound_is_an_upper_bound(n, temperature, zeros, seed) -> None:
    """``p₁(1 − p₁ + p₂) ≥ ‖diag(p) − ppᵀ‖₂`` (proof: Note [softmax Jacobian]), incl. masked 0s."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, n, generator=gen, dtype=F64) * temperature
    logits[:, : min(zeros, n - 1)] = -math.inf  # masked entries, as in causal attention
    p = logits.softmax(-1)
    bound = snn.softmax_jacobian_bound(p)
    exact = _exact_norm(p)
    assert (exact <= bound * (1 + 1e-12) + 1e-15).all()
    assert (bound <= 0.5 + 1e-15).all()  # never worse than the classical 1/2


def test_softmax_jacobian_bound_is_tight_where_the_proof_says() -> None:
    two = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.99, 0.01]], dtype=F64)
    uniform = torch.full((1, 7), 1 / 7, dtype=F64)
    plateau = torch.tensor([[0.4, 0.15, 0.15, 0.15, 0.15, 0.0]], dtype=F64)
    for p in (two, uniform, plateau):
        torch.testing.assert_close(snn.softmax_jacobian_bound(p), _exact_norm(p))
    torch.testing.assert_close(snn.softmax_jacobian_bound(two[:1]), torch.tensor([0.42], dtype=F64))
    # and strictly loose elsewhere (the other entries neither 0 nor p₂)
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=F64)
    assert float(_exact_norm(p)) < float(snn.softmax_jacobian_bound(p)) - 1e-3


def test_softmax_jacobian_bound_has_gradients_and_no_cancellation() -> None:
    z = torch.tensor([[40.0, 0.0, -1.0]], dtype=F64, requires_grad=True)
    b = snn.softmax_jacobian_bound(z.softmax(-1))
    b.sum().backward()
    assert z.grad is not None
    assert torch.isfinite(z.grad).all()
    p = z.detach().softmax(-1)
    assert float(b.detach()) >= float(_exact_norm(p)) > 0  # 1 − p₁ ≈ 4e-18 is not lost to rounding


@pytest.mark.parametrize("x", [0.0, 1e-9, 0.3, 1.0, math.e, 100.0, 1e6])
def test_lambert_w_is_the_root_rounded_up(x: float) -> None:
    w = snn.lambert_w(x)
    assert w * math.exp(w) >= x
    assert w * math.exp(w) <= x * (1 + 1e-9) + 1e-300


@pytest.mark.parametrize("n", [1, 3, 20, 255])
def test_l2_attention_spread_lemma(n: int) -> None:
    """``Σ tⱼe^{−tⱼ} / (1 + Σ e^{−tⱼ}) ≤ W₀(n/e)``, attained at ``tⱼ = 1 + W₀(n/e)`` (Note [L2
    attention spread]): random, then optimised, points never exceed it."""
    w = snn.lambert_w(n / math.e)

    def spread(t: torch.Tensor) -> torch.Tensor:
        e = torch.exp(-t)
        return (t * e).sum(-1) / (1 + e.sum(-1))

    t = torch.rand(4096, n, dtype=F64) * 8
    assert float(spread(t).max()) <= w
    s = torch.randn(256, n, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.05)
    for _ in range(300):
        loss = -spread(s.pow(2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    best = float(spread(s.detach().pow(2)).max())
    assert best <= w
    assert best >= w * (1 - 1e-3)  # the lemma is tight
    torch.testing.assert_close(
        spread(torch.full((1, n), 1 + w, dtype=F64)), torch.tensor([w], dtype=F64)
    )


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0, 8.0])
def test_causal_column_sum_bound(beta: float) -> None:
    T = 32
    c = snn.causal_column_sum_bound(beta, T)
    logits = (torch.rand(512, T, T, dtype=F64) * 2 - 1) * beta
    logits[:, :, 0] = beta  # push mass to the first column
    logits[:, :, 1:] = (
        torch.minimum(logits[:, :, 1:], torch.tensor(-beta, dtype=F64)) if beta else 0
    )
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    P = logits.masked_fill(~mask, -math.inf).softmax(-1)
    cols = P.sum(-2).amax(-1)
    assert float(cols.max()) <= c <= T
    assert float(cols.max()) >= c * (1 - 1e-9)  # attained: column 1 at β, the rest at −β
    assert float(torch.linalg.matrix_norm(P, ord=2).max()) <= math.sqrt(c)
