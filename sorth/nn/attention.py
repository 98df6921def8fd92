"""Causal self-attention with a certified Lipschitz bound: ``(B, T, d) -> (B, T, d)``.

Dimension letters: ``B`` batch, ``T`` sequence length, ``d`` width, ``H`` heads, ``d_h = d/H``.
Both layers output ``W_O · c · [o¹; …; o^H]`` (``c`` = ``output_scale``, 1/3 in Newhouse et al.) and
report :class:`BlockBound` from their *actual* weights (:meth:`bound`):

* :class:`DotProductAttention` (Newhouse et al. 2025): ``oʰᵢ = Σ_{j≤i} Pʰᵢⱼ vʰⱼ``, ``Pʰ = causal
  softmax(s·qᵢ·kⱼ/d_h)`` (``1/d_h``, not ``1/√d_h``), RoPE on ``q, k`` (orthogonal per position, so
  every norm below is unchanged). **Local**: valid on inputs with ``max_t ‖x_t‖₂ ≤ a``.
* :class:`L2Attention` (Kim, Papamakarios, Mnih 2021): tied ``yᵢ = W_Q xᵢ`` for queries and keys,
  ``Pʰᵢⱼ ∝ exp(−s‖yʰᵢ − yʰⱼ‖²/d_h)``, values ``yʰⱼ``. **Global**, growing with ``T``.

Note [attention bounds]: norms are ``n_qʰ = σ_max`` of head ``h``'s rows of ``W_Q`` (likewise
``n_k, n_v``), ``N_Q = σ_max(W_Q)``, …; ``‖dX‖_F`` is the ℓ2 norm of the whole sequence
("l2"), ``‖dX‖_∞ = max_t ‖dx_t‖`` ("max_token"). ``J = diag(p) − ppᵀ`` is the softmax
Jacobian of a row; ``wᵀJz = Cov_p(w, z)``.

Dot product, ``|logits| ≤ βʰ = s·n_qʰ n_kʰ a²/d_h``, ``cʰ`` = :func:`causal_column_sum_bound`
``(βʰ, T)``. ``doʰ = Pʰ dVʰ + (row i: Vᵀ Jᵢ dSᵢ)``, ``dSᵢⱼ = (s/d_h)(dqᵢ·kⱼ + qᵢ·dkⱼ)``.
* max_token: ``‖Σⱼ Pᵢⱼ dvⱼ‖ ≤ max‖dvⱼ‖``; ``|uᵀVᵀJᵢdSᵢ| ≤ √(Var v·u · Var dSᵢ) ≤ max‖vⱼ‖·max|dSᵢⱼ|
  ≤ n_vʰa · 2βʰ/a``. Heads attend to different tokens, so they add in squares:
  ``L∞ = c·N_O·√(Σ_h (n_vʰ(1 + 2βʰ))²)``.
* l2: ``‖Pʰ‖₂ ≤ √cʰ``; ``‖Vᵀ Jᵢ z‖ ≤ ‖VᵀJᵢ^{1/2}‖‖Jᵢ^{1/2}z‖ ≤ max‖vⱼ‖ √(Σⱼ Pᵢⱼ zⱼ²)``, and
  ``√(Σᵢⱼ Pᵢⱼ dSᵢⱼ²) ≤ (s a/d_h)(n_kʰ‖dQʰ‖_F + n_qʰ √cʰ ‖dKʰ‖_F)`` (Minkowski, column sums ≤ cʰ). So
  ``L₂ = c·N_O·(maxₕ√cʰ·N_V + M₁N_Q + M₂N_K)``, ``M₁ = maxₕ m_h n_kʰ``, ``M₂ = maxₕ m_h n_qʰ√cʰ``,
  ``m_h = s a² n_vʰ/d_h``.
* output radius ``‖yᵢ‖ ≤ c·N_O·√(Σ_h n_vʰ²)·a`` (each head is a convex combination of values).

L2 attention, ``w = W₀((T − 1)/e)`` (Note [L2 attention spread]: ``Σⱼ Pᵢⱼ tᵢⱼ ≤ w`` for ``tᵢⱼ =
s‖yᵢ − yⱼ‖²/d_h``, and ``Pᵢⱼtᵢⱼ ≤ 1/e``). With ``eⱼ = yⱼ − yᵢ``: ``doᵢ = Σⱼ Pᵢⱼ dyⱼ + 2γ Cov_{Pᵢ}(y)
dyᵢ − 2γ Σⱼ Pᵢⱼ (eⱼ − ē) eⱼᵀ dyⱼ`` (``γ = s/d_h``); the values ``y`` being the tied projection is
what makes the covariance terms bounded. ``γ‖Cov‖ ≤ w``; the last term is at most ``2√w ·
√(Σⱼ cᵢⱼ‖dyⱼ‖²)``, ``cᵢⱼ = γPᵢⱼ‖eⱼ‖² ≤ 1/e``, ``Σⱼ cᵢⱼ ≤ w``. So
``L∞ = c·N_O·√(Σ_h n_qʰ²)·(1 + 4w)`` and ``L₂ = c·N_O·N_Q·(√T + 2w + 2√(w(T − 1)/e))``. Both grow
with ``T`` and do not depend on the input: global bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sorth.errors import BlockSizeError, ShapeError, check_choice, check_positive_int
from sorth.nn.constraints import SpectralLinear, spectral_norm_bound, weight_matrix
from sorth.nn.softmax_bounds import causal_column_sum_bound, lambert_w

__all__ = ["BlockBound", "DotProductAttention", "L2Attention", "apply_rope", "rope_tables"]

Positional = Literal["rope", "none"]


class BlockBound(NamedTuple):
    """Bounds of one block on inputs with ``max_t ‖x_t‖ ≤ radius``.

    ``l2``: Lipschitz constant in the ℓ2 norm of the whole ``(T, d)`` sequence; ``max_token``: in
    ``max_t ‖x_t‖₂``; ``radius``: bound on ``max_t ‖block(x)_t‖₂``; ``local``: whether the two
    constants hold only for that input radius (``False``: for every input).
    """

    l2: float
    max_token: float
    radius: float
    local: bool


def rope_tables(
    seq_len: int, head_dim: int, *, base: float = 10000.0, device=None, dtype=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin``: ``(T, d_h/2)`` angles ``t·base^{−2i/d_h}`` of rotary position embeddings."""
    half = head_dim // 2
    inv = base ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv[None, :]  # (T, d_h/2)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(x[i], x[i + d_h/2])`` by position: ``(B, H, T, d_h) -> same``.

    Each position gets a fixed rotation, an orthogonal map: norms are kept.
    """
    T, half = x.shape[-2], x.shape[-1] // 2
    c, s = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def head_norms(layer: nn.Module, heads: int, cap: bool) -> tuple[float, list[float]]:
    """``(σ_max(W), [σ_max of head h's rows of W])`` of a linear layer, upper bounds.

    ``cap``: for a :class:`SpectralLinear`, use its ``max_norm`` (the worst case the constraint
    allows) instead of the current weight.
    """
    if cap and isinstance(layer, SpectralLinear):
        return layer.max_norm, [layer.max_norm] * heads
    W = weight_matrix(layer)  # (out, in) float64
    dtype = next(layer.parameters()).dtype
    rows = W.reshape(heads, W.shape[0] // heads, W.shape[1])  # (H, d_h, in)
    return spectral_norm_bound(W, dtype), [spectral_norm_bound(r, dtype) for r in rows]


class _Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        make_linear: Callable[[int, int], nn.Module],
        *,
        max_seq_len: int,
        scale: float,
        output_scale: float,
        positional: Positional,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        check_positive_int("max_seq_len", max_seq_len)
        check_choice("positional", positional, ("rope", "none"))
        if dim % heads or (positional == "rope" and (dim // heads) % 2):
            raise BlockSizeError(
                f"heads={heads} must divide dim={dim} (and d_h = dim/heads must be even for "
                f"RoPE); try heads in {[h for h in range(1, dim + 1) if dim % h == 0]}."
            )
        if not (scale > 0 and output_scale > 0):
            raise BlockSizeError(f"scale={scale} and output_scale={output_scale} must be > 0.")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.max_seq_len, self.scale, self.output_scale = max_seq_len, scale, output_scale
        self.positional = positional
        self.o = make_linear(dim, dim)
        if positional == "rope":
            cos, sin = rope_tables(max_seq_len, self.head_dim)
            self.register_buffer("rope_cos", cos.float(), persistent=False)
            self.register_buffer("rope_sin", sin.float(), persistent=False)

    def _split(self, x: torch.Tensor, rope: bool) -> torch.Tensor:
        B, T, _ = x.shape
        x = x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d_h)
        return apply_rope(x, self.rope_cos, self.rope_sin) if rope else x

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim or x.shape[1] > self.max_seq_len:
            raise ShapeError(
                f"{type(self).__name__} expects (B, T <= {self.max_seq_len}, {self.dim}), got "
                f"{tuple(x.shape)}."
            )

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = o.shape
        return self.o(self.output_scale * o.transpose(1, 2).reshape(B, T, self.dim))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, scale={self.scale}, "
            f"output_scale={self.output_scale:.4g}, positional={self.positional!r}"
        )


class DotProductAttention(_Attention):
    """Newhouse et al.'s causal attention ``W_O · c · softmax(s·QKᵀ/d_h) V``: ``(B, T, d) -> same``.

    Args:
        dim, heads: width and number of heads (``d_h = dim/heads``).
        make_linear: ``(in, out) -> module`` building ``W_Q, W_K, W_V, W_O`` (no bias).
        max_seq_len: longest sequence (RoPE tables).
        scale: ``s`` in ``s·qᵀk/d_h``.
        output_scale: ``c`` (default 1/3).
        positional: ``"rope"`` or ``"none"``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        make_linear: Callable[[int, int], nn.Module],
        *,
        max_seq_len: int = 256,
        scale: float = 1.0,
        output_scale: float = 1 / 3,
        positional: Positional = "rope",
    ):
        super().__init__(dim, heads, make_linear, max_seq_len=max_seq_len, scale=scale,
                         output_scale=output_scale, positional=positional)  # fmt: skip
        self.q, self.k, self.v = (make_linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d) -> (B, T, d)``, causal."""
        self._check(x)
        rope = self.positional == "rope"
        q, k = self._split(self.q(x), rope), self._split(self.k(x), rope)  # (B, H, T, d_h)
        v = self._split(self.v(x), False)
        scale = self.scale / self.head_dim
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale))

    def bound(self, radius: float, seq_len: int, *, cap: bool = False) -> BlockBound:
        """Note [attention bounds] on inputs with ``max_t ‖x_t‖ ≤ radius`` and ``T ≤ seq_len``."""
        H, dh, s, a, c = self.heads, self.head_dim, self.scale, radius, self.output_scale
        NQ, nq = head_norms(self.q, H, cap)
        NK, nk = head_norms(self.k, H, cap)
        NV, nv = head_norms(self.v, H, cap)
        NO, _ = head_norms(self.o, 1, cap)
        beta = [s * q * k * a * a / dh for q, k in zip(nq, nk, strict=True)]
        cols = [causal_column_sum_bound(b, seq_len) for b in beta]
        inf = c * NO * math.sqrt(sum((v * (1 + 2 * b)) ** 2 for v, b in zip(nv, beta, strict=True)))
        m = [s * a * a * v / dh for v in nv]
        M1 = max(mh * k for mh, k in zip(m, nk, strict=True))
        M2 = max(mh * q * math.sqrt(col) for mh, q, col in zip(m, nq, cols, strict=True))
        l2 = c * NO * (math.sqrt(max(cols)) * NV + M1 * NQ + M2 * NK)
        out = c * NO * math.sqrt(sum(v * v for v in nv)) * a
        return BlockBound(l2, inf, out, local=True)


class L2Attention(_Attention):
    """Globally Lipschitz L2 self-attention with tied ``W_Q = W_K`` (Kim et al. 2021), causal.

    ``Pʰᵢⱼ ∝ exp(−s‖yʰᵢ − yʰⱼ‖²/d_h)`` over ``j ≤ i``, ``y = W_Q x``, output
    ``W_O · c · [Pʰ Yʰ]_h``. Args as :class:`DotProductAttention`; ``positional`` must be
    ``"none"`` (a position-dependent rotation of ``y`` would break the tied structure).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        make_linear: Callable[[int, int], nn.Module],
        *,
        max_seq_len: int = 256,
        scale: float = 1.0,
        output_scale: float = 1 / 3,
        positional: Positional = "none",
    ):
        if positional != "none":
            raise BlockSizeError(
                f"L2Attention takes positional='none' (got {positional!r}): its Lipschitz proof "
                "needs the same projection for queries, keys and values; use DotProductAttention "
                "for RoPE."
            )
        super().__init__(dim, heads, make_linear, max_seq_len=max_seq_len, scale=scale,
                         output_scale=output_scale, positional=positional)  # fmt: skip
        self.q = make_linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d) -> (B, T, d)``, causal."""
        self._check(x)
        y = self._split(self.q(x), False)  # (B, H, T, d_h)
        sq = y.pow(2).sum(-1)  # (B, H, T)
        dist = sq[..., :, None] + sq[..., None, :] - 2 * y @ y.mT  # ‖yᵢ − yⱼ‖², (B, H, T, T)
        T = x.shape[1]
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        logits = (-self.scale / self.head_dim * dist.clamp_min(0)).masked_fill(~mask, -math.inf)
        return self._merge(logits.softmax(-1) @ y)

    def bound(self, radius: float, seq_len: int, *, cap: bool = False) -> BlockBound:
        """Note [attention bounds]: global (``radius`` only propagates the activation norms)."""
        H, c, T = self.heads, self.output_scale, seq_len
        NQ, nq = head_norms(self.q, H, cap)
        NO, _ = head_norms(self.o, 1, cap)
        w = lambert_w((T - 1) / math.e)
        heads = math.sqrt(sum(q * q for q in nq))
        inf = c * NO * heads * (1 + 4 * w)
        l2 = c * NO * NQ * (math.sqrt(T) + 2 * w + 2 * math.sqrt(w * (T - 1) / math.e))
        return BlockBound(l2, inf, c * NO * heads * radius, local=False)
