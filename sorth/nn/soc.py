"""Skew orthogonal convolution (SOC, Singla & Feizi 2021), grouped as in GSOFT (Section 6.3).

For a raw kernel ``M`` the skew kernel ``L = ½ (M − T(M))`` (``T`` swaps in/out channels and flips
both spatial axes) gives a convolution ``x ↦ L ⋆ x`` whose Jacobian is skew-symmetric, for
circular padding and for zero "same" padding alike. The layer is the convolution exponential

.. math::  \\mathrm{SOC}(x) = \\sum_{i=0}^{K} \\frac{L_n^{\\star i} \\star x}{i!}
           \\approx \\exp(L_n) x, \\qquad L_n = c \\cdot L / \\sigma(L),

which is orthogonal up to the Taylor remainder ``‖R_K‖ ≤ ρ^{K+1}/(K+1)!·e^ρ`` with ``ρ = ‖L_n‖``
(see Note [soc bound]). ``K`` = ``train_terms`` in training, ``eval_terms`` in eval.

Note [soc bound]: ``σ(L)`` is SOC's "fantastic four" estimate, the smallest of the spectral
norms of four reshapings of ``L`` (``(out·h)×(in·w)``, ``(out·w)×(in·h)``, ``out×(in·h·w)``,
``(out·h·w)×in``), tracked by power iteration (``init_iters`` at construction and every
``update_freq`` training steps, ``update_iters`` otherwise, none in eval). As in the reference
code it omits the ``√(hw)`` factor of the proven bound, so ``ρ`` may exceed ``c`` (it is exact
for 1×1 kernels); ``c = correction`` (0.7 for k > 1, 1.0 for 1×1) keeps ``ρ`` small enough that
12 eval terms leave a remainder of ~1e-5. The truncation can therefore push a layer slightly
above 1: bound it (:func:`sorth.nn.lipschitz_bound` accounts for it), never assume it.

Shapes: ``g`` groups, ``c`` channels per group, ``C = g·c = max(in·s², out)``, ``k`` kernel size.
Stride 2 is an invertible downsampling (``pixel_unshuffle``, an exact permutation) followed by a
stride-1 SOC on ``4·in`` channels; ``in < out`` zero-pads channels, ``in > out`` keeps the first
``out`` outputs (both keep the layer 1-Lipschitz and its non-zero singular values at 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sorth.errors import BlockSizeError, ShapeError, check_choice, check_positive_int, divisors

__all__ = [
    "SOC2d",
    "check_kernel_size",
    "conv_exponential",
    "reshaped_kernel_views",
    "skew_kernel",
    "transpose_kernel",
]

PaddingMode = Literal["zeros", "circular"]
PADDING_MODES: tuple[str, ...] = ("zeros", "circular")


def transpose_kernel(M: torch.Tensor) -> torch.Tensor:
    """Adjoint-convolution kernel: ``(g, o, i, k, k) -> (g, i, o, k, k)``, flipped in space."""
    return M.transpose(1, 2).flip(-2, -1)


def skew_kernel(M: torch.Tensor) -> torch.Tensor:
    """``L = ½ (M − T(M))``: ``(g, c, c, k, k)``; ``conv(·, L)`` has a skew-symmetric Jacobian."""
    return 0.5 * (M - transpose_kernel(M))


def reshaped_kernel_views(L: torch.Tensor) -> list[torch.Tensor]:
    """The four "fantastic four" matrices of a grouped kernel ``(g, o, i, h, w)``.

    Returns:
        ``[(g, o·h, i·w), (g, o·w, i·h), (g, o, i·h·w), (g, o·h·w, i)]``.
    """
    g, o, i, h, w = L.shape
    return [
        L.permute(0, 1, 3, 2, 4).reshape(g, o * h, i * w),
        L.permute(0, 1, 4, 2, 3).reshape(g, o * w, i * h),
        L.reshape(g, o, i * h * w),
        L.permute(0, 1, 3, 4, 2).reshape(g, o * h * w, i),
    ]


def _group_mv(M: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``M[j] @ u[j]`` per group: ``(g, m, n), (g, n) -> (g, m)``.

    A loop of ``mv`` (gemv) is ~10× faster on CPU than ``bmm`` with a 1-column right side.
    """
    return torch.stack([torch.mv(Mj, uj) for Mj, uj in zip(M, u, strict=True)])


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _conv(x: torch.Tensor, kernel: torch.Tensor, groups: int, padding_mode: str) -> torch.Tensor:
    p = kernel.shape[-1] // 2
    if padding_mode == "circular" and p:
        return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), kernel, groups=groups)
    return F.conv2d(x, kernel, padding=p, groups=groups)


