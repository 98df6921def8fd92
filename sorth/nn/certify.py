"""Certificates and Lipschitz measurements for 1-Lipschitz networks.

* :func:`certified_radius`: ``(f_y − max_{j≠y} f_j) / (√2·L)`` for the predicted class ``y``.
  A prediction is certified at ``ε`` (ℓ2) when the radius exceeds ``ε`` (Li et al. 2019;
  Singla & Feizi 2021: the margin of an ``L``-Lipschitz ``f`` shrinks by at most ``√2·L·ε``).
* :func:`certified_accuracy`: fraction of points that are correct **and** certified at ``eps``.
* :func:`lipschitz_bound`: product over the layers of the power-iteration estimate of each
  layer's Jacobian norm (never assumes a layer is exactly orthogonal: the Taylor truncation
  can push one above 1).
* :func:`exact_conv_singular_values` / :func:`layer_singular_values`: the exact spectrum of a
  circularly padded convolution (Sedghi et al. 2019: block-diagonalised by the 2-D DFT).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sorth.errors import ShapeError, check_positive_int
from sorth.nn.activations import MaxMin, MaxMinPermuted
from sorth.nn.gs_conv import GSOrthogonalConv2d
from sorth.nn.linear import CayleyLinear, GSOrthogonalLinear
from sorth.nn.lipconvnet import LipConvNet, Normalize, SpaceToDepth, nominal_lipschitz
from sorth.nn.shuffle import ChannelShuffle
from sorth.nn.soc import SOC2d
from sorth.permutations import invert_permutation

__all__ = [
    "CertifiedAccuracy",
    "certified_accuracy",
    "certified_radius",
    "exact_conv_singular_values",
    "layer_lipschitz_bounds",
    "layer_singular_values",
    "lipschitz_bound",
]

_ONE_LIPSCHITZ = (MaxMin, MaxMinPermuted, ChannelShuffle, SpaceToDepth, nn.Flatten, nn.Identity,
                  nn.PixelUnshuffle, nn.ReLU)  # fmt: skip
_AFFINE = (SOC2d, GSOrthogonalConv2d, GSOrthogonalLinear, CayleyLinear, nn.Linear, nn.Conv2d)


def certified_radius(logits: torch.Tensor, lipschitz: float = 1.0) -> torch.Tensor:
    """ℓ2 radius certified for the predicted class: ``(N, classes) -> (N,)``.

    ``r = (top1 − top2) / (√2 · lipschitz)``: no input within ``r`` changes the prediction.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ShapeError(f"logits must be (N, classes >= 2), got {tuple(logits.shape)}.")
    top2 = logits.topk(2, dim=1).values  # (N, 2)
    return (top2[:, 0] - top2[:, 1]) / (math.sqrt(2.0) * float(lipschitz))


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Result of :func:`certified_accuracy` (accuracies are fractions in [0, 1])."""

    clean: float
    certified: dict[float, float] = field(default_factory=dict)
    mean_radius: float = 0.0  # over correctly classified points
    num_samples: int = 0
    lipschitz: float = 1.0

    def at(self, eps: float) -> float:
        """Certified accuracy at ``eps`` (one of the values that were evaluated)."""
        return self.certified[float(eps)]


@torch.no_grad()
def certified_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eps: float | Sequence[float] = 36 / 255,
    *,
    lipschitz: float | None = None,
    device: torch.device | str | None = None,
) -> CertifiedAccuracy:
    """Clean and certified accuracy of ``model`` over ``loader`` (run in eval mode).

    Args:
        model: maps ``(N, ...)`` inputs to ``(N, classes)`` logits.
        loader: yields ``(x, y)`` batches (e.g. a ``DataLoader``).
        eps: one radius or several; a point counts when it is correct and its
            :func:`certified_radius` is ``> eps``.
        lipschitz: the network's Lipschitz constant; ``None`` uses :func:`nominal_lipschitz`
            (exact orthogonality assumed). For a strict certificate pass
            ``lipschitz_bound(model, input_shape)``.
        device: where to run (default: the model's parameters' device).

    Returns:
        :class:`CertifiedAccuracy` with ``clean``, ``certified[eps]``, ``mean_radius``.
    """
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    L = nominal_lipschitz(model) if lipschitz is None else float(lipschitz)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = correct = 0
    radius_sum = 0.0
    cert = dict.fromkeys(eps_list, 0)
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            ok = logits.argmax(1) == y
            r = certified_radius(logits.float(), L)
            n += y.numel()
            correct += int(ok.sum())
            radius_sum += float(r[ok].sum())
            for e in eps_list:
                cert[e] += int((ok & (r > e)).sum())
    finally:
        model.train(was_training)
    if n == 0:
        raise ShapeError("certified_accuracy got an empty loader.")
    return CertifiedAccuracy(
        clean=correct / n,
        certified={e: c / n for e, c in cert.items()},
        mean_radius=radius_sum / max(correct, 1),
        num_samples=n,
        lipschitz=L,
    )


# --------------------------------------------------------------------------- Lipschitz bound
def _flatten(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(model, LipConvNet):
        return _flatten(model.layers, prefix + "layers.")
    if isinstance(model, nn.Sequential):
        out = []
        for name, child in model.named_children():
            out += _flatten(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), model)]


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


@torch.no_grad()
def layer_lipschitz_bounds(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    n_iter: int = 50,
    generator: torch.Generator | None = None,
) -> list[tuple[str, float]]:
    """Per-layer Lipschitz constants ``[(name, L_i)]`` of a sequential network, in eval mode.

    Affine layers (SOC / GS convs, linear, conv) get ``n_iter`` power iterations on ``JᵀJ`` at
    the input size they see; MaxMin, shuffles, ``Flatten`` and space-to-depth are exactly
    1-Lipschitz; :class:`Normalize` gives ``1/min(std)``. Other modules raise ``TypeError``.

    Args:
        model: a :class:`LipConvNet`, an ``nn.Sequential`` or a single layer.
        input_shape: one input's shape, e.g. ``(3, 32, 32)`` (a leading batch dim is allowed).
        n_iter: power iterations per affine layer (converges from below; see the module doc).
        generator: RNG of the start vectors.
    """
    check_positive_int("n_iter", n_iter)
    shape = tuple(input_shape)
    shape = shape if len(shape) in (2, 4) else (1, *shape)
    param = next(model.parameters(), None)
    factory = {} if param is None else {"dtype": param.dtype, "device": param.device}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.zeros(shape, **factory)
    was_training = model.training
    model.eval()
    out = []
    try:
        for name, layer in _flatten(model):
            if isinstance(layer, _ONE_LIPSCHITZ):
                out.append((name, 1.0))
            elif isinstance(layer, Normalize):
                out.append((name, layer.lipschitz))
            elif isinstance(layer, _AFFINE):
                out.append((name, _affine_norm(layer, x, n_iter, gen)))
            else:
                raise TypeError(
                    f"lipschitz_bound cannot bound layer {name!r} of type {type(layer).__name__}; "
                    f"supported: sorth.nn orthogonal layers, nn.Linear/Conv2d, MaxMin, shuffles, "
                    f"Normalize (wrap custom blocks in nn.Sequential of these)."
                )
            x = layer(x)
    finally:
        model.train(was_training)
    return out


def lipschitz_bound(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    n_iter: int = 50,
    generator: torch.Generator | None = None,
) -> float:
    """Lipschitz bound of the whole network: ``Π_i L_i`` (see :func:`layer_lipschitz_bounds`).

    Example:
        >>> net = LipConvNet(depth=5, init_channels=8, num_classes=10)
        >>> lipschitz_bound(net, (3, 32, 32))  # doctest: +SKIP
        1.0000...
    """
    out = 1.0
    for _, value in layer_lipschitz_bounds(model, input_shape, n_iter=n_iter, generator=generator):
        out *= value
    return out


# --------------------------------------------------------------------------- exact spectra
def _symbol(kernel: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """DFT symbol of a circular "same" conv: ``(out, in/g, k, k) -> (n, n, out, in)`` complex.

    ``conv(x)`` on the mode ``v·e^{2πi(ω·p)/n}`` returns ``S(ω) v`` times the same mode, with
    ``S(ω) = Σ_{a,b} K[:, :, a, b] e^{2πi(ω₁(a−p) + ω₂(b−p))/n}``, ``p = k // 2``.
    """
    out, cin, k, _ = kernel.shape
    cdtype = torch.complex128 if kernel.dtype == torch.float64 else torch.complex64
    full = torch.block_diag(*[blk.flatten(1) for blk in kernel.reshape(groups, out // groups, -1)])
    full = full.reshape(out, cin * groups, k, k).to(cdtype)  # (out, in, k, k) block-diagonal
    taps = torch.arange(k, device=kernel.device, dtype=torch.float64) - k // 2
    freqs = torch.arange(n, device=kernel.device, dtype=torch.float64)
    E = torch.exp(2j * math.pi * taps[:, None] * freqs[None, :] / n).to(cdtype)  # (k, n)
    return torch.einsum("ocab,aw,bv->wvoc", full, E, E)


def _taylor(S: torch.Tensor, terms: int) -> torch.Tensor:
    out = term = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand_as(S)
    for i in range(1, terms + 1):
        term = term @ S / i
        out = out + term
    return out


@torch.no_grad()
def exact_conv_singular_values(
    kernel: torch.Tensor,
    input_size: int,
    *,
    groups: int = 1,
    exp_terms: int | None = None,
) -> torch.Tensor:
    """All singular values of a circularly padded stride-1 "same" convolution on ``n × n``.

    Args:
        kernel: ``(out, in/groups, k, k)`` (``conv2d`` layout), odd ``k``.
        input_size: ``n`` (the image side).
        groups: grouped convolution.
        exp_terms: if given, the spectrum of the truncated exponential ``Σ_{i≤K} L^{⋆i}/i!``
            instead (needs ``out == in``).

    Returns:
        ``(n²·min(out, in),)`` singular values, descending.
    """
    S = _symbol(kernel, input_size, groups)  # (n, n, out, in)
    if exp_terms is not None:
        if S.shape[-1] != S.shape[-2]:
            raise ShapeError(f"exp_terms needs a square kernel, got {tuple(kernel.shape[:2])}.")
        S = _taylor(S, exp_terms)
    return torch.linalg.svdvals(S).flatten().sort(descending=True).values


def _soc_symbol(layer: SOC2d, n: int) -> torch.Tensor:
    """Symbol of a whole (eval-mode) SOC2d on the post-downsampling ``n × n`` grid."""
    S = _taylor(_symbol(layer.normalized_kernel().detach(), n, layer.groups), layer.eval_terms)
    return S[..., : layer.out_channels, : layer.in_channels * layer.stride**2]


@torch.no_grad()
def layer_singular_values(layer: SOC2d | GSOrthogonalConv2d, input_size: int) -> torch.Tensor:
    """Exact singular values (eval-mode Taylor terms) of a circular SOC / GS conv layer.

    Stride 2 is a permutation of the input, so the spectrum is that of the stride-1 operator
    on the ``n/2`` grid; shuffles only permute the columns of the per-frequency matrices.

    Args:
        layer: with ``padding_mode="circular"``.
        input_size: the side ``n`` of the input images.

    Returns:
        ``((n/s)²·min(out, in·s²),)`` singular values, descending.
    """
    soc1 = layer.conv1 if isinstance(layer, GSOrthogonalConv2d) else layer
    if soc1.padding_mode != "circular":
        raise ShapeError("layer_singular_values is exact for padding_mode='circular' only.")
    n = input_size // soc1.stride
    S = _soc_symbol(soc1, n)  # (n, n, out, in·s²)
    if isinstance(layer, GSOrthogonalConv2d) and isinstance(layer.conv2, SOC2d):
        S2 = _soc_symbol(layer.conv2, n)  # (n, n, out, out)
        if isinstance(layer.shuffle2, ChannelShuffle):
            S2 = S2[..., invert_permutation(layer.shuffle2.perm)]  # S2 · P2
        S = S2 @ S
    return torch.linalg.svdvals(S).flatten().sort(descending=True).values
