"""Lipschitz constants of sequential networks: strict upper bounds and power-iteration estimates.

* :func:`lipschitz_bound` / :func:`layer_lipschitz_bounds`: a **strict upper bound**
  ``Π_i L̄_i ≥ Lip(f)`` (ℓ2, eval mode), from an upper bound ``L̄_i`` on every layer
  (Note [strict bound]). This is what certificates need.
* :func:`lipschitz_estimate` / :func:`layer_lipschitz_estimates`: power iteration on each
  layer's ``JᵀJ``. It converges to the norm **from below** (it can stop short of it when the
  top singular values are close), so it is a check of how tight the bound is, not a certificate.

Note [strict bound]: for ``f = f_m ∘ … ∘ f_1``, ``Lip(f) ≤ Π Lip(f_i)``. Per layer (eval mode):

===========================  ====================================================================
layer                        ``L̄_i``
===========================  ====================================================================
``nn.Linear``                ``σ_max(W)`` (float64 SVD)
``CayleyLinear``             ``σ_max`` of its dense ``(out, in)`` weight (float64 SVD)
``GSOrthogonalLinear``       ``Π`` over the GS factors of ``max`` over blocks of ``σ_max(Q_j)``
``nn.Conv2d``                :func:`~sorth.nn.spectra.conv_norm_bound` at the layer's input size
``SOC2d``                    ``max_{|λ|≤ρ̄} |T_K(iλ)|``, ``K`` = ``eval_terms``, ``ρ̄ ≥ ‖L_n ⋆‖``
``GSOrthogonalConv2d``       the product of its two SOC bounds (shuffles are permutations)
``Normalize``                ``max 1/std``
MaxMin, ReLU, shuffles, …    1 (``MaxMin``, ``MaxMinPermuted``, ``ChannelShuffle``,
                             ``SpaceToDepth``, ``nn.PixelUnshuffle``, ``nn.Flatten``,
                             ``nn.Identity``, ``nn.ReLU``)
===========================  ====================================================================

SOC: the skew kernel is exactly skew in floating point (``½(a − b)`` and ``½(b − a)`` are exact
negatives), so for zero or circular "same" padding the convolution ``A = L_n ⋆`` is a skew
operator: normal, with eigenvalues ``iλ``, ``|λ| ≤ ρ = ‖A‖``. The layer applies the Taylor
polynomial ``T_K(z) = Σ_{a≤K} z^a/a!`` of it, also normal, so ``‖T_K(A)‖ = max_j |T_K(iλ_j)| ≤
max_{|λ|≤ρ̄} |T_K(iλ)|`` (:func:`taylor_circle_max`: at most ``1 + Σ_{i>K} ρ̄^i/i!``, and far
less; for ``K = 12`` it returns ``1 + 5e-10`` at ``ρ̄ = 2`` and ``1 + 2.5e-7`` at ``ρ̄ = 3``).
``ρ̄`` is :func:`~sorth.nn.spectra.conv_norm_bound` of ``L_n`` on the post-downsampling grid.
Channel padding and truncation and the stride-2 space-to-depth have norm ≤ 1. A kernel that is
not exactly skew falls back to ``Σ_{i≤K} ρ̄^i/i!`` (valid for any
``A``). Biases do not change a Lipschitz constant.

Rounding: every per-layer value computed by an SVD / FFT (all but the exact 1s) is inflated
by ``1 + max(1e-10, 4·eps)``, ``eps`` of the layer's dtype (float32: 4.8e-7, float64: 1e-10).
The float64 SVDs / FFTs have backward errors ~1e-13, so the result bounds the exact-arithmetic
function of the stored parameters; the ``4·eps`` is an *allowance* for the rounding of the
model's own forward pass (a float32 power iteration measures up to ~1e-7 above the exact norm),
not a proof about it.
Only the modules listed are accepted, and only with their own class ``forward`` and no forward
hooks; nesting is through plain ``nn.Sequential`` and :class:`~sorth.nn.LipConvNet`. Anything
else raises ``TypeError`` naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
from torch import nn

from sorth.errors import SOrthValueError, check_positive_int
from sorth.nn.activations import MaxMin, MaxMinPermuted
from sorth.nn.gs_conv import GSOrthogonalConv2d
from sorth.nn.linear import CayleyLinear, GSOrthogonalLinear
from sorth.nn.lipconvnet import LipConvNet, Normalize, SpaceToDepth
from sorth.nn.shuffle import ChannelShuffle
from sorth.nn.soc import SOC2d, transpose_kernel
from sorth.nn.spectra import conv_norm_bound
from sorth.nn.transformer import LipschitzTransformer

__all__ = [
    "layer_lipschitz_bounds",
    "layer_lipschitz_estimates",
    "lipschitz_bound",
    "lipschitz_estimate",
    "soc_norm_bound",
    "taylor_circle_max",
]

ROUNDING_MARGIN = 1e-10  # relative, on every float64 SVD / FFT value (see the module doc)
ROUNDING_ULPS = 4  # allowance for the forward pass, in units of the layer dtype's eps

_ONE_LIPSCHITZ = (MaxMin, MaxMinPermuted, ChannelShuffle, SpaceToDepth, nn.Flatten, nn.Identity,
                  nn.PixelUnshuffle, nn.ReLU)  # fmt: skip
_AFFINE = (SOC2d, GSOrthogonalConv2d, GSOrthogonalLinear, CayleyLinear, nn.Linear, nn.Conv2d)


def _plain(layer: nn.Module, cls: type) -> bool:
    """``layer`` is a ``cls`` running ``cls.forward`` (no override, no forward hooks)."""
    return (
        isinstance(layer, cls)
        and type(layer).forward is cls.forward
        and not layer._forward_hooks
        and not layer._forward_pre_hooks
    )


def _flatten(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if _plain(model, LipConvNet):
        return _flatten(model.layers, prefix + "layers.")
    if _plain(model, nn.Sequential):
        out = []
        for name, child in model.named_children():
            out += _flatten(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip(".") or type(model).__name__, model)]


def _unsupported(name: str, layer: nn.Module, what: str) -> TypeError:
    return TypeError(
        f"{what} cannot bound layer {name!r} of type {type(layer).__name__}; supported: sorth.nn "
        f"orthogonal layers (SOC2d, GSOrthogonalConv2d, GSOrthogonalLinear, CayleyLinear), "
        f"nn.Linear, nn.Conv2d (zeros/circular padding), Normalize, MaxMin/MaxMinPermuted, "
        f"ReLU, shuffles, Flatten, chained by plain nn.Sequential (no custom forward, no forward "
        f"hooks). Build the model from these, or pass a Lipschitz constant you have proven."
    )


def _rounded(value: float, dtype: torch.dtype = torch.float64) -> float:
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return value * (1.0 + max(ROUNDING_MARGIN, ROUNDING_ULPS * eps))


def _poly_mul(p: list[Fraction], q: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def taylor_circle_max(rho: float, terms: int, *, grid: int = 65536) -> float:
    """Upper bound on ``max_{|λ|≤ρ} |T_K(iλ)|``, ``T_K(z) = Σ_{a≤K} z^a/a!`` (Note [soc bound]).

    ``q(λ) = |T_K(iλ)|² − 1`` is a polynomial (exact rational coefficients; those of degree
    ``≤ K`` vanish); its maximum on ``[0, ρ]`` is at most the maximum on a grid of spacing ``h``
    plus ``h/2·max|q'|``, with ``max|q'| ≤ Σ n|q_n|ρ^{n−1}``, plus the float64 evaluation error.
    """
    re = [Fraction((-1) ** (a // 2), math.factorial(a)) if a % 2 == 0 else Fraction(0)
          for a in range(terms + 1)]  # fmt: skip
    im = [Fraction((-1) ** (a // 2), math.factorial(a)) if a % 2 else Fraction(0)
          for a in range(terms + 1)]  # fmt: skip
    q = [a + b for a, b in zip(_poly_mul(re, re), _poly_mul(im, im), strict=True)]
    q[0] -= 1
    coeffs = torch.tensor([float(c) for c in q], dtype=torch.float64)
    lam = torch.linspace(0.0, rho, grid, dtype=torch.float64)
    values = torch.zeros_like(lam)
    for c in coeffs.flip(0):  # Horner
        values = values * lam + c
    powers = float(rho) ** torch.arange(len(q), dtype=torch.float64)
    absolute = float((coeffs.abs() * powers).sum())  # Σ |q_n| ρ^n
    slope = float((torch.arange(len(q)) * coeffs.abs() * powers / max(rho, 1e-300)).sum())
    err = slope * rho / (grid - 1) / 2 + 8 * len(q) * torch.finfo(torch.float64).eps * absolute
    return math.sqrt(max(1.0 + float(values.max()) + err, 1.0))


def _is_skew(kernel: torch.Tensor, groups: int) -> bool:
    g = kernel.reshape(groups, kernel.shape[0] // groups, *kernel.shape[1:])  # (g, c, c, k, k)
    return bool(torch.equal(g, -transpose_kernel(g)))


@torch.no_grad()
def soc_norm_bound(layer: SOC2d, input_size: tuple[int, int]) -> float:
    """Strict upper bound on ``‖SOC2d‖₂`` in eval mode (``eval_terms``) for ``H × W`` inputs.

    ``max_{|λ|≤ρ̄} |T_K(iλ)|`` with ``ρ̄ ≥ ‖L_n ⋆‖`` on the ``(H/s) × (W/s)`` grid (see the
    module doc, Note [strict bound]); e.g. ``ρ̄ = 2`` and ``K = 12`` give ``1 + 5e-10``.
    """
    s = layer.stride
    kernel = layer.normalized_kernel().detach()  # (C, C/g, k, k)
    if not torch.isfinite(kernel).all():
        raise SOrthValueError(
            f"{type(layer).__name__} has a non-finite kernel (NaN/inf weights): no bound exists; "
            "reload or re-initialise the layer."
        )
    dtype = kernel.dtype
    rho = _rounded(
        conv_norm_bound(
            kernel, (input_size[0] // s, input_size[1] // s), groups=layer.groups,
            padding=layer.kernel_size // 2, padding_mode=layer.padding_mode,
        )
    )  # fmt: skip
    K = layer.eval_terms
    if _is_skew(kernel, layer.groups):
        return _rounded(taylor_circle_max(rho, K), dtype)
    return _rounded(sum(rho**i / math.factorial(i) for i in range(K + 1)), dtype)


def _conv2d_bound(layer: nn.Conv2d, hw: tuple[int, int]) -> float:
    if isinstance(layer.padding, str):
        pads = layer._reversed_padding_repeated_twice  # (left, right, top, bottom)
        padding = (math.ceil((pads[2] + pads[3]) / 2), math.ceil((pads[0] + pads[1]) / 2))
    else:
        padding = tuple(layer.padding)
    return _rounded(
        conv_norm_bound(
            layer.weight, hw, groups=layer.groups, padding=padding,
            dilation=tuple(layer.dilation), padding_mode=layer.padding_mode,
        ),
        layer.weight.dtype,
    )  # fmt: skip


def _matrix_norm(W: torch.Tensor) -> float:
    norm = float(torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=2))
    return _rounded(norm, W.dtype)


def _gs_linear_bound(layer: GSOrthogonalLinear) -> float:
    out = 1.0
    for Q in layer.orth.orthogonal_factors():  # (k, b, b) blocks; permutations have norm 1
        norm = float(torch.linalg.matrix_norm(Q.to(torch.float64), ord=2).amax())
        out *= _rounded(norm, Q.dtype)
    return out


@torch.no_grad()
def _layer_bound(name: str, layer: nn.Module, x: torch.Tensor) -> float:
    hw = tuple(x.shape[-2:])
    if any(_plain(layer, cls) for cls in _ONE_LIPSCHITZ):
        return 1.0
    if _plain(layer, Normalize):
        return _rounded(float((1.0 / layer.std.to(torch.float64)).abs().max()), layer.std.dtype)
    if _plain(layer, SOC2d):
        return soc_norm_bound(layer, hw)
    if _plain(layer, GSOrthogonalConv2d):
        hw2 = (hw[0] // layer.stride, hw[1] // layer.stride)
        b2 = soc_norm_bound(layer.conv2, hw2) if isinstance(layer.conv2, SOC2d) else 1.0
        return soc_norm_bound(layer.conv1, hw) * b2
    if _plain(layer, GSOrthogonalLinear):
        return _gs_linear_bound(layer)
    if _plain(layer, CayleyLinear):
        return _matrix_norm(layer.dense_weight())
    if _plain(layer, nn.Linear):
        return _matrix_norm(layer.weight)
    if _plain(layer, nn.Conv2d) and layer.padding_mode in ("zeros", "circular"):
        return _conv2d_bound(layer, hw)
    raise _unsupported(name, layer, "lipschitz_bound")


def _walk(
    model: nn.Module,
    input_shape: Sequence[int],
    per_layer: Callable[[str, nn.Module, torch.Tensor], float],
) -> list[tuple[str, float]]:
    """``[(name, per_layer(name, layer, x))]`` along the layers, ``x`` the layer's (zero) input."""
    shape = tuple(int(s) for s in input_shape)
    shape = shape if len(shape) in (2, 4) else (1, *shape)
    param = next(model.parameters(), None)
    factory = {} if param is None else {"dtype": param.dtype, "device": param.device}
    layers = _flatten(model)
    x = torch.zeros(shape, **factory)
    was_training = model.training
    model.eval()
    out = []
    try:
        for name, layer in layers:
            out.append((name, per_layer(name, layer, x)))
            with torch.no_grad():
                x = layer(x)
    finally:
        model.train(was_training)
    return out


