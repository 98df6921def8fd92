"""P_(k,n), the paired shuffle and BOFT's butterfly groupings (paper.md §1.3 test vectors)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sorth
from sorth.errors import BlockSizeError, PermutationError
from sorth.permutations import validate_permutation


def sigma(perm: torch.Tensor) -> list[int]:
    """The paper's σ (entry i is sent to σ(i)) from our index vector (Note [scatter])."""
    return sorth.invert_permutation(perm).tolist()


def test_gs_permutation_paper_vectors() -> None:
    assert sorth.gs_permutation(3, 12).tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    assert sigma(sorth.gs_permutation(3, 12)) == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert sigma(sorth.gs_permutation(4, 12)) == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    assert sigma(sorth.gs_permutation(6, 12)) == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]
    assert sigma(sorth.gs_permutation(2, 12)) == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]


def test_gs_permutation_matches_sigma_formula_and_matrix() -> None:
    k, n = 4, 20
    perm = sorth.gs_permutation(k, n)
    P = torch.zeros(n, n)
    for i in range(n):  # the paper's definition: the 1 of column i is at row σ(i)
        P[(i % k) * (n // k) + i // k, i] = 1
    x = torch.randn(n)
    torch.testing.assert_close(x[perm], P @ x)
    torch.testing.assert_close(sorth.permutation_matrix(perm), P)
    torch.testing.assert_close(x[perm], x.reshape(n // k, k).T.reshape(n))


def test_paired_permutation_paper_vector() -> None:
    assert sigma(sorth.paired_permutation(4, 16)) == [
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    ]  # fmt: skip


@given(k=st.integers(1, 8), q=st.integers(1, 8))
def test_paired_matches_formula(k: int, q: int) -> None:
    n = 2 * k * q
    expected = [((i // 2) % k) * (n // k) + 2 * (i // (2 * k)) + (i % 2) for i in range(n)]
    assert sigma(sorth.paired_permutation(k, n)) == expected


@given(k=st.integers(1, 12), q=st.integers(1, 12))
def test_transpose_is_p_n_over_k(k: int, q: int) -> None:
    n = k * q
    perm = sorth.gs_permutation(k, n)
    assert sorted(perm.tolist()) == list(range(n))
    assert torch.equal(sorth.invert_permutation(perm), sorth.gs_permutation(n // k, n))
    x = torch.arange(n)
    assert torch.equal(x[perm][sorth.invert_permutation(perm)], x)


def test_compose_and_identity() -> None:
    a, b = sorth.gs_permutation(3, 12), sorth.paired_permutation(2, 12)
    x = torch.randn(5, 12)
    torch.testing.assert_close(x[..., a][..., b], x[..., sorth.compose_permutations(a, b)])
    assert torch.equal(sorth.identity_permutation(7), torch.arange(7))
    assert torch.equal(sorth.permute(x, None), x)


def test_butterfly_permutation_pairs_half_blocks() -> None:
    # b=4 (half-blocks of 2), n=16: level 1 pairs half-blocks (0,2), (1,3), (4,6), (5,7)
    assert sorth.butterfly_permutation(1, 4, 16).tolist() == [
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
    ]  # fmt: skip
    assert sorth.butterfly_permutation(0, 4, 16).tolist() == list(range(16))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sorth.gs_permutation(5, 12), r"k=5 must divide n=12; valid choices here: \[1, 2"),
        (lambda: sorth.gs_permutation(0, 12), "k=0 must be a positive integer"),
        (
            lambda: sorth.paired_permutation(4, 12),
            r"2\*k to divide n.*valid k here: \[1, 2, 3, 6\]",
        ),
        (lambda: sorth.butterfly_permutation(0, 3, 12), "even block_size"),
        (lambda: sorth.butterfly_permutation(2, 4, 24), r"2\*\*2 to divide the number of blocks"),
    ],
)
def test_bad_sizes(call, match: str) -> None:
    with pytest.raises(BlockSizeError, match=match):
        call()


def test_validate_permutation_errors() -> None:
    with pytest.raises(PermutationError, match=r"shape \(3,\), expected \(4,\)"):
        validate_permutation(torch.tensor([0, 1, 2]), 4)
    with pytest.raises(PermutationError, match=r"indices \[3\] are missing"):
        validate_permutation(torch.tensor([0, 1, 2, 2]), 4)
    with pytest.raises(PermutationError, match="outside"):
        validate_permutation(torch.tensor([0, 1, 2, 7]), 4)
    with pytest.raises(PermutationError, match="integer"):
        validate_permutation(torch.tensor([0.0, 1.0]), 2)
