"""Orthogonality measured after training: impulse-response Jacobians of SOC2d / GS convs.

Tolerance (see Note [soc bound] in sorth/nn/soc.py): the skew convolution ``A = L_n ⋆`` is
exactly skew-symmetric for circular and for zero "same" padding, so ``exp(A)`` is orthogonal
and the eval-mode layer ``T_K(A)`` (``K = 12`` Taylor terms) differs from it by at most
``r = Σ_{i>K} ρ^i/i!``, ``ρ = ‖A‖`` computed exactly (DFT). Channel padding / truncation and
the stride-2 downsampling keep the non-zero singular values equal to those of ``exp(A)``'s
rows/columns, so every one of the ``min(in_dim, out_dim)`` singular values lies in
``[1 − r, 1 + r]`` (``[(1−r₁)(1−r₂), (1+r₁)(1+r₂)]`` for two exponentials), up to float64 noise.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import sorth.nn as snn
from tests.nn._helpers import impulse_jacobian, soc_tolerance, taylor_remainder, train_steps

SIDE = 8
SOC_GRID = list(
    itertools.product([1, 3, 5], [1, 2], [(4, 4), (4, 8), (8, 4)], [1, 2], ["circular", "zeros"])
)
GS_GRID = list(
    itertools.product(
        [1, 3, 5], [1, 2], [(8, 8), (8, 16)], [(2, None), (2, 2), (4, 1)], ["circular", "zeros"]
    )
)


def _check_spectrum(sv: torch.Tensor, lo: float, hi: float, n_expected: int) -> None:
    assert sv.numel() == n_expected
    assert hi - 1 < 1e-2, "tolerance too loose to test anything"
    assert 1 - lo < 1e-2, "tolerance too loose to test anything"
    assert float(sv.max()) <= hi, f"sigma_max={float(sv.max())} > {hi}"
    assert float(sv.min()) >= lo, f"sigma_min={float(sv.min())} < {lo}"


@pytest.mark.parametrize(("k", "stride", "channels", "groups", "padding_mode"), SOC_GRID)
def test_soc_singular_values_after_training(k, stride, channels, groups, padding_mode) -> None:
    cin, cout = channels
    conv = snn.SOC2d(cin, cout, k, stride, groups=groups, padding_mode=padding_mode)
    conv = conv.double()
    assert train_steps(conv, (cin, SIDE, SIDE)) > 0.05  # moved away from initialisation
    J = impulse_jacobian(conv, (cin, SIDE, SIDE), torch.float64)
    sv = torch.linalg.svdvals(J)
    tol = soc_tolerance(conv, SIDE)
    n_out = cout * (SIDE // stride) ** 2
    _check_spectrum(sv, 1 - tol, 1 + tol, min(cin * SIDE * SIDE, n_out))


@pytest.mark.parametrize(("k", "stride", "channels", "groups", "padding_mode"), GS_GRID)
def test_gs_conv_singular_values_after_training(k, stride, channels, groups, padding_mode) -> None:
    cin, cout = channels
    conv = snn.GSOrthogonalConv2d(cin, cout, k, stride, groups, padding_mode=padding_mode).double()
    assert train_steps(conv, (cin, SIDE, SIDE)) > 0.05
    J = impulse_jacobian(conv, (cin, SIDE, SIDE), torch.float64)
    sv = torch.linalg.svdvals(J)
    r1 = soc_tolerance(conv.conv1, SIDE)
    r2 = soc_tolerance(conv.conv2, SIDE // stride) if groups[1] is not None else 0.0
    n_out = cout * (SIDE // stride) ** 2
    _check_spectrum(sv, (1 - r1) * (1 - r2), (1 + r1) * (1 + r2), min(cin * SIDE**2, n_out))


@pytest.mark.parametrize("layer", ["soc", "gs"])
def test_exact_fft_spectrum_matches_impulse_response(layer: str) -> None:
    if layer == "soc":
        conv = snn.SOC2d(4, 8, 3, 2, groups=2, padding_mode="circular").double()
    else:
        conv = snn.GSOrthogonalConv2d(8, 8, 3, 1, (2, 2), padding_mode="circular").double()
    train_steps(conv, (conv.in_channels, SIDE, SIDE))
    sv = torch.linalg.svdvals(impulse_jacobian(conv, (conv.in_channels, SIDE, SIDE), torch.float64))
    torch.testing.assert_close(snn.layer_singular_values(conv, SIDE), sv)


def test_exact_fft_spectrum_of_a_plain_conv() -> None:
    K = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular", groups=2, bias=False)
    conv = conv.double()
    conv.weight.data.copy_(K)
    sv = torch.linalg.svdvals(impulse_jacobian(conv, (6, SIDE, SIDE), torch.float64))
    torch.testing.assert_close(snn.exact_conv_singular_values(K, SIDE, groups=2), sv)


def test_skew_symbol_is_skew_hermitian_so_exponential_is_unitary() -> None:
    conv = snn.SOC2d(8, 8, 5, padding_mode="circular").double()
    L = conv.normalized_kernel().detach()
    sv = snn.exact_conv_singular_values(L, 16, exp_terms=40)  # exp to machine precision
    torch.testing.assert_close(sv, torch.ones_like(sv))


def test_few_taylor_terms_are_caught() -> None:
    """Negative control: with 2 eval terms the layer is visibly not orthogonal."""
    conv = snn.SOC2d(4, 4, 3, padding_mode="circular", eval_terms=2).double()
    train_steps(conv, (4, SIDE, SIDE))
    sv = torch.linalg.svdvals(impulse_jacobian(conv, (4, SIDE, SIDE), torch.float64))
    tol12 = soc_tolerance(conv, SIDE, terms=12)
    tol2 = soc_tolerance(conv, SIDE)
    assert float((sv - 1).abs().max()) > tol12  # the 12-term tolerance would flag it
    assert float((sv - 1).abs().max()) <= tol2  # and the 2-term bound still holds


def test_taylor_remainder_helper() -> None:
    import math

    assert taylor_remainder(1.0, 0) == pytest.approx(math.e - 1)
    assert taylor_remainder(2.0, 12) == pytest.approx(
        math.exp(2) - sum(2**i / math.factorial(i) for i in range(13)), rel=1e-6
    )
