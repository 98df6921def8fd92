"""The custom autograd functions of the hot path against their dense references (float64).

``sorth.kernels.torch_gs._GSApply`` (Note [GS kernel]) and ``sorth.orthogonal._Cayley``: outputs
and *all* gradients, one shared upstream gradient, over chains that exercise every shuffle branch
(``P_(q,n)`` with ``q`` equal to / dividing / multiple of / unrelated to the block counts and
sizes, random permutations, identities, rectangular blocks).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sorth
from sorth import GSMatrix
from sorth.kernels import torch_gs
from sorth.kernels.plan import shuffle_plan
from tests._tolerances import orth_atol, tol

F64 = torch.float64


@st.composite
def shuffled_chains(draw, max_factors: int = 3):
    """Chains whose permutations are mostly ``P_(q,n)``, ``q`` tied to the neighbouring blocks."""
    m = draw(st.integers(1, max_factors))
    n = draw(st.sampled_from([4, 6, 8, 12, 16, 24, 32]))
    factors, sizes = [], [n]
    for _ in range(m):
        k = draw(st.sampled_from(sorth.errors.divisors(n)))
        b_out = draw(st.integers(1, 4))
        factors.append(torch.randn(k, b_out, n // k, dtype=F64))
        n = k * b_out
        sizes.append(n)
    perms = []
    for i, s in enumerate(sizes):
        nxt = factors[i].shape[0] if i < m else None  # blocks of the next factor
        prev = factors[i - 1].shape[1] if i > 0 else None  # block size of the previous one
        choices = ["none", "random", "any_gs"]
        choices += ["next_k"] if nxt else []
        choices += ["prev_b"] if prev else []
        kind = draw(st.sampled_from(choices))
        if kind == "none":
            perms.append(None)
        elif kind == "random":
            seed = draw(st.integers(0, 2**16))
            perms.append(torch.randperm(s, generator=torch.Generator().manual_seed(seed)))
        elif kind == "any_gs":
            perms.append(sorth.gs_permutation(draw(st.sampled_from(sorth.errors.divisors(s))), s))
        else:
            perms.append(sorth.gs_permutation(nxt if kind == "next_k" else prev, s))
    return factors, perms


def _check_against_reference(factors, perms, x, need_x=True, need_f=True) -> None:
    fa = [B.clone().requires_grad_(need_f) for B in factors]
    fb = [B.clone().requires_grad_(need_f) for B in factors]
    xa, xb = x.clone().requires_grad_(need_x), x.clone().requires_grad_(need_x)
    ya = sorth.gs_apply(xa, fa, perms)
    yb = sorth.gs_apply_reference(xb, fb, perms)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)  # one shared upstream gradient
    ya.backward(g)
    yb.backward(g)
    if need_x:
        torch.testing.assert_close(xa.grad, xb.grad)
    for a, b in zip(fa, fb, strict=True):
        if need_f:
            torch.testing.assert_close(a.grad, b.grad)
        else:
            assert a.grad is None


@given(shuffled_chains(), st.sampled_from([(5,), (2, 3), (1,)]))
def test_gs_apply_outputs_and_gradients_match_dense(chain, lead) -> None:
    factors, perms = chain
    x = torch.randn(*lead, factors[0].shape[0] * factors[0].shape[2], dtype=F64)
    _check_against_reference(factors, perms, x)


@given(shuffled_chains(), st.integers(1, 4), st.integers(1, 12))
def test_gs_apply_in_token_chunks(chain, rows_per_chunk, tokens) -> None:
    """Every shuffle branch with the tokens split into chunks (last one partial): the flat
    outputs written chunk by chunk and the factor gradients summed over chunks."""
    factors, perms = chain
    x = torch.randn(tokens, factors[0].shape[0] * factors[0].shape[2], dtype=F64)
    chunking = pytest.MonkeyPatch()
    chunking.setattr(torch_gs, "_chunk_rows", lambda M, n, device: rows_per_chunk)
    try:
        _check_against_reference(factors, perms, x)
    finally:
        chunking.undo()


@pytest.mark.parametrize("structure", ["gs", "butterfly", "oft"])
def test_default_chunks_at_real_size(structure: str) -> None:
    """d = 1024 and 300 tokens: three CPU chunks of 128 rows, against the dense reference."""
    q = sorth.GSOrthogonal(1024, block_size=32, structure=structure, dtype=F64)
    q.reset_parameters("random", std=0.3, generator=torch.Generator().manual_seed(0))
    assert torch_gs._chunk_rows(300, 1024, torch.device("cpu")) == 128
    with torch.no_grad():
        A = q.matrix()
    _check_against_reference(list(A.factors), A.perms, torch.randn(300, 1024, dtype=F64))


@given(shuffled_chains(max_factors=2), st.booleans())
def test_gs_apply_partial_gradients(chain, x_only) -> None:
    factors, perms = chain
    x = torch.randn(3, factors[0].shape[0] * factors[0].shape[2], dtype=F64)
    _check_against_reference(factors, perms, x, need_x=x_only, need_f=not x_only)


@pytest.mark.parametrize(
    "make",
    [
        lambda B: GSMatrix.gsoft(B[0], B[1]),  # r = b
        lambda B: GSMatrix.gsoft(B[0][:, :2, :2], B[1][:, :2, :2]),  # r > b
        lambda B: GSMatrix.shuffled([B[0], B[1].reshape(2, 4, 8)]),  # rectangular
        lambda B: GSMatrix.butterfly([B[0], B[1]]),
        lambda B: GSMatrix.monarch(B[1], B[0]),
    ],
)
def test_gradcheck_and_gradgradcheck(make) -> None:
    B = [torch.randn(4, 4, 4, dtype=F64, requires_grad=True) for _ in range(2)]
    n_in = make(B).shape[1]
    x = torch.randn(2, n_in, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *B: make(B) @ x, (x, *B))
    assert torch.autograd.gradgradcheck(lambda x, *B: make(B) @ x, (x, *B))


def test_non_contiguous_and_empty_inputs() -> None:
    L, R = torch.randn(2, 4, 8, 8, dtype=F64).unbind(0)
    A = GSMatrix.gsoft(L, R)
    D = A.to_dense()
    x = torch.randn(3, 32, 5, dtype=F64).movedim(1, -1)  # (3, 5, 32), not contiguous
    torch.testing.assert_close(A @ x, x @ D.T)
    torch.testing.assert_close(A @ x[..., ::1][:, ::2], x[:, ::2] @ D.T)
    assert (A @ torch.randn(0, 32, dtype=F64)).shape == (0, 32)
    assert (A @ torch.randn(32, dtype=F64)).shape == (32,)


def test_autocast_casts_once_and_gradients_reach_float32_factors() -> None:
    L, R = (torch.randn(4, 8, 8) / 3).requires_grad_(), (torch.randn(4, 8, 8) / 3).requires_grad_()
    x = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = GSMatrix.gsoft(L, R) @ x
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert L.grad.dtype == torch.float32
    assert R.grad.dtype == torch.float32
    ref = x.double() @ GSMatrix.gsoft(L.detach().double(), R.detach().double()).to_dense().T
    torch.testing.assert_close(y.double(), ref, rtol=5e-2, atol=5e-2)


def test_shuffle_recognition() -> None:
    for k, n in [(3, 12), (4, 32), (32, 1024), (12, 12)]:
        assert sorth.permutations.gs_shuffle_groups(sorth.gs_permutation(k, n)) == (
            1 if k == n else k
        )
    assert sorth.permutations.gs_shuffle_groups(torch.arange(10)) == 1
    assert sorth.permutations.gs_shuffle_groups(sorth.paired_permutation(2, 8)) is None
    assert sorth.permutations.gs_shuffle_groups(torch.tensor([1, 0, 2])) is None
    P = sorth.gs_permutation(4, 32)
    (fwd, inv), (none, _) = shuffle_plan([P, None])
    assert (fwd, inv, none) == (4, 8, None)
    rnd = torch.randperm(6)
    ((idx, idx_inv),) = shuffle_plan([rnd])
    assert torch.equal(idx, rnd)
    assert torch.equal(rnd[idx_inv], torch.arange(6))


def test_gsorthogonal_plan_is_static_and_follows_its_buffers() -> None:
    # GSOFT's P = P_(r, n) and Pᵀ are reshapes, never gathers
    assert sorth.GSOrthogonal(64, block_size=8)._shuffle_plan() == ((None, None), (8, 8), (8, 8))
    q = sorth.GSOrthogonal(16, block_size=4, structure="butterfly")
    q.reset_parameters("random", std=0.3)
    i = q._plan_kinds.index("index")
    q._buffers[f"perm_{i}"] = getattr(q, f"perm_{i}").clone()  # what .to(device) does
    assert q._shuffle_plan()[i][0] is getattr(q, f"perm_{i}")
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(q(x), x @ q.dense().T)


# ---------------------------------------------------------------------------- Cayley
@given(
    st.integers(1, 8),
    st.integers(1, 4),
    st.floats(0.01, 3.0),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_cayley_outputs_and_gradients_match_solve(b, k, std, skew, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(k, b, b, dtype=F64, generator=gen) * std
    K = sorth.skew(A) if skew else A * 0.3 / max(1.0, std * b)  # general K: keep I − K regular
    eye = torch.eye(b, dtype=F64)
    Ka, Kb = K.clone().requires_grad_(), K.clone().requires_grad_()
    Qa = sorth.cayley(Ka)
    Qb = torch.linalg.solve(eye - Kb, eye + Kb, left=False)  # autograd's own solve backward
    torch.testing.assert_close(Qa, Qb)
    G = torch.randn(k, b, b, dtype=F64, generator=gen)
    Qa.backward(G)
    Qb.backward(G)
    torch.testing.assert_close(Ka.grad, Kb.grad)
    if skew:
        assert sorth.orthogonality_error(Qa.detach()) <= orth_atol(F64, b)


def test_cayley_gradcheck_and_gradgradcheck() -> None:
    K = (torch.randn(3, 5, 5, dtype=F64) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(sorth.cayley, (K,))
    assert torch.autograd.gradgradcheck(sorth.cayley, (K,))
    A = torch.randn(2, 4, 4, dtype=F64, requires_grad=True)  # through skew(): Q stays orthogonal
    assert torch.autograd.gradcheck(lambda A: sorth.cayley(sorth.skew(A)), (A,))


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["gs", "butterfly"])
def test_torch_compile_fullgraph(structure: str) -> None:
    q = sorth.GSOrthogonal(64, block_size=8, structure=structure)
    q.reset_parameters("random", std=0.2)
    x = torch.randn(4, 64, requires_grad=True)
    y = torch.compile(q, backend="aot_eager", fullgraph=True)(x)
    y.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(y, x @ q.dense().T, **tol(torch.float32))
    assert all(p.grad is not None for p in q.parameters())
