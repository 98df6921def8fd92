"""LipConvNet: paper parameter counts, shapes, errors, Lipschitz bound vs adversarial search."""

from __future__ import annotations

import pytest
import torch

import sorth.nn as snn
from sorth.errors import BlockSizeError, MethodError, ShapeError
from tests.nn._helpers import train_steps

# paper.md §5.3, Table 3 (LipConvNet-15, 3×32×32 inputs, 100 classes), as printed there, and the
# exact counts of our builder (full raw kernels + biases, the paper's convention).
PAPER_COUNTS = [
    ("soc", (4, None), 24.1, 1, 24_066_020),
    ("gs", (4, None), 6.81, 2, 6_805_988),
    ("gs", (4, 1), 8.91, 2, 8_905_060),
    ("gs", (4, 2), 7.86, 2, 7_857_508),
    ("gs", (4, 4), 7.3, 1, 7_333_732),
]


@pytest.mark.parametrize(("conv", "groups", "paper", "digits", "exact"), PAPER_COUNTS)
def test_lipconvnet15_parameter_counts_match_the_paper(conv, groups, paper, digits, exact) -> None:
    net = snn.LipConvNet(15, conv, groups, num_classes=100, device="meta")
    n = sum(p.numel() for p in net.parameters())
    assert round(n / 1e6, digits) == paper
    assert n == exact


def test_layout_widths_and_sides() -> None:
    net = snn.LipConvNet(15, "gs", (4, 2), init_channels=32, num_classes=100, device="meta")
    convs = [m for name, m in net.layers.named_children() if name.startswith("conv")]
    assert len(convs) == 15
    assert [c.out_channels for c in convs[2::3]] == [64, 128, 256, 512, 1024]
    assert [c.stride for c in convs] == [1, 1, 2] * 5
    assert [c.kernel_size for c in convs][-1] == 1
    assert all(c.kernel_size == 3 for c in convs[:-1])
    head = net.layers.head
    assert (head.in_channels, head.out_channels, head.kernel_size, head.groups) == (1024, 100, 1, 1)


@pytest.mark.parametrize(("image_size", "in_channels"), [(32, 3), (64, 1)])
def test_forward_shapes(image_size: int, in_channels: int) -> None:
    net = snn.LipConvNet(5, "gs", (2, 2), init_channels=4, num_classes=7, in_channels=in_channels,
                         image_size=image_size)  # fmt: skip
    assert net(torch.randn(2, in_channels, image_size, image_size)).shape == (2, 7)
    with pytest.raises(ShapeError, match="LipConvNet expects"):
        net(torch.randn(2, in_channels, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"depth": 7}, BlockSizeError, "depth=7 must be a multiple of 5"),
        ({"image_size": 28}, BlockSizeError, "image_size=28 must be a multiple of 32"),
        ({"init_channels": 5}, BlockSizeError, "init_channels=5 must be even"),
        ({"conv": "cayley"}, MethodError, "conv='cayley'"),
        ({"activation": "relu"}, MethodError, "activation='relu'"),
        ({"conv": "gs", "groups": (3, None)}, BlockSizeError, "groups=3 must divide"),
        ({"mean": (0.5,)}, ShapeError, "pass both mean and std"),
    ],
)
def test_construction_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        snn.LipConvNet(**{"depth": 5, "init_channels": 8, "device": "meta", **kwargs})


def test_default_activation_follows_the_paper() -> None:
    soc = snn.LipConvNet(5, "soc", init_channels=4, device="meta")
    gs = snn.LipConvNet(5, "gs", init_channels=4, device="meta")
    assert isinstance(soc.layers.act1_1, snn.MaxMin)
    assert isinstance(gs.layers.act1_1, snn.MaxMinPermuted)


def _adversarial_ratio(net: torch.nn.Module, shape: tuple[int, ...], steps: int = 25) -> float:
    """Largest ‖f(x) − f(y)‖ / ‖x − y‖ found by gradient ascent from random pairs."""
    x = torch.randn(4, *shape, dtype=torch.float64, requires_grad=True)
    d = (1e-1 * torch.randn(4, *shape, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.Adam([x, d], lr=1e-2)
    best = 0.0
    for _ in range(steps):
        ratio = (net(x + d) - net(x)).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def test_lipschitz_bound_dominates_adversarial_search_and_is_close_to_one() -> None:
    net = snn.LipConvNet(5, "gs", (2, 2), init_channels=4, num_classes=10, in_channels=1).double()
    assert train_steps(net, (1, 32, 32), steps=3, lr=0.02) > 0.01
    net.eval()
    bound = snn.lipschitz_bound(net, (1, 32, 32))
    found = _adversarial_ratio(net, (1, 32, 32))
    assert found <= bound * (1 + 1e-9)
    assert abs(bound - 1) < 1e-3
    assert found > 0.5  # the search did find a nearly tight pair


def test_lipschitz_bound_of_a_plain_linear_layer_is_its_norm() -> None:
    lin = torch.nn.Linear(6, 4).double()
    bound = snn.lipschitz_bound(lin, (6,))
    assert bound == pytest.approx(
        float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)), rel=1e-8
    )
