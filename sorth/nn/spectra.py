"""Spectra of convolutions by the 2-D DFT (Sedghi et al. 2019): exact values and norm bounds.

A stride-1 convolution with circular padding on an ``Nh × Nw`` torus is block-diagonalised by
the 2-D DFT: on the mode ``v·e^{2πi(ω₁p + ω₂q)}`` it returns ``S(ω) v`` times the same mode,
with the ``(out, in)`` symbol ``S(ω) = Σ_{a,b} K[:, :, a, b]·e^{2πi(ω₁(a − c) + ω₂(b − c))}``.
Its singular values are those of the ``Nh·Nw`` matrices ``S(ω)``.

* :func:`exact_conv_singular_values` / :func:`layer_singular_values`: every singular value of
  a circular convolution, of a truncated convolution exponential, of a circular SOC / GS layer.
* :func:`conv_norm_bound`: a strict upper bound on the spectral norm of any ``conv2d`` (zero
  or circular padding, stride, dilation, groups) at a given input size; see Note [conv bound].

Note [conv bound]: with zero padding the convolution of an ``H × W`` image is a compression
``P·C·E`` of the circular convolution ``C`` on the torus ``(H + dₕ(kₕ−1)) × (W + d_w(k_w−1))``
(``E`` embeds the image with zeros, ``P`` keeps the output pixels): on that torus the circular
result *is* the full linear convolution, and any padding or stride only selects some of its
outputs. So ``‖conv‖ ≤ ‖C‖ = max_ω σ_max(S(ω))``. With circular padding the ``m = H + 2p −
d(k−1)`` outputs per axis are rows of the circular convolution on the ``H × W`` torus, each
used ``⌈m/H⌉`` times at most, so ``‖conv‖ ≤ √(⌈m_h/H⌉·⌈m_w/W⌉)·‖C‖``. A stride keeps a subset
of the rows. The kernel is folded onto the torus (taps that wrap add up), so kernels larger
than the image are handled. Only the half spectrum ``ω₂ ≤ N_w/2`` is computed (a real kernel
has ``S(−ω) = conj S(ω)``), in float64, in chunks of frequencies (bounded memory); ``σ_max``
is ``√λ_max`` of the per-frequency Gram matrix (``eigvalsh``, faster than an SVD).
"""

from __future__ import annotations

import math

import torch

from sorth.errors import ShapeError
from sorth.nn.gs_conv import GSOrthogonalConv2d
from sorth.nn.shuffle import ChannelShuffle
from sorth.nn.soc import SOC2d
from sorth.permutations import invert_permutation

__all__ = [
    "conv_norm_bound",
    "exact_conv_singular_values",
    "layer_singular_values",
]

_CHUNK_BYTES = 64 * 2**20  # complex symbols computed at a time


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


# --------------------------------------------------------------------------- norm bounds
def _pair(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 0 for v in pair):
        raise ShapeError(f"{name}={value!r} must be an int >= 0 or a pair of them.")
    return pair  # type: ignore[return-value]


def _folded_taps(k: int, dilation: int, n: int, device: torch.device) -> torch.Tensor:
    """``(k, n)`` 0/1 matrix: tap ``a`` sits at position ``a·d mod n`` of the ``n``-torus."""
    fold = torch.zeros(k, n, dtype=torch.float64, device=device)
    fold[torch.arange(k, device=device), (torch.arange(k, device=device) * dilation) % n] = 1.0
    return fold


