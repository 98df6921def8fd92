"""Certified radius and certified accuracy on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

import sorth.nn as snn
from sorth.errors import ShapeError


def test_certified_radius_formula() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.4]])
    r = snn.certified_radius(logits, lipschitz=2.0)
    torch.testing.assert_close(r, torch.tensor([2.0, 0.1]) / (2 * math.sqrt(2)))
    with pytest.raises(ShapeError, match="classes >= 2"):
        snn.certified_radius(torch.randn(4, 1))


class _Fixed(torch.nn.Module):
    """Returns stored logits for sample indices (the inputs)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]


def test_certified_accuracy_counts_correct_and_certified() -> None:
    s2 = math.sqrt(2)
    # margins 1.0, 0.1, 2.0 (wrong class), 0.5 -> radii margin/√2
    logits = torch.tensor([[1.0, 0.0], [0.1, 0.0], [0.0, 2.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 0, 1])
    loader = [(torch.arange(4), labels)]
    res = snn.certified_accuracy(_Fixed(logits), loader, eps=(0.05, 0.3 / s2, 0.9 / s2))
    assert res.clean == 0.75
    assert res.at(0.05) == 0.75  # radii 0.707, 0.0707, 0.354 all > 0.05
    assert res.at(0.3 / s2) == 0.5  # 0.0707 drops out
    assert res.at(0.9 / s2) == 0.25
    assert res.mean_radius == pytest.approx((1.0 + 0.1 + 0.5) / s2 / 3)
    halved = snn.certified_accuracy(_Fixed(logits), loader, eps=0.3 / s2, lipschitz=2.0)
    assert halved.at(0.3 / s2) == 0.25  # a Lipschitz constant of 2 halves every radius


def test_certified_accuracy_uses_the_normalisation_lipschitz_by_default() -> None:
    net = snn.LipConvNet(5, "soc", init_channels=4, num_classes=3, std=(0.25,) * 3, mean=(0,) * 3)
    x = torch.rand(6, 3, 32, 32)
    res = snn.certified_accuracy(net, [(x, net.eval()(x).argmax(1))], eps=0.0)
    assert res.lipschitz == pytest.approx(4.0)
    assert res.clean == 1.0
    assert net.training is False
