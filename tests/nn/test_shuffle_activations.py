"""Channel shuffles (plain and paired) and MaxMin activations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sorth.nn as snn
from sorth.errors import BlockSizeError, ShapeError


def _shufflenet_reference(x: torch.Tensor, groups: int, paired: bool) -> torch.Tensor:
    """ShuffleNet's view/transpose channel shuffle (the authors' ``channel_shuffle``)."""
    N, C, H, W = x.shape
    if paired:
        y = x.view(N, C // (2 * groups), groups, 2, H, W).transpose(1, 2)
    else:
        y = x.view(N, C // groups, groups, H, W).transpose(1, 2)
    return y.reshape(N, C, H, W)


@st.composite
def _shuffle_case(draw: st.DrawFn) -> tuple[int, int, bool]:
    paired = draw(st.booleans())
    groups = draw(st.integers(1, 8))
    per_group = draw(st.integers(1, 8)) * (2 if paired else 1)
    return groups * per_group, groups, paired


@given(_shuffle_case())
def test_shuffle_matches_shufflenet_reference(case: tuple[int, int, bool]) -> None:
    C, groups, paired = case
    x = torch.randn(2, C, 3, 2)
    y = snn.ChannelShuffle(C, groups, paired=paired)(x)
    torch.testing.assert_close(y, _shufflenet_reference(x, groups, paired), rtol=0, atol=0)


@given(_shuffle_case())
def test_shuffle_is_a_permutation_and_inverse_undoes_it(case: tuple[int, int, bool]) -> None:
    C, groups, paired = case
    perm = snn.channel_permutation(C, groups, paired=paired)
    assert sorted(perm.tolist()) == list(range(C))
    x = torch.randn(3, C, 2, 2)
    there = snn.ChannelShuffle(C, groups, paired=paired)
    back = snn.ChannelShuffle(C, groups, paired=paired, inverse=True)
    torch.testing.assert_close(back(there(x)), x, rtol=0, atol=0)
    torch.testing.assert_close(there(x).norm(), x.norm())  # an isometry


@given(_shuffle_case())
def test_paired_shuffle_moves_pairs_together(case: tuple[int, int, bool]) -> None:
    C, groups, _ = case
    if C % (2 * groups):
        return
    perm = snn.channel_permutation(C, groups, paired=True)
    assert (perm[0::2] % 2 == 0).all()
    assert torch.equal(perm[1::2], perm[0::2] + 1)


def test_paired_shuffle_known_vector() -> None:
    # paper.md §1.3: sigma for k=4, n=16 is [0,1,4,5,8,9,12,13,2,3,6,7,10,11,14,15]; perm = sigma^-1
    sigma = torch.tensor([0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15])
    perm = snn.channel_permutation(16, 4, paired=True)
    assert torch.equal(perm[sigma], torch.arange(16))


def test_shuffle_buffer_not_saved_and_repr() -> None:
    s = snn.ChannelShuffle(8, 2, paired=True)
    assert "perm" not in s.state_dict()
    assert "groups=2" in repr(s)
    assert "paired=True" in repr(s)


@pytest.mark.parametrize(
    ("C", "groups", "paired", "match"),
    [(6, 4, False, "groups=4 must divide channels=6"), (12, 4, True, "2\\*groups to divide")],
)
def test_shuffle_errors(C: int, groups: int, paired: bool, match: str) -> None:
    with pytest.raises(BlockSizeError, match=match):
        snn.ChannelShuffle(C, groups, paired=paired)


def test_maxmin_values() -> None:
    x = torch.tensor([1.0, 5.0, 3.0, 2.0]).view(1, 4, 1, 1)
    # halves a = (1, 5), b = (3, 2) -> max (3, 5), min (1, 2)
    assert snn.MaxMin(4)(x).flatten().tolist() == [3.0, 5.0, 1.0, 2.0]
    # neighbours: (1, 5), (3, 2) -> (5, 1), (3, 2)
    assert snn.MaxMinPermuted(4)(x).flatten().tolist() == [5.0, 1.0, 3.0, 2.0]


@pytest.mark.parametrize("cls", [snn.MaxMin, snn.MaxMinPermuted])
def test_maxmin_is_one_lipschitz_and_norm_preserving(cls: type) -> None:
    act = cls(8)
    x, y = torch.randn(64, 8, 3, 3), torch.randn(64, 8, 3, 3)
    fx, fy = act(x), act(y)
    torch.testing.assert_close(fx.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    ratio = (fx - fy).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max() <= 1 + 1e-6
    # the Jacobian is a permutation almost everywhere: all singular values are 1
    J = torch.autograd.functional.jacobian(
        lambda v: act(v.view(1, 8, 1, 1)).flatten(), x[0, :, 0, 0]
    )
    torch.testing.assert_close(torch.linalg.svdvals(J), torch.ones(8))


def test_maxmin_permuted_pairs_stay_in_a_group_after_paired_shuffle() -> None:
    C, groups = 16, 4
    perm = snn.channel_permutation(C, groups, paired=True)
    group_of = torch.arange(C) // (C // groups)  # group of each output position
    # output positions 2j, 2j+1 (a MaxMinPermuted pair downstream) come from one input pair,
    # and sit in the same conv group
    assert torch.equal(group_of[0::2], group_of[1::2])
    assert torch.equal(perm[0::2] // 2, perm[1::2] // 2)


@pytest.mark.parametrize("cls", [snn.MaxMin, snn.MaxMinPermuted])
def test_maxmin_errors(cls: type) -> None:
    with pytest.raises(BlockSizeError, match="channels=7 must be even"):
        cls(7)
    with pytest.raises(ShapeError, match="got 6 channels"):
        cls(8)(torch.randn(1, 6, 2, 2))
