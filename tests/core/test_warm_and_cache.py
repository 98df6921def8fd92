"""Note [warm Cayley] (Newton–Schulz from the previous Q, verified, LU fallback) and Note
[factor cache] (gradient-free calls reuse the factors while the parameters are unchanged)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sorth
import sorth.orthogonal as orthogonal
from sorth.orthogonal import _refine_inverse
from tests._tolerances import orth_atol, tol_vs_float64

F64 = torch.float64


def _skew(k: int, b: int, std: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sorth.skew(torch.randn(k, b, b, generator=g, dtype=dtype) * std)


def _count_solves(monkeypatch) -> list[int]:
    calls = [0]
    solve = torch.linalg.solve_ex

    def counting(*a, **kw):
        calls[0] += 1
        return solve(*a, **kw)

    monkeypatch.setattr(orthogonal.torch.linalg, "solve_ex", counting)
    return calls


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([2, 8, 32]),
    st.floats(0.0, 1.0),
    st.floats(1e-5, 1e-2),
    st.integers(0, 2**16),
)
def test_warm_start_equals_solve(b: int, std: float, step: float, seed: int) -> None:
    """A guess from slightly different generators gives the solve's Q, exactly orthogonal."""
    K0 = _skew(4, b, std, seed)
    K1 = K0 + _skew(4, b, step, seed + 1)
    warm = sorth.cayley(K1, guess=sorth.cayley(K0))
    ref = sorth.cayley(K1.to(F64))
    torch.testing.assert_close(warm.to(F64), ref, **tol_vs_float64(torch.float32))
    assert sorth.orthogonality_error(warm) < orth_atol(torch.float32, b)


def test_warm_start_replaces_the_solve(monkeypatch) -> None:
    K0 = _skew(64, 32, 0.1, 0)
    Q0 = sorth.cayley(K0)
    calls = _count_solves(monkeypatch)
    sorth.cayley(K0 + _skew(64, 32, 1e-3, 1), guess=Q0)
    assert calls[0] == 0


@pytest.mark.parametrize("bad", ["far", "nan", "shape"])
def test_bad_guess_falls_back_to_the_solve(monkeypatch, bad: str) -> None:
    K = _skew(8, 16, 0.5, 0)
    guess = {
        "far": sorth.cayley(_skew(8, 16, 3.0, 1)),
        "nan": torch.full((8, 16, 16), float("nan")),
        "shape": sorth.cayley(_skew(4, 16, 0.5, 0)),
    }[bad]
    calls = _count_solves(monkeypatch)
    Q = sorth.cayley(K, guess=guess)
    assert calls[0] == 1
    torch.testing.assert_close(Q, sorth.cayley(K), rtol=0, atol=0)


def test_refinement_reports_divergence() -> None:
    M = torch.eye(4).expand(2, 4, 4) - _skew(2, 4, 1.0, 0)
    assert _refine_inverse(M, torch.zeros(2, 4, 4) + 5.0) is None
    X = _refine_inverse(M, torch.linalg.inv(M) + 1e-4)
    torch.testing.assert_close(X, torch.linalg.inv(M), rtol=1e-5, atol=1e-6)


def test_warm_start_keeps_gradients() -> None:
    K = _skew(6, 8, 0.3, 0, F64).requires_grad_()
    guess = sorth.cayley(K.detach() + _skew(6, 8, 1e-4, 1, F64))
    G = torch.randn(6, 8, 8, dtype=F64)
    (g_warm,) = torch.autograd.grad((sorth.cayley(K, guess=guess) * G).sum(), K)
    (g_ref,) = torch.autograd.grad((sorth.cayley(K) * G).sum(), K)
    torch.testing.assert_close(g_warm, g_ref)