def conv_exponential(
    x: torch.Tensor,
    kernel: torch.Tensor,
    terms: int,
    *,
    groups: int = 1,
    padding_mode: PaddingMode = "zeros",
) -> torch.Tensor:
    """Truncated convolution exponential ``Σ_{i≤K} L^{⋆i} ⋆ x / i!``: ``(N, C, H, W) -> same``.

    Args:
        x: ``(N, C, H, W)``.
        kernel: ``(C, C/groups, k, k)`` with odd ``k`` (stride 1, "same" padding).
        terms: ``K``, the number of convolutions.
        groups: grouped convolution.
        padding_mode: ``"zeros"`` or ``"circular"``.
    """
    z = term = x
    for i in range(1, terms + 1):
        term = _conv(term, kernel, groups, padding_mode) / i
        z = z + term
    return z


def check_kernel_size(kernel_size: object) -> int:
    """Return an odd positive ``int`` kernel size (``k`` or ``(k, k)``) or raise."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
            raise BlockSizeError(
                f"kernel_size={kernel_size!r}: the convolution exponential needs a square kernel; "
                f"pass an int or (k, k)."
            )
        kernel_size = kernel_size[0]
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise BlockSizeError(
            f"kernel_size={kernel_size} is even: the skew kernel needs a centred, odd kernel so "
            f"that 'same' padding makes the convolution skew-symmetric; use {kernel_size + 1} or "
            f"{kernel_size - 1 or 1}."
        )
    return kernel_size


def _check_stride(stride: object) -> int:
    if isinstance(stride, (tuple, list)) and len(stride) == 2 and stride[0] == stride[1]:
        stride = stride[0]
    if stride not in (1, 2) or isinstance(stride, bool):
        raise BlockSizeError(
            f"stride={stride!r} is not supported: orthogonal convolutions here take stride 1 or 2 "
            f"(stride 2 = invertible 2×2 downsampling); chain stride-2 layers for more."
        )
    return int(stride)


class SOC2d(nn.Module):
    """Skew orthogonal convolution: ``(N, in, H, W) -> (N, out, H/s, W/s)``, 1-Lipschitz.

    Args:
        in_channels: input channels ``in``.
        out_channels: output channels ``out``.
        kernel_size: odd ``k`` (or ``(k, k)``); ``"same"`` padding.
        stride: 1 or 2 (invertible downsampling, then a stride-1 SOC on ``4·in`` channels).
        padding: only ``"same"`` / ``k // 2`` (accepted for ``nn.Conv2d`` compatibility).
        groups: grouped skew kernel; must divide ``C = max(in·s², out)``.
        bias: add a learnable per-channel bias (uniform ``±1/√out`` init).
        padding_mode: ``"zeros"`` or ``"circular"`` (exactly orthogonal operator on a torus).
        train_terms: Taylor terms ``K`` in training (paper: 5).
        eval_terms: Taylor terms in eval (paper: 12).
        correction: ``c`` in ``L_n = c·L/σ``; default 0.7, or 1.0 for 1×1 kernels.
        init_iters: power iterations at construction and every ``update_freq`` steps.
        update_iters: power iterations per training step.
        update_freq: training steps between ``init_iters`` refreshes.
        generator: RNG for the initial kernel and power-iteration vectors.
        device, dtype: factory kwargs.

    Example:
        >>> conv = SOC2d(16, 32, 3, stride=2)
        >>> conv(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | str = "same",
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        *,
        train_terms: int = 5,
        eval_terms: int = 12,
        correction: float | None = None,
        init_iters: int = 50,
        update_iters: int = 1,
        update_freq: int = 200,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        k = check_kernel_size(kernel_size)
        s = _check_stride(stride)
        if padding not in ("same", k // 2):
            raise BlockSizeError(
                f"padding={padding!r}: SOC keeps the spatial size, so only 'same' (= {k // 2}) "
                f"is supported; downsample with stride=2."
            )
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        for name, value in [("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups), ("train_terms", train_terms),
                            ("eval_terms", eval_terms), ("init_iters", init_iters),
                            ("update_freq", update_freq)]:  # fmt: skip
            check_positive_int(name, value)
        if isinstance(update_iters, bool) or not isinstance(update_iters, int) or update_iters < 0:
            raise BlockSizeError(f"update_iters={update_iters!r} must be an int >= 0.")
        C = max(in_channels * s * s, out_channels)
        if C % groups:
            raise BlockSizeError(
                f"groups={groups} must divide the SOC width max(in_channels*stride**2, "
                f"out_channels) = max({in_channels}*{s * s}, {out_channels}) = {C}; valid groups "
                f"here: {divisors(C)}."
            )
        correction = (1.0 if k == 1 else 0.7) if correction is None else float(correction)
        if not correction > 0:
            raise BlockSizeError(f"correction={correction} must be > 0.")
        self.in_channels, self.out_channels, self.kernel_size, self.stride = (
            in_channels, out_channels, k, s,
        )  # fmt: skip
        self.groups, self.padding_mode, self.max_channels = groups, padding_mode, C
        self.train_terms, self.eval_terms, self.correction = train_terms, eval_terms, correction
        self.init_iters, self.update_iters, self.update_freq = init_iters, update_iters, update_freq
        self._steps = 0
        factory = {"device": device, "dtype": dtype}
        c = C // groups
        self.weight = nn.Parameter(torch.empty(groups, c, c, k, k, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        for i, M in enumerate(reshaped_kernel_views(self.weight.detach())):
            self.register_buffer(f"u{i}", torch.empty(groups, M.shape[2], **factory))
            self.register_buffer(f"v{i}", torch.empty(groups, M.shape[1], **factory))
        self.reset_parameters(generator=generator)

    # ------------------------------------------------------------------ parameters
    @torch.no_grad()
    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """``M ~ N(0, 1/C)`` (SOC's init), bias ``U(±1/√out)``, fresh power iteration.

        On the ``meta`` device (shape-only models, e.g. to count parameters) nothing is drawn.
        """
        w = self.weight
        if w.is_meta:
            return
        w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype) / self.max_channels**0.5)
        if self.bias is not None:
            bound = self.out_channels**-0.5
            self.bias.copy_((2 * torch.rand(self.bias.shape, generator=generator) - 1) * bound)
        for i in range(4):
            for name in (f"u{i}", f"v{i}"):
                buf = getattr(self, name)
                buf.copy_(_normalize(torch.randn(buf.shape, generator=generator, dtype=buf.dtype)))
        self.update_sigma_(self.init_iters)

    def skew_weight(self) -> torch.Tensor:
        """The skew kernel ``L``: ``(g, c, c, k, k)``."""
        return skew_kernel(self.weight)

    @torch.no_grad()
    def update_sigma_(self, n_iter: int) -> None:
        """Run ``n_iter`` power iterations on the four reshapings of ``L`` (in place)."""
        mats = reshaped_kernel_views(self.skew_weight())
        for i, M in enumerate(mats):
            u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
            for _ in range(n_iter):
                v.copy_(_normalize(_group_mv(M, u)))  # (g, m)
                u.copy_(_normalize(_group_mv(M.mT, v)))  # (g, n)

    def sigma(self, L: torch.Tensor | None = None) -> torch.Tensor:
        """Per-group estimate ``σ(L)`` (differentiable in ``L``): ``(g,)``; see Note [soc bound]."""
        L = self.skew_weight() if L is None else L
        est = [
            (getattr(self, f"v{i}") * _group_mv(M, getattr(self, f"u{i}"))).sum(-1)
            for i, M in enumerate(reshaped_kernel_views(L))
        ]
        return torch.stack(est).amin(0)

    @torch.compiler.disable
    def _track_sigma(self) -> None:
        n_iter = self.init_iters if self._steps % self.update_freq == 0 else self.update_iters
        self._steps += 1
        if n_iter:
            self.update_sigma_(n_iter)

    def normalized_kernel(self) -> torch.Tensor:
        """``L_n = c·L/σ`` as a grouped ``conv2d`` weight ``(C, c, k, k)``."""
        L = self.skew_weight()
        sigma = self.sigma(L).abs().clamp_min(1e-12)
        L_n = (self.correction / sigma).view(-1, 1, 1, 1, 1) * L
        return L_n.flatten(0, 1)

    @property
    def terms(self) -> int:
        """Taylor terms used by the current mode."""
        return self.train_terms if self.training else self.eval_terms

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__} expects (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}."
            )
        if self.stride == 2 and (x.shape[-1] % 2 or x.shape[-2] % 2):
            raise ShapeError(f"stride=2 needs even H and W, got {tuple(x.shape[-2:])}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.training:
            self._track_sigma()
        if self.stride == 2:
            x = F.pixel_unshuffle(x, 2)  # (N, 4·in, H/2, W/2)
        pad = self.max_channels - x.shape[1]
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))  # (N, C, H', W')
        z = conv_exponential(
            x, self.normalized_kernel(), self.terms, groups=self.groups,
            padding_mode=self.padding_mode,
        )  # fmt: skip
        z = z[:, : self.out_channels]  # (N, out, H', W')
        if self.bias is not None:
            z = z + self.bias.view(1, -1, 1, 1)
        return z

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, groups={self.groups}, bias={self.bias is not None}, "
            f"padding_mode={self.padding_mode!r}, terms=({self.train_terms} train, "
            f"{self.eval_terms} eval), correction={self.correction}"
        )
