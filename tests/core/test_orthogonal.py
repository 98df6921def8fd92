"""Orthogonal maps of skew blocks: Cayley (solve), expm, Cayley–Neumann and its error bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sorth
from sorth.errors import MethodError, ShapeError
from sorth.orthogonal import NEUMANN_MAX_ERROR
from tests._tolerances import orth_atol, tol_vs_float64

F64 = torch.float64


@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**16))
def test_pack_unpack_round_trip(b: int, k: int, seed: int) -> None:
    A = torch.randn(k, b, b, generator=torch.Generator().manual_seed(seed), dtype=F64)
    K = sorth.skew(A)
    torch.testing.assert_close(K, -K.mT)
    p = sorth.pack_skew(A)
    assert p.shape == (k, b * (b - 1) // 2)
    torch.testing.assert_close(sorth.unpack_skew(p, b), K)


def test_cayley_matches_textbook_formula() -> None:
    K = sorth.skew(torch.randn(5, 7, 7, dtype=F64))
    eye = torch.eye(7, dtype=F64)
    torch.testing.assert_close(sorth.cayley(K), (eye + K) @ torch.linalg.inv(eye - K))


def test_expm_matches_series() -> None:
    K = sorth.skew(torch.randn(3, 6, 6, dtype=F64)) * 0.5
    series, term = torch.eye(6, dtype=F64).expand(3, 6, 6).clone(), torch.eye(6, dtype=F64)
    for j in range(1, 30):
        term = term @ K / j
        series = series + term
    torch.testing.assert_close(sorth.expm(K), series)


@pytest.mark.parametrize("method", ["cayley", "expm", "cayley_neumann"])
def test_identity_at_zero(method: str) -> None:
    Q = sorth.orthogonal_blocks(torch.zeros(4, 8, 8), method)
    torch.testing.assert_close(Q, torch.eye(8).expand(4, 8, 8))


@pytest.mark.parametrize("method", ["cayley", "expm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_exact_methods_are_orthogonal(method: str, dtype: torch.dtype) -> None:
    K = sorth.skew(torch.randn(16, 32, 32, dtype=F64) * 3).to(dtype)
    Q = sorth.orthogonal_blocks(K, method)
    assert Q.dtype == dtype
    # computed in float32/64, rounded once to `dtype`: error of one rounding of O(1) entries
    eps_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    computed = sorth.orthogonal_blocks(K.to(eps_dtype), method)
    assert sorth.orthogonality_error(computed) <= orth_atol(eps_dtype, 32)
    ref = sorth.orthogonal_blocks(K.to(F64), method)
    torch.testing.assert_close(Q.to(F64), ref, **tol_vs_float64(dtype))


def test_autocast_runs_solve_in_float32() -> None:
    K = sorth.skew(torch.randn(4, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Q = sorth.orthogonal_blocks(K, "cayley")
    assert Q.dtype == torch.float32
    assert sorth.orthogonality_error(Q) <= orth_atol(torch.float32, 16)


@pytest.mark.parametrize("std", [0.01, 0.03, 0.1, 0.3])
@pytest.mark.parametrize("terms", [2, 5, 10])
def test_neumann_error_within_bound(std: float, terms: int) -> None:
    K = sorth.skew(torch.randn(8, 32, 32, dtype=F64) * std)
    rho = torch.linalg.matrix_norm(K, 2).amax().item()
    Q = sorth.cayley_neumann(K, terms)
    err = torch.linalg.matrix_norm(Q.mT @ Q - torch.eye(32, dtype=F64), 2).amax().item()
    assert err <= sorth.neumann_error_bound(rho, terms) * (1 + 1e-9) + 1e-14
    # and its distance to the exact Cayley matrix is at most rho**terms
    dist = torch.linalg.matrix_norm(Q - sorth.cayley(K), 2).amax().item()
    assert dist <= rho**terms * (1 + 1e-9) + 1e-14


def test_neumann_series_drifts_where_exact_cayley_does_not() -> None:
    # PEFT's default (the plain Cayley–Neumann series) is far from orthogonal at std 0.3, b = 32
    K = sorth.skew(torch.randn(4, 32, 32) * 0.3)
    assert sorth.orthogonality_error(sorth.cayley_neumann(K, 5, max_error=None)) > 1.0
    assert sorth.orthogonality_error(sorth.orthogonal_blocks(K, "cayley")) < 1e-5


@pytest.mark.parametrize("std", [0.001, 0.01, 0.05, 0.3, 3.0])
def test_neumann_falls_back_to_the_exact_solve_where_its_bound_is_useless(std: float) -> None:
    # Note [neumann fallback]: each block is the series where its certified bound is <= 1e-2,
    # else the exact Cayley solve; so every block is within the bound of orthogonal.
    torch.manual_seed(0)
    K = sorth.skew(torch.randn(6, 16, 16, dtype=F64) * std)
    K[0] *= 1e-3  # one small block among large ones: it keeps the series
    Q = sorth.orthogonal_blocks(K, "cayley_neumann")
    series, exact = sorth.cayley_neumann(K, 5, max_error=None), sorth.cayley(K)
    rho_hat = torch.linalg.matrix_norm(K) / 2**0.5
    for i in range(K.shape[0]):
        bound = sorth.neumann_error_bound(float(rho_hat[i]), 5)
        want = series[i] if bound <= NEUMANN_MAX_ERROR else exact[i]
        torch.testing.assert_close(Q[i], want, rtol=0, atol=0)
        err = torch.linalg.matrix_norm(Q[i].mT @ Q[i] - torch.eye(16, dtype=F64), 2)
        assert err <= NEUMANN_MAX_ERROR
    torch.testing.assert_close(Q[0], series[0], rtol=0, atol=0)
    if std >= 0.05:  # large generators: the series is useless, the solve is used
        torch.testing.assert_close(Q[1:], exact[1:], rtol=0, atol=0)


def test_neumann_fallback_has_gradients_and_survives_high_lr_steps() -> None:
    # PEFT's test_only_params_are_updated: SGD lr 0.5, 3 steps. The plain series diverges to
    # non-finite parameters; with the fallback the blocks stay orthogonal and finite.
    torch.manual_seed(0)
    x, target = torch.randn(32, 32), torch.randn(32, 32)

    def train(max_error: float | None) -> torch.Tensor:
        p = torch.nn.Parameter(torch.randn(4, 8 * 7 // 2) * 0.5)
        opt = torch.optim.SGD([p], lr=0.5)
        for _ in range(3):
            Q = sorth.cayley_neumann(sorth.unpack_skew(p, 8), 5, max_error=max_error)
            loss = ((torch.block_diag(*Q) @ x - target) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return p.detach()

    assert torch.isfinite(train(NEUMANN_MAX_ERROR)).all()
    assert not torch.isfinite(train(None)).all()


def test_errors() -> None:
    with pytest.raises(
        MethodError, match=r"orthogonal_map='qr' is not supported; choose one of \['cayley'"
    ):
        sorth.orthogonal_blocks(torch.zeros(2, 3, 3), "qr")
    with pytest.raises(ShapeError, match=r"square blocks .* got shape \(2, 3, 4\)"):
        sorth.skew(torch.zeros(2, 3, 4))
    with pytest.raises(ShapeError, match="expected 3 packed entries for b=3, got 4"):
        sorth.unpack_skew(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="neumann_terms=0 must be a positive integer"):
        sorth.cayley_neumann(torch.zeros(3, 3), 0)