def layer_lipschitz_bounds(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, float]]:
    """Strict per-layer upper bounds ``[(name, L̄_i)]`` in eval mode (Note [strict bound]).

    Args:
        model: a :class:`LipConvNet`, an ``nn.Sequential`` of supported layers, or one layer.
        input_shape: one input's shape, e.g. ``(3, 32, 32)`` (a leading batch dim is allowed);
            convolution bounds depend on the image size.

    Raises:
        TypeError: a layer the bound does not cover (named in the message).
    """
    return _walk(model, input_shape, _layer_bound)


def lipschitz_bound(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Strict upper bound on the ℓ2 Lipschitz constant of ``model`` (eval mode): ``Π_i L̄_i``.

    Never below the true constant (up to the forward pass's own float rounding; see the
    module doc); use it for certificates. For a LipConvNet it is ``1/min(std)·(1 + ~1e-9)``.

    A :class:`~sorth.nn.LipschitzTransformer` is bounded by its own certificate: ``input_shape``
    is ``(T, d)`` of its ``inputs_embeds`` and the value is
    ``model.lipschitz_bound(seq_len=T).value`` (valid in the ℓ2 norm of the sequence and in the
    max-over-tokens norm).

    Example:
        >>> net = LipConvNet(depth=5, init_channels=8, num_classes=10)
        >>> lipschitz_bound(net, (3, 32, 32))  # doctest: +SKIP
        1.000000002...
    """
    if _plain(model, LipschitzTransformer):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 2 or shape[1] != model.dim:
            raise SOrthValueError(
                f"input_shape={shape} must be (T, {model.dim}) for a LipschitzTransformer (the "
                "inputs_embeds of one sequence)."
            )
        return model.lipschitz_bound(seq_len=shape[0]).value
    out = 1.0
    for _, value in layer_lipschitz_bounds(model, input_shape):
        out *= value
    return out


# --------------------------------------------------------------------------- estimates
def _affine_norm(layer: nn.Module, x: torch.Tensor, n_iter: int, gen: torch.Generator) -> float:
    """Power iteration on ``JᵀJ`` of an affine ``layer`` at inputs shaped like ``x``."""
    f0 = layer(torch.zeros_like(x)).detach()
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(n_iter):
        v.requires_grad_(True)
        with torch.enable_grad():
            u = layer(v) - f0  # J v
            (w,) = torch.autograd.grad(u, v, grad_outputs=u.detach())  # Jᵀ J v
        sigma = float(u.detach().norm())
        if float(w.norm()) == 0.0:
            return 0.0
        v = (w / w.norm()).detach()
    return sigma


def layer_lipschitz_estimates(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    n_iter: int = 50,
    generator: torch.Generator | None = None,
) -> list[tuple[str, float]]:
    """Per-layer power-iteration estimates ``[(name, L_i)]`` (from below; not a certificate).

    Affine layers get ``n_iter`` power iterations on ``JᵀJ`` at the input size they see;
    MaxMin, shuffles, ``Flatten`` and space-to-depth count 1; :class:`Normalize` ``1/min(std)``.

    Args:
        model, input_shape: as :func:`layer_lipschitz_bounds`.
        n_iter: power iterations per affine layer.
        generator: RNG of the start vectors.
    """
    check_positive_int("n_iter", n_iter)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def estimate(name: str, layer: nn.Module, x: torch.Tensor) -> float:
        if any(_plain(layer, cls) for cls in _ONE_LIPSCHITZ):
            return 1.0
        if _plain(layer, Normalize):
            return layer.lipschitz
        if any(_plain(layer, cls) for cls in _AFFINE):
            return _affine_norm(layer, x, n_iter, gen)
        raise _unsupported(name, layer, "lipschitz_estimate")

    return _walk(model, input_shape, estimate)


def lipschitz_estimate(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    n_iter: int = 50,
    generator: torch.Generator | None = None,
) -> float:
    """Power-iteration estimate ``Π_i L_i`` (see :func:`layer_lipschitz_estimates`).

    Approaches each layer's norm from below, so it can be *smaller* than the true Lipschitz
    constant: a diagnostic (how tight is :func:`lipschitz_bound`?), never a certificate.
    """
    out = 1.0
    for _, value in layer_lipschitz_estimates(
        model, input_shape, n_iter=n_iter, generator=generator
    ):
        out *= value
    return out