def test_training_uses_warm_start_and_stays_orthogonal(monkeypatch) -> None:
    """Adam steps on a GSOrthogonal: after the first step no solve runs, the factors equal a
    fresh solve of the current parameters and stay orthogonal to n·eps."""
    torch.manual_seed(0)
    q = sorth.GSOrthogonal(256, block_size=32)
    q.reset_parameters("random", std=0.2)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    x = torch.randn(16, 256)
    calls = _count_solves(monkeypatch)
    for _ in range(6):
        q(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert calls[0] == 1  # only the first call solves
    fresh = sorth.GSOrthogonal(256, block_size=32)
    fresh.load_state_dict(q.state_dict())
    for a, b in zip(q.orthogonal_factors(), fresh.orthogonal_factors(), strict=True):
        torch.testing.assert_close(a, b, **tol_vs_float64(torch.float32))
    assert float(q.matrix().orthogonality_error()) < orth_atol(torch.float32, 256)


# ------------------------------------------------------------------------ factor cache
def _q(method: str = "cayley") -> sorth.GSOrthogonal:
    q = sorth.GSOrthogonal(64, block_size=8, orthogonal_map=method)
    q.reset_parameters("random", std=0.3, generator=torch.Generator().manual_seed(0))
    return q.eval()


def _computes(monkeypatch, q: sorth.GSOrthogonal) -> list[int]:
    calls = [0]
    compute = q._compute_factors

    def counting():
        calls[0] += 1
        return compute()

    monkeypatch.setattr(q, "_compute_factors", counting)
    return calls


def test_cache_reused_without_grad(monkeypatch) -> None:
    q, x = _q(), torch.randn(3, 64)
    calls = _computes(monkeypatch, q)
    with torch.no_grad():
        y1, y2 = q(x), q(x)
    with torch.inference_mode():
        y3 = q(x)
    assert calls[0] == 1
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(y1, y3, rtol=0, atol=0)


def test_clear_cache_forces_a_recompute(monkeypatch) -> None:
    q, x = _q(), torch.randn(3, 64)
    calls = _computes(monkeypatch, q)
    with torch.no_grad():
        q(x)
        q.clear_cache()
        q(x)
        q(x)
    assert calls[0] == 2


def test_no_cache_with_grad(monkeypatch) -> None:
    q, x = _q(), torch.randn(3, 64)
    calls = _computes(monkeypatch, q)
    q(x)
    q(x)
    assert calls[0] == 2


@pytest.mark.parametrize(
    "update",
    ["data_write", "data_nan", "optimizer", "load_state_dict", "dtype", "orthogonal_map"],
)
def test_cache_sees_every_update(update: str) -> None:
    q, x = _q(), torch.randn(3, 64, dtype=F64)
    with torch.no_grad():
        before = q(x.float())
    p = q.params[0]
    if update == "data_write":
        p.data[0, 0] += 0.5  # bypasses the version counter
    elif update == "data_nan":
        p.data[0, 0] = float("nan")
    elif update == "optimizer":
        p.grad = torch.ones_like(p)
        torch.optim.SGD(q.parameters(), lr=0.1).step()
    elif update == "load_state_dict":
        other = _q()
        other.reset_parameters("random", std=0.3, generator=torch.Generator().manual_seed(1))
        q.load_state_dict(other.state_dict())
    elif update == "dtype":
        q.double()
    else:
        q.orthogonal_map = "expm"
    with torch.no_grad():
        after = q(x.to(q.params[0].dtype))
        fresh = q.matrix().to_dense()
    q.clear_cache()
    assert not torch.allclose(after.double(), before.double())
    torch.testing.assert_close(after, x.to(after.dtype) @ fresh.T.to(after.dtype), equal_nan=True)


def test_cache_not_used_for_block_dropout(monkeypatch) -> None:
    q = sorth.GSOrthogonal(64, block_size=8, block_dropout=0.5).train()
    calls = _computes(monkeypatch, q)
    with torch.no_grad():
        q(torch.randn(2, 64))
        q(torch.randn(2, 64))
    assert calls[0] == 2


def test_eval_does_not_reuse_factors_cached_in_training_mode() -> None:
    """Regression: a gradient-free call in training mode cached warm-started factors, and the next
    eval-mode call reused them (1.8e-6 away from a fresh solve). Eval must equal a fresh module
    holding the same parameters, bit for bit."""
    torch.manual_seed(0)
    q = sorth.GSOrthogonal(256, block_size=32)
    q.reset_parameters("random", std=0.2)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    x = torch.randn(4, 256)
    for _ in range(3):  # warm starts from the second step on
        q(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        q(x)  # training mode, gradients off: caches warm-started factors
    fresh = sorth.GSOrthogonal(256, block_size=32)
    fresh.load_state_dict(q.state_dict())
    q.eval()
    fresh.eval()
    with torch.no_grad():
        got, ref = q(x), fresh(x)
        for a, b in zip(q.orthogonal_factors(), fresh.orthogonal_factors(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
