"""Shared helpers for the sorth.nn tests: training a layer, Jacobians, Taylor remainders."""

from __future__ import annotations

import math

import torch
from torch import nn

import sorth.nn as snn


def train_steps(module: nn.Module, in_shape: tuple[int, ...], steps: int = 5, lr: float = 0.05):
    """A few Adam steps on a random regression target, so weights leave their initial values.

    Returns the relative change ``‖θ − θ₀‖ / ‖θ₀‖`` of the concatenated parameters.
    """
    p0 = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    dtype = next(module.parameters()).dtype
    x = torch.randn(4, *in_shape, dtype=dtype)
    target = torch.randn_like(module(x))
    for _ in range(steps):
        loss = (module(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    p1 = torch.cat([p.detach().flatten() for p in module.parameters()])
    return float((p1 - p0).norm() / p0.norm())


@torch.no_grad()
def impulse_jacobian(f: nn.Module, in_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Dense Jacobian of an affine ``f`` by impulse responses: ``(in_dim, out_dim)``."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=dtype).view(n, *in_shape)
    return (f(eye) - f(torch.zeros(1, *in_shape, dtype=dtype))).reshape(n, -1)


def taylor_remainder(rho: float, terms: int) -> float:
    """``Σ_{i>K} ρ^i / i!`` ≥ ``‖exp(A) − T_K(A)‖`` for ``‖A‖ ≤ ρ`` (computed term by term)."""
    term, total = 1.0, 0.0
    for i in range(1, terms + 60):
        term *= rho / i
        if i > terms:
            total += term
    return total


@torch.no_grad()
def skew_operator_norm(soc: snn.SOC2d, side: int) -> float:
    """``ρ = ‖L_n ⋆‖`` on the post-downsampling ``side × side`` grid (exact).

    Circular padding: the DFT symbol's largest singular value. Zero "same" padding is a
    compression of the circular conv on a ``(side + k)`` torus, whose norm bounds it.
    """
    n = side if soc.padding_mode == "circular" else side + soc.kernel_size
    K = soc.normalized_kernel().double()
    return float(snn.exact_conv_singular_values(K, n, groups=soc.groups)[0])


def soc_tolerance(soc: snn.SOC2d, side_in: int, terms: int | None = None) -> float:
    """Singular values of ``soc`` (eval) lie in ``1 ± tol``: Taylor remainder + float64 noise."""
    rho = skew_operator_norm(soc, side_in // soc.stride)
    return taylor_remainder(rho, soc.eval_terms if terms is None else terms) + 1e-9
