"""Certified radius and certified accuracy: counting on hand-made logits, and certificates that
never claim more than the model allows (default strict bound, PGD / exact flips)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sorth.nn as snn
from sorth.errors import ShapeError, SOrthValueError

F64 = torch.float64


def test_certified_radius_formula() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.4]])
    r = snn.certified_radius(logits, lipschitz=2.0)
    torch.testing.assert_close(r, torch.tensor([2.0, 0.1]) / (2 * math.sqrt(2)))
    with pytest.raises(ShapeError, match="classes >= 2"):
        snn.certified_radius(torch.randn(4, 1))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(SOrthValueError, match="must be a finite number > 0"):
            snn.certified_radius(logits, lipschitz=bad)


class _Fixed(nn.Module):
    """Returns stored logits for sample indices (the inputs)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]


def test_certified_accuracy_counts_correct_and_certified() -> None:
    s2 = math.sqrt(2)
    # margins 1.0, 0.1, 2.0 (wrong class), 0.5 -> radii margin/√2
    logits = torch.tensor([[1.0, 0.0], [0.1, 0.0], [0.0, 2.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 0, 1])
    loader = [(torch.arange(4), labels)]
    res = snn.certified_accuracy(
        _Fixed(logits), loader, eps=(0.05, 0.3 / s2, 0.9 / s2), lipschitz=1.0
    )
    assert res.clean == 0.75
    assert res.at(0.05) == 0.75  # radii 0.707, 0.0707, 0.354 all > 0.05
    assert res.at(0.3 / s2) == 0.5  # 0.0707 drops out
    assert res.at(0.9 / s2) == 0.25
    assert res.mean_radius == pytest.approx((1.0 + 0.1 + 0.5) / s2 / 3)
    halved = snn.certified_accuracy(_Fixed(logits), loader, eps=0.3 / s2, lipschitz=2.0)
    assert halved.at(0.3 / s2) == 0.25  # a Lipschitz constant of 2 halves every radius


def test_default_refuses_a_model_it_cannot_bound() -> None:
    """Regression: the default used nominal_lipschitz (1.0 for any model without Normalize)."""
    loader = [(torch.arange(2), torch.tensor([0, 1]))]
    model = _Fixed(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(TypeError, match=r"strict upper bound.*'_Fixed'.*pass a Lipschitz"):
        snn.certified_accuracy(model, loader)
    with pytest.raises(TypeError, match=r"layer '1' of type Tanh"):
        snn.certified_accuracy(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), [(torch.randn(2, 2),
                               torch.tensor([0, 1]))])  # fmt: skip


def test_default_uses_the_strict_bound_including_the_normalisation() -> None:
    net = snn.LipConvNet(5, "soc", init_channels=4, num_classes=3, std=(0.25,) * 3, mean=(0,) * 3)
    x = torch.rand(6, 3, 32, 32)
    res = snn.certified_accuracy(net, [(x, net.eval()(x).argmax(1))], eps=0.0)
    assert res.lipschitz == snn.lipschitz_bound(net, (3, 32, 32))
    assert 4.0 <= res.lipschitz <= 4.0 * (1 + 1e-4)
    assert res.clean == 1.0
    assert net.training is False


# ----------------------------------------------------------------------------- attacks
def _pgd_flips(model: nn.Module, x: torch.Tensor, radius: torch.Tensor, steps: int = 60):
    """ℓ2 PGD on the margin ``f_y − max_{j≠y} f_j`` inside ``‖δ‖ ≤ radius`` (per point).

    Returns a bool mask of the points whose prediction it changed.
    """
    with torch.no_grad():
        y = model(x).argmax(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    r = radius.view(shape)
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    delta = delta / delta.flatten(1).norm(dim=1).view(shape) * r * 0.5
    flipped = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        flipped |= (logits.argmax(1) != y).detach()
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((true - other).sum(), delta)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
            delta = delta - 0.25 * r * g
            norm = delta.flatten(1).norm(dim=1).view(shape)
            delta = delta * torch.clamp(r / norm.clamp_min(1e-30), max=1.0)
    with torch.no_grad():
        flipped |= model(x + delta).argmax(1) != y
    return flipped


def _mlp(scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2)).double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
    return net


def test_plain_mlp_is_not_over_certified() -> None:
    """Regression (issue 14): an MLP of Lipschitz constant ~6 was 97% certified at 36/255 by the
    default (L = 1) and PGD flipped those points inside their radius."""
    net = _mlp(3.0)
    x = torch.randn(300, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1).detach()
    eps = 36 / 255
    res = snn.certified_accuracy(net, [(x, y)], eps=eps)
    # the bound dominates every local Jacobian norm (each is a lower bound on the constant)
    J = torch.func.vmap(torch.func.jacrev(net))(x)  # (N, 2, 2)
    local = float(torch.linalg.matrix_norm(J.detach(), ord=2).amax())
    assert local > 3.0  # the constant is far above 1
    assert res.lipschitz >= local
    with torch.no_grad():
        radius = snn.certified_radius(net(x), res.lipschitz)
    certified = radius > eps
    assert certified.any()
    assert not _pgd_flips(net, x[certified], torch.full((int(certified.sum()),), eps)).any()
    # the old default (nominal L = 1) certifies points that PGD flips inside eps
    with torch.no_grad():
        nominal = snn.certified_radius(net(x), snn.nominal_lipschitz(net)) > eps
    assert _pgd_flips(net, x[nominal], torch.full((int(nominal.sum()),), eps)).any()


def _clustered_linear_net(d: int = 64) -> tuple[nn.Sequential, torch.Tensor]:
    """``x ↦ A B x``: ``B`` has singular values ``1, 0.999, 0.998, …`` (power iteration converges
    slowly), ``A = [u₁; −u₁]/√2`` takes ``B``'s top left singular vector, so ``‖AB‖ = 1``."""
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
    s = 1.0 - 1e-3 * torch.arange(d, dtype=F64)
    first, second = nn.Linear(d, d, bias=False).double(), nn.Linear(d, 2, bias=False).double()
    with torch.no_grad():
        first.weight.copy_(U @ torch.diag(s) @ V.T)
        second.weight.copy_(torch.stack([U[:, 0], -U[:, 0]]) / math.sqrt(2))
    return nn.Sequential(first, second), V[:, 0]


def test_two_layer_linear_net_bound_and_exact_flips() -> None:
    """Regression (issue 14): the power iteration gave 0.9935 for a net of norm 1, and exact
    flips existed below the certified radius. Margin ``√2·|v₁·x|``, nearest flip ``|v₁·x|``."""
    net, v1 = _clustered_linear_net()
    true = float(torch.linalg.matrix_norm(net[1].weight @ net[0].weight, ord=2))
    assert true == pytest.approx(1.0, abs=1e-12)
    bound = snn.lipschitz_bound(net, (64,))
    assert true <= bound <= true * (1 + 1e-9)
    estimate = snn.lipschitz_estimate(net, (64,))
    assert estimate < true - 1e-3  # an estimate from below: not a certificate
    x = torch.randn(200, 64, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = net(x)
    nearest_flip = (x @ v1).abs()  # exact: the decision boundary is the hyperplane v₁·x = 0
    assert (snn.certified_radius(logits, bound) <= nearest_flip).all()
    assert (snn.certified_radius(logits, estimate) > nearest_flip).all()


def _train_to_own_labels(net: nn.Module, x: torch.Tensor, classes: int, steps: int = 5):
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    target = torch.arange(len(x)) % classes
    for _ in range(steps):  # leave the initialisation
        loss = nn.functional.cross_entropy(net(x) * 10, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net(x).argmax(1).detach()


def _check_no_flip_inside_default_radius(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    res = snn.certified_accuracy(net, [(x, y)], eps=0.0)
    assert res.clean == 1.0
    with torch.no_grad():
        radius = snn.certified_radius(net(x), res.lipschitz)
    assert not _pgd_flips(net, x, radius * (1 - 1e-9)).any()
    assert _pgd_flips(net, x, radius * 4).any()  # the attack finds over-claimed radii


def test_no_pgd_flip_inside_the_default_radius_of_a_sorth_cnn() -> None:
    """Default path on a trained sorth CNN (zero padding, stride 2, GS conv, GS linear head):
    no flip within each point's certified radius; the same attack flips points once the
    radius is over-claimed 4×."""
    torch.manual_seed(0)
    net = nn.Sequential(
        snn.SOC2d(2, 4, 3), snn.MaxMin(4), snn.SOC2d(4, 8, 3, stride=2), snn.MaxMin(8),
        snn.GSOrthogonalConv2d(8, 8, 3, groups=(2, 2)), snn.MaxMinPermuted(8), nn.Flatten(),
        snn.GSOrthogonalLinear(128, 3, block_size=8),
    ).double()  # fmt: skip
    x = torch.rand(16, 2, 8, 8, dtype=F64)
    _check_no_flip_inside_default_radius(net, x, _train_to_own_labels(net, x, 3))


@pytest.mark.slow
def test_no_pgd_flip_inside_the_default_radius_of_a_lipconvnet() -> None:
    torch.manual_seed(0)
    net = snn.LipConvNet(5, "gs", (2, 2), init_channels=4, num_classes=3, in_channels=1).double()
    x = torch.rand(16, 1, 32, 32, dtype=F64)
    _check_no_flip_inside_default_radius(net, x, _train_to_own_labels(net, x, 3))
