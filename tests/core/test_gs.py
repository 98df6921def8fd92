"""GSMatrix: fast path vs dense reference, transpose, composition, theorems, projection."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sorth
from sorth import GSMatrix
from sorth.errors import BlockSizeError, PermutationError, ShapeError
from tests._tolerances import orth_atol, tol, tol_vs_float64

F64 = torch.float64


def sigma_matrix(k: int, n: int) -> torch.Tensor:
    """P_(k,n) written from the paper's σ, independently of sorth.permutations."""
    P = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        P[(i % k) * (n // k) + i // k, i] = 1
    return P


@st.composite
def gs_chains(draw, max_factors: int = 3, max_dim: int = 48):
    """Random factor shapes that chain (rectangular blocks, any block counts) + random perms."""
    m = draw(st.integers(1, max_factors))
    k = draw(st.integers(1, 4))
    b_in = draw(st.integers(1, 4))
    n = k * b_in
    factors, sizes = [], [n]
    for i in range(m):
        if i > 0:
            divs = [d for d in sorth.errors.divisors(n) if d <= 8]
            k = draw(st.sampled_from(divs))
            b_in = n // k
        b_out = draw(st.integers(1, max(1, min(5, max_dim // k))))
        factors.append(torch.randn(k, b_out, b_in, dtype=F64))
        n = k * b_out
        sizes.append(n)
    perms = []
    for s in sizes:
        kind = draw(st.sampled_from(["none", "random", "gs"]))
        if kind == "none":
            perms.append(None)
        elif kind == "random":
            seed = draw(st.integers(0, 2**16))
            perms.append(torch.randperm(s, generator=torch.Generator().manual_seed(seed)))
        else:
            divs = sorth.errors.divisors(s)
            perms.append(sorth.gs_permutation(draw(st.sampled_from(divs)), s))
    return factors, perms


@given(gs_chains())
def test_support_is_where_positive_blocks_reach(chain) -> None:
    """``support()`` (reachability) equals the non-zeros of the dense product of positive blocks,
    built by the dense reference, independently of the kernels."""
    factors, perms = chain
    positive = [B.abs() + 1 for B in factors]
    n_in = factors[0].shape[0] * factors[0].shape[2]
    dense = sorth.gs_apply_reference(torch.eye(n_in, dtype=F64), positive, perms).T
    A = GSMatrix(factors, perms)
    assert A.support().dtype == torch.bool
    assert torch.equal(A.support(), dense > 0)
    assert A.density() == float((dense > 0).double().mean())


@given(gs_chains())
def test_apply_matches_dense_reference_and_to_dense(chain) -> None:
    factors, perms = chain
    A = GSMatrix(factors, perms)
    x = torch.randn(3, 2, A.shape[1], dtype=F64)
    y = A @ x
    torch.testing.assert_close(y, sorth.gs_apply_reference(x, factors, perms))
    torch.testing.assert_close(y, x @ A.to_dense().T)
    assert y.shape == (3, 2, A.shape[0])


@given(gs_chains())
def test_transpose_and_row_product(chain) -> None:
    A = GSMatrix(*chain)
    D = A.to_dense()
    torch.testing.assert_close(A.T.to_dense(), D.T)
    x = torch.randn(4, A.shape[0], dtype=F64)
    torch.testing.assert_close(x @ A, x @ D)
    torch.testing.assert_close(A.T.T.to_dense(), D)


@given(gs_chains(max_factors=2), gs_chains(max_factors=2))
def test_composition(c1, c2) -> None:
    A, B = GSMatrix(*c1), GSMatrix(*c2)
    if A.shape[1] != B.shape[0]:
        with pytest.raises(ShapeError, match="inner sizes differ"):
            A @ B
        return
    C = A @ B
    assert C.n_factors == A.n_factors + B.n_factors
    torch.testing.assert_close(C.to_dense(), A.to_dense() @ B.to_dense())


@given(gs_chains())
def test_fast_and_reference_gradients_agree(chain) -> None:
    factors, perms = chain
    fa = [B.clone().requires_grad_() for B in factors]
    fb = [B.clone().requires_grad_() for B in factors]
    x = torch.randn(5, factors[0].shape[0] * factors[0].shape[2], dtype=F64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = sorth.gs_apply(xa, fa, perms)
    yb = sorth.gs_apply_reference(xb, fb, perms)
    g = torch.randn_like(ya)  # one shared upstream gradient
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad)
    for a, b in zip(fa, fb, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_gradcheck_gsoft() -> None:
    L = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    R = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    x = torch.randn(2, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, L, R: GSMatrix.gsoft(L, R) @ x, (x, L, R))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_against_float64(dtype: torch.dtype) -> None:
    L, R = torch.randn(2, 8, 4, 4, dtype=F64).unbind(0)
    L, R = L / 2, R / 2  # O(1) outputs
    x = torch.randn(16, 32, dtype=F64)
    ref = GSMatrix.gsoft(L, R) @ x
    out = GSMatrix.gsoft(L.to(dtype), R.to(dtype)) @ x.to(dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.to(F64), ref, **tol_vs_float64(dtype))


# --------------------------------------------------------------------- special cases
def test_gsoft_matches_independent_dense_construction() -> None:
    r, b = 4, 3
    L, R = torch.randn(2, r, b, b, dtype=F64).unbind(0)
    P = sigma_matrix(r, r * b)
    dense = P.T @ torch.block_diag(*L) @ P @ torch.block_diag(*R)
    torch.testing.assert_close(GSMatrix.gsoft(L, R).to_dense(), dense)


def test_gs_definition_3_1_with_rectangular_blocks() -> None:
    # Figure 1 of the paper: k_L = 2 blocks 3x3, k_R = 3 blocks 2x2; plus P_L, P_R
    L, R = torch.randn(2, 3, 3, dtype=F64), torch.randn(3, 2, 2, dtype=F64)
    P = sorth.gs_permutation(2, 6)
    pl, pr = torch.randperm(6), torch.randperm(6)
    dense = (
        sorth.permutation_matrix(pl, dtype=F64)
        @ torch.block_diag(*L)
        @ sigma_matrix(2, 6)
        @ torch.block_diag(*R)
        @ sorth.permutation_matrix(pr, dtype=F64)
    )
    torch.testing.assert_close(GSMatrix.gs(L, R, P, pl, pr).to_dense(), dense)
    # rectangular blocks and k_L != k_R: (2 blocks of 5x3) after (3 blocks of 2x4)
    L2, R2 = torch.randn(2, 5, 3, dtype=F64), torch.randn(3, 2, 4, dtype=F64)
    A = GSMatrix.gs(L2, R2)
    assert A.shape == (10, 12)
    torch.testing.assert_close(
        A.to_dense(), torch.block_diag(*L2) @ sigma_matrix(2, 6) @ torch.block_diag(*R2)
    )


def test_block_diagonal_is_oft() -> None:
    B = torch.randn(4, 3, 3, dtype=F64)
    torch.testing.assert_close(GSMatrix.block_diagonal(B).to_dense(), torch.block_diag(*B))


def butterfly_factor_dense(B: torch.Tensor, level: int) -> torch.Tensor:
    """BOFT factor `level`: block j couples half-blocks (lo, lo + 2**level), written directly."""
    r, b, _ = B.shape
    h, n = b // 2, r * b
    D = torch.zeros(n, n, dtype=B.dtype)
    lows = [j for j in range(2 * r) if (j >> level) % 2 == 0]
    for blk, lo in enumerate(lows):
        hi = lo + 2**level
        for a, ra in enumerate((lo, hi)):
            for c, ca in enumerate((lo, hi)):
                D[ra * h : (ra + 1) * h, ca * h : (ca + 1) * h] = B[
                    blk, a * h : (a + 1) * h, c * h : (c + 1) * h
                ]
    return D


@pytest.mark.parametrize(("r", "b", "m"), [(4, 4, 3), (8, 2, 4), (4, 6, 2), (2, 4, 1)])
def test_butterfly_matches_boft_definition(r: int, b: int, m: int) -> None:
    factors = [torch.randn(r, b, b, dtype=F64) for _ in range(m)]
    dense = torch.eye(r * b, dtype=F64)
    for level, B in enumerate(factors):
        dense = butterfly_factor_dense(B, level) @ dense
    A = GSMatrix.butterfly(factors)
    torch.testing.assert_close(A.to_dense(), dense)
    expect_dense = m >= sorth.min_butterfly_factors_for_density(r * b, b)
    assert (A.density() == 1.0) == expect_dense


def test_monarch_matches_dao_definition() -> None:
    # square Monarch: R has k blocks of q x q, L has q blocks of k x k, n = k*q
    k, q = 3, 4
    n = k * q
    R, L = torch.randn(k, q, q, dtype=F64), torch.randn(q, k, k, dtype=F64)
    dense = sigma_matrix(k, n) @ torch.block_diag(*L) @ sigma_matrix(q, n) @ torch.block_diag(*R)
    A = GSMatrix.monarch(L, R)
    torch.testing.assert_close(A.to_dense(), dense)
    assert A.density() == 1.0
    assert A.block_ranks().max().item() == 1  # Monarch: rank-1 blocks only (paper App. C)


# ------------------------------------------------------------------------- theorems
@given(
    st.sampled_from([(4, 2), (4, 4), (3, 5), (8, 3), (6, 6), (2, 8)]),
    st.integers(0, 2**16),
    st.sampled_from(["cayley", "expm"]),
)
def test_theorem1_direction_orthogonal_blocks(shape, seed: int, method: str) -> None:
    r, b = shape
    g = torch.Generator().manual_seed(seed)
    Ks = [sorth.skew(torch.randn(r, b, b, generator=g)) for _ in range(3)]
    factors = [sorth.orthogonal_blocks(K, method) for K in Ks]
    n = r * b
    perms = [torch.randperm(n, generator=g) for _ in range(4)]
    A = GSMatrix(factors, perms)
    assert A.orthogonality_error() <= orth_atol(torch.float32, n)
    assert sorth.GSMatrix.gsoft(factors[0], factors[1]).orthogonality_error() <= orth_atol(
        torch.float32, n
    )


@pytest.mark.parametrize(("r", "b"), [(4, 4), (4, 8), (8, 8), (3, 5), (16, 4), (9, 3), (32, 2)])
def test_theorem2_density(r: int, b: int) -> None:
    n = r * b
    m_min = sorth.min_factors_for_density(n, b)
    assert m_min == 1 + math.ceil(math.log(r, b) - 1e-12)
    dense_chain = GSMatrix.shuffled([torch.randn(r, b, b) for _ in range(m_min)])
    assert dense_chain.density() == 1.0
    if m_min > 1:  # one factor fewer: some block is structurally zero, whatever the permutations
        short = [torch.randn(r, b, b) for _ in range(m_min - 1)]
        assert GSMatrix.shuffled(short).density() < 1.0
        g = torch.Generator().manual_seed(r * b)
        perms = [torch.randperm(n, generator=g) for _ in range(m_min)]
        assert GSMatrix(short, perms).density() < 1.0
    if b >= r:  # GSOFT with two factors is dense
        assert GSMatrix.gsoft(torch.randn(r, b, b), torch.randn(r, b, b)).density() == 1.0


def test_theorem2_paper_example() -> None:
    assert sorth.min_factors_for_density(1024, 32) == 2
    assert sorth.min_butterfly_factors_for_density(1024, 32) == 6
    assert sorth.min_factors_for_density(768, 8) == 4  # GLUE b=8: the 2-factor Q is not dense
    z = torch.zeros(96, 8, 8)
    assert GSMatrix.gsoft(z, z).density() == pytest.approx(64 / 768)


@given(
    st.sampled_from([(4, 3, 2, 6), (2, 3, 3, 2), (4, 2, 2, 4), (3, 4, 6, 2), (6, 2, 4, 3)]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_proposition1_block_ranks_match_numerical_ranks(shape, random_perm: bool, seed) -> None:
    kL, bL, kR, bR = shape  # square blocks; inner size s = kL*bL = kR*bR
    g = torch.Generator().manual_seed(seed)
    L, R = (
        torch.randn(kL, bL, bL, generator=g, dtype=F64),
        torch.randn(kR, bR, bR, generator=g, dtype=F64),
    )
    s = kL * bL
    P = torch.randperm(s, generator=g) if random_perm else sorth.gs_permutation(kL, s)
    A = GSMatrix.gs(L, R, P)
    D = A.to_dense()
    ranks = A.block_ranks()
    assert ranks.shape == (kL, kR)
    assert int(ranks.sum()) == s
    for k1 in range(kL):
        for k2 in range(kR):
            block = D[k1 * bL : (k1 + 1) * bL, k2 * bR : (k2 + 1) * bR]
            assert torch.linalg.matrix_rank(block).item() == ranks[k1, k2].item()


def test_proposition1_paper_worked_example() -> None:
    # the paper's shapes: k_L = 4 blocks 3x3, k_R = 2 blocks 6x6, here with P = P_(4,12).
    # By hand from σ(i) = (i mod 4)·3 + ⌊i/4⌋: R-block 0 (i < 6) sends σ = 0,3,6,9,1,4 to
    # L-blocks 0,1,2,3,0,1; R-block 1 sends σ = 7,10,2,5,8,11 to L-blocks 2,3,0,1,2,3.
    z3, z6 = torch.zeros(4, 3, 3), torch.zeros(2, 6, 6)
    ranks = GSMatrix.gs(z3, z6, sorth.gs_permutation(4, 12)).block_ranks()
    assert ranks.tolist() == [[2, 1], [2, 1], [1, 2], [1, 2]]
    # GSOFT block ranks: b/r when r | b
    z = torch.zeros(2, 6, 6)
    assert GSMatrix.gsoft(z, z).block_ranks().unique().tolist() == [3]


# ------------------------------------------------------------------------ projection
@given(
    st.sampled_from([(4, 3, 2, 6), (2, 3, 3, 2), (4, 4, 4, 4), (3, 4, 6, 2), (2, 5, 5, 2)]),
    st.integers(0, 2**16),
)
def test_projection_round_trip(shape, seed: int) -> None:
    kL, bL, kR, bR = shape
    g = torch.Generator().manual_seed(seed)
    L, R = (
        torch.randn(kL, bL, bL, generator=g, dtype=F64),
        torch.randn(kR, bR, bR, generator=g, dtype=F64),
    )
    s = kL * bL
    A = GSMatrix.gs(L, R, torch.randperm(s, generator=g), torch.randperm(s, generator=g))
    D = A.to_dense()
    P = GSMatrix.project(D, like=A)
    torch.testing.assert_close(P.to_dense(), D, **tol(F64) | {"atol": 1e-9})


@pytest.mark.parametrize(("n", "r"), [(12, 4), (16, 4), (24, 6), (32, 8)])
def test_projection_is_optimal(n: int, r: int) -> None:
    A = torch.randn(n, n, dtype=F64)
    Pj = GSMatrix.project(A, nblocks=r)
    err = torch.linalg.norm(A - Pj.to_dense())
    assert err < torch.linalg.norm(A)
    for seed in range(5):  # never worse than a random member or a perturbed optimum
        g = torch.Generator().manual_seed(seed)
        rand = GSMatrix.gsoft(*torch.randn(2, r, n // r, n // r, generator=g, dtype=F64).unbind(0))
        assert err <= torch.linalg.norm(A - rand.to_dense())
        nudged = GSMatrix(
            [B + 1e-3 * torch.randn(B.shape, generator=g, dtype=F64) for B in Pj.factors], Pj.perms
        )
        assert err <= torch.linalg.norm(A - nudged.to_dense()) + 1e-12


def test_projection_of_orthogonal_gs_is_exact() -> None:
    q = sorth.GSOrthogonal(32, nblocks=4, dtype=F64)
    q.reset_parameters("random", std=0.5)
    with torch.no_grad():
        Q = q.dense()
        torch.testing.assert_close(GSMatrix.project(Q, nblocks=4).to_dense(), Q)


# ----------------------------------------------------------------------------- errors
def test_construction_errors() -> None:
    with pytest.raises(ShapeError, match=r"factor 1 .* takes 6 features but factor 0"):
        GSMatrix([torch.zeros(2, 4, 3), torch.zeros(2, 3, 3)])
    with pytest.raises(ShapeError, match="2 factors need 3 permutations"):
        GSMatrix([torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)], [None, None])
    with pytest.raises(PermutationError, match=r"perms\[1\] has shape \(5,\), expected \(6,\)"):
        GSMatrix([torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)], [None, torch.arange(5), None])
    with pytest.raises(ShapeError, match="at least one"):
        GSMatrix([])
    with pytest.raises(ShapeError, match=r"factor 0 has shape \(3, 3\)"):
        GSMatrix([torch.zeros(3, 3)])
    with pytest.raises(ShapeError, match="same shape"):
        GSMatrix.gsoft(torch.zeros(2, 3, 3), torch.zeros(3, 2, 2))
    with pytest.raises(ShapeError, match="Monarch needs L of shape"):
        GSMatrix.monarch(torch.zeros(3, 3, 3), torch.zeros(3, 4, 4))
    with pytest.raises(ShapeError, match="this GS matrix takes 6"):
        GSMatrix.gsoft(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)) @ torch.zeros(5)
    with pytest.raises(BlockSizeError, match=r"nblocks=5 must divide n=12; valid choices here"):
        GSMatrix.project(torch.zeros(12, 12), nblocks=5)
    with pytest.raises(ShapeError, match="project needs `like=`"):
        GSMatrix.project(torch.zeros(12, 12))
    with pytest.raises(ShapeError, match="two-factor class"):
        GSMatrix.block_diagonal(torch.zeros(2, 3, 3)).block_ranks()


def test_resolve_blocks_errors() -> None:
    assert sorth.resolve_blocks(64, block_size=8) == (8, 8)
    assert sorth.resolve_blocks(64, nblocks=4) == (4, 16)
    with pytest.raises(
        BlockSizeError, match=r"block_size=6 must divide n=64; valid choices here: \[1, 2, 4, 8"
    ):
        sorth.resolve_blocks(64, block_size=6)
    with pytest.raises(BlockSizeError, match="disagree"):
        sorth.resolve_blocks(64, nblocks=4, block_size=8)
    with pytest.raises(BlockSizeError, match="give nblocks or block_size"):
        sorth.resolve_blocks(64)
    with pytest.raises(BlockSizeError, match="nblocks=-2 must be a positive integer"):
        sorth.resolve_blocks(64, nblocks=-2)