@torch.no_grad()
def circular_conv_norm(
    weight: torch.Tensor,
    torus: tuple[int, int],
    *,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
) -> float:
    """``max_ω σ_max(S(ω))``: the spectral norm of the circular stride-1 convolution on a torus.

    Args:
        weight: ``(out, in/groups, kh, kw)`` in ``conv2d`` layout (any dtype; computed in
            float64).
        torus: ``(Nh, Nw)``.
        groups: grouped convolution (the norm is the largest over the groups).
        dilation: spacing of the kernel taps.

    Returns:
        The norm, as computed by float64 SVDs (see Note [conv bound]).
    """
    out, cin_g, kh, kw = weight.shape
    if out % groups:
        raise ShapeError(f"groups={groups} must divide out_channels={out}.")
    dh, dw = _pair(dilation, "dilation")
    Nh, Nw = torus
    dev = weight.device
    W = weight.detach().to(torch.float64)
    # fold the (dilated) taps onto the torus: (out, in/g, Nh', Nw') with Nh' = min(Nh, span)
    Fh, Fw = _folded_taps(kh, dh, Nh, dev), _folded_taps(kw, dw, Nw, dev)
    W = torch.einsum("ocab,ah,bw->ochw", W, Fh, Fw)
    rows_used = Fh.sum(0).nonzero().flatten()
    cols_used = Fw.sum(0).nonzero().flatten()
    W = W[:, :, rows_used][:, :, :, cols_used].to(torch.complex128)
    w1 = torch.arange(Nh, device=dev, dtype=torch.float64)
    w2 = torch.arange(Nw // 2 + 1, device=dev, dtype=torch.float64)
    E2 = torch.exp(-2j * math.pi * cols_used.double()[:, None] * w2[None, :] / Nw)  # (b, Nw')
    per_freq = out * cin_g * 16
    rows = max(1, _CHUNK_BYTES // max(1, per_freq * w2.numel()))
    best = 0.0
    for start in range(0, Nh, rows):
        w = w1[start : start + rows]
        E1 = torch.exp(-2j * math.pi * w[:, None] * rows_used.double()[None, :] / Nh)  # (r, a)
        S = torch.einsum("ocab,ra,bv->rvoc", W, E1, E2)  # (r, Nw', out, in/g)
        S = S.reshape(*S.shape[:2], groups, out // groups, cin_g)
        best = max(best, _largest_singular_value(S))
    return best


def _largest_singular_value(S: torch.Tensor) -> float:
    """``max σ_max`` over a batch of complex matrices, as ``√λ_max`` of the smaller Gram matrix.

    ``eigvalsh`` of ``SᴴS`` is several times faster than an SVD; forming it costs a relative
    error of ``~n·eps`` in ``σ_max²`` (float64: ~1e-13 here), which the callers' margin covers.
    """
    G = S.mH @ S if S.shape[-1] <= S.shape[-2] else S @ S.mH
    return math.sqrt(max(float(torch.linalg.eigvalsh(G)[..., -1].amax()), 0.0))


@torch.no_grad()
def conv_norm_bound(
    weight: torch.Tensor,
    input_size: tuple[int, int],
    *,
    groups: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    padding_mode: str = "zeros",
) -> float:
    """Strict upper bound on ``‖x ↦ conv2d(x, weight)‖₂`` for ``H × W`` inputs (any stride).

    Zero padding: the norm of the circular convolution on the ``(H + dₕ(kₕ−1)) × (W +
    d_w(k_w−1))`` torus, which contains the zero-padded one (Note [conv bound]). Circular
    padding: the norm on the ``H × W`` torus, times ``√(⌈m_h/H⌉·⌈m_w/W⌉)`` when the padding
    makes more outputs ``m`` than inputs. ``1 × 1`` kernels: the norm of the channel matrix.

    Args:
        weight: ``(out, in/groups, kh, kw)``.
        input_size: ``(H, W)`` of the input images.
        groups, padding, dilation: as in ``conv2d`` (``padding`` as ints per side).
        padding_mode: ``"zeros"`` or ``"circular"``.

    Returns:
        The bound (float64 arithmetic; add a relative margin for rounding, see
        :func:`sorth.nn.lipschitz_bound`).
    """
    H, W = input_size
    _, _, kh, kw = weight.shape
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    span_h, span_w = dh * (kh - 1), dw * (kw - 1)
    if padding_mode == "zeros":
        torus = (1, 1) if kh == kw == 1 else (H + span_h, W + span_w)
        factor = 1.0
    elif padding_mode == "circular":
        torus = (H, W)
        m_h, m_w = H + 2 * ph - span_h, W + 2 * pw - span_w
        factor = math.sqrt(math.ceil(m_h / H) * math.ceil(m_w / W))
    else:
        raise ShapeError(
            f"padding_mode={padding_mode!r}: the bound covers 'zeros' and 'circular' padding; "
            "'reflect'/'replicate' repeat pixels (not bounded here)."
        )
    return factor * circular_conv_norm(weight, torus, groups=groups, dilation=(dh, dw))
