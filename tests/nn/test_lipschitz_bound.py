"""``lipschitz_bound`` is a strict upper bound (Note [strict bound] in sorth/nn/lipschitz.py):
never below the true norm on random networks (property test), equal to it where the norm is
known exactly, tight on orthogonal layers; ``lipschitz_estimate`` is the power iteration."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import sorth.nn as snn
from tests.nn._helpers import impulse_jacobian, train_steps

F64 = torch.float64


def _norm(J: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(J.detach(), ord=2))


def _affine_norm(f: nn.Module, shape: tuple[int, ...]) -> float:
    """Exact operator norm of an affine ``f`` (float64 impulse-response Jacobian)."""
    return _norm(impulse_jacobian(f.eval(), shape, F64))


@pytest.mark.parametrize(
    "conv",
    [
        {"padding": 1, "padding_mode": "circular"},
        {"padding": 0, "kernel_size": 1},
        {"padding": 2, "padding_mode": "circular", "kernel_size": 5, "groups": 2},
    ],
)
def test_bound_equals_the_exact_norm_where_it_is_known(conv: dict) -> None:
    """Circular 'same' and 1×1 convs: the DFT norm is the exact norm (Sedghi et al.)."""
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, **{"kernel_size": 3, **conv}).double()
    true = _affine_norm(layer, (4, 6, 6))
    assert true <= snn.lipschitz_bound(layer, (4, 6, 6)) <= true * (1 + 1e-9)
    lin = nn.Linear(7, 5).double()
    true = _norm(lin.weight)
    assert true <= snn.lipschitz_bound(lin, (7,)) <= true * (1 + 1e-9)


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize("stride", [1, 2])
def test_orthogonal_layers_are_bounded_tightly(padding_mode: str, stride: int) -> None:
    """Trained SOC / GS layers (12 eval terms): the bound lies in [true, 1 + 1e-5]."""
    torch.manual_seed(0)
    for layer in (
        snn.SOC2d(4, 8, 3, stride, padding_mode=padding_mode),
        snn.GSOrthogonalConv2d(8, 8, 3, stride, (2, 2), padding_mode=padding_mode),
    ):
        layer = layer.double()
        shape = (layer.in_channels, 8, 8)
        train_steps(layer, shape)
        true = _affine_norm(layer, shape)
        bound = snn.lipschitz_bound(layer, shape)
        assert true <= bound <= 1 + 1e-5


def test_truncated_taylor_series_is_accounted_for() -> None:
    """With few Taylor terms the layer is far from orthogonal: the bound follows it."""
    torch.manual_seed(0)
    for terms in (1, 2, 3, 5):
        soc = snn.SOC2d(4, 4, 3, eval_terms=terms).double()
        train_steps(soc, (4, 8, 8))
        true = _affine_norm(soc, (4, 8, 8))
        if terms <= 2:  # |T_K(iλ)|² = 1 + λ²  (K = 1), 1 + λ⁴/4 (K = 2)
            assert true > 1.001  # the truncation pushed it above 1
        assert true <= snn.lipschitz_bound(soc, (4, 8, 8)) <= true * 1.05


def test_lipconvnet_bound_is_close_to_one_and_dominates_the_estimate() -> None:
    net = snn.LipConvNet(5, "gs", (2, 2), init_channels=4, num_classes=10, in_channels=1).double()
    assert train_steps(net, (1, 32, 32), steps=3, lr=0.02) > 0.01
    bound = snn.lipschitz_bound(net, (1, 32, 32))
    estimate = snn.lipschitz_estimate(net, (1, 32, 32), n_iter=20)
    assert estimate <= bound <= 1 + 1e-4
    per_layer = snn.layer_lipschitz_bounds(net, (1, 32, 32))
    assert math.prod(v for _, v in per_layer) == pytest.approx(bound, rel=1e-12)
    assert [n for n, _ in per_layer][:2] == ["layers.conv1_1", "layers.act1_1"]


def test_float32_bound_covers_a_float32_power_iteration() -> None:
    """float32 forward passes measure slightly above the exact norm; the 4-eps allowance per
    layer covers that (the estimate was 1 + 6e-8 on a float32 LipConvNet-5)."""
    net = snn.LipConvNet(5, "gs", (4, None), init_channels=8, num_classes=10, in_channels=1)
    bound = snn.lipschitz_bound(net, (1, 32, 32))
    assert snn.lipschitz_estimate(net, (1, 32, 32), n_iter=10) <= bound <= 1 + 1e-5


def test_normalisation_unknown_layers_and_custom_forwards() -> None:
    net = snn.LipConvNet(5, "soc", init_channels=4, num_classes=10, mean=(0.5,) * 3,
                         std=(0.25, 0.5, 0.5))  # fmt: skip
    assert net.nominal_lipschitz() == pytest.approx(4.0)
    assert 4.0 <= snn.lipschitz_bound(net, (3, 32, 32)) <= 4.0 * (1 + 1e-4)
    with pytest.raises(TypeError, match="cannot bound layer '0' of type Tanh"):
        snn.lipschitz_bound(nn.Sequential(nn.Tanh()), (4,))

    class Residual(nn.Sequential):
        def forward(self, x):  # x + f(x): not the chain of its children
            return x + super().forward(x)

    with pytest.raises(TypeError, match="of type Residual"):
        snn.lipschitz_bound(Residual(nn.Linear(4, 4)), (4,))
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda m, i, o: 10 * o)
    with pytest.raises(TypeError, match="forward hooks"):
        snn.lipschitz_bound(nn.Sequential(hooked), (4,))
    with pytest.raises(TypeError, match="cannot bound layer"):
        snn.lipschitz_bound(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (2, 5, 5))


# ------------------------------------------------------------------ property: bound ≥ true
@st.composite
def _networks(draw):
    """Random chains of sorth / torch layers on small images, then a linear head."""
    c = c0 = draw(st.sampled_from([2, 4]))
    side = side0 = draw(st.sampled_from([4, 6]))
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "soc", "gs"]))
        out = draw(st.sampled_from([2, 4, 8]))
        stride = draw(st.sampled_from([1, 2])) if side % 2 == 0 and side > 2 else 1
        mode = draw(st.sampled_from(["zeros", "circular"]))
        if kind == "conv":
            k = draw(st.sampled_from([1, 2, 3]))
            groups = draw(st.sampled_from([1, 2]))
            padding = draw(st.integers(0, 2))
            dilation = draw(st.sampled_from([1, 2]))
            assume(side + 2 * padding - dilation * (k - 1) >= 1 and padding <= side)
            layer = nn.Conv2d(c, out, k, stride, padding, dilation, groups, padding_mode=mode)
            with torch.no_grad():
                layer.weight.mul_(draw(st.floats(0.5, 3.0)))
        elif kind == "soc":
            terms = draw(st.sampled_from([1, 2, 4, 12]))
            layer = snn.SOC2d(c, out, draw(st.sampled_from([1, 3])), stride, padding_mode=mode,
                              eval_terms=terms)  # fmt: skip
            with torch.no_grad():  # move the raw kernel so sigma's estimate is stale
                layer.weight.add_(torch.randn_like(layer.weight) * draw(st.floats(0.0, 1.0)))
        else:
            assume(c % 2 == 0 and out % 4 == 0)  # paired shuffles with 2 groups
            layer = snn.GSOrthogonalConv2d(c, out, 3, stride, (2, draw(st.sampled_from([None, 2]))),
                                           padding_mode=mode, eval_terms=4)  # fmt: skip
        layers.append(layer.double())
        with torch.no_grad():
            x = layer.double()(torch.zeros(1, c, side, side, dtype=F64))
        c, side = x.shape[1], x.shape[-1]
        assume(side >= 1)
        act = draw(st.sampled_from(["none", "relu", "maxmin"]))
        if act == "relu":
            layers.append(nn.ReLU())
        elif act == "maxmin" and c % 2 == 0:
            layers.append(snn.MaxMin(c))
    layers.append(nn.Flatten())
    features = c * side * x.shape[-2]
    head = draw(st.sampled_from(["linear", "gs", "cayley"]))
    if head == "linear":
        layers.append(nn.Linear(features, 3).double())
    elif head == "gs":
        layers.append(snn.GSOrthogonalLinear(features, 3, dtype=F64))
    else:
        layers.append(snn.CayleyLinear(features, 3, dtype=F64))
    return nn.Sequential(*layers).eval(), c0, side0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_networks(), st.integers(0, 2**16))
def test_bound_dominates_every_local_jacobian(built, seed: int) -> None:
    """The network is piecewise affine, so every local Jacobian norm is ≤ its Lipschitz
    constant (= the exact norm when there is no activation): the bound must dominate them."""
    net, c, side = built
    x = torch.randn(4, c, side, side, dtype=F64, generator=torch.Generator().manual_seed(seed))
    jac = torch.autograd.functional.jacobian
    local = max(_norm(jac(lambda v: net(v[None])[0], xi).reshape(3, -1)) for xi in x)
    bound = snn.lipschitz_bound(net, (c, side, side))
    assert local <= bound * (1 + 1e-12), (local, bound)
