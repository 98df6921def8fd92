"""A causal transformer with a certified Lipschitz bound (no layer norm, convex residuals).

``f(X) = s_out · W_U · pool(Bₙ ∘ … ∘ B₁ ∘ clip_R(X))`` for input embeddings ``X: (B, T, d)``:

* ``clip_R`` projects every token onto the ball ``‖x_t‖₂ ≤ R`` (``input_radius``, default ``√d``:
  the norm of every row of :class:`UnitEmbedding`, so real token embeddings pass unchanged). A
  projection onto a convex set is 1-Lipschitz, token by token, so the whole map is Lipschitz on
  *every* input even though dot-product attention is only Lipschitz on bounded inputs.
* each ``Bᵢ`` is a convex residual ``x ← (1 − α)x + α·block(x)`` around attention and around an MLP
  ``W₂ σ(W₁ x)`` with a 1-Lipschitz ``σ`` (GeLU/κ, ``κ = max GeLU' = Φ(√2) + √2φ(√2) =
  1.1289041…``, or MaxMin); ``α = 1/(2·depth)`` by default (Newhouse et al. 2025).
* linear maps are GS-orthogonal (:class:`~sorth.nn.GSOrthogonalLinear`, every singular value 1,
  no projection step), dense with a spectral cap (:class:`~sorth.nn.SpectralLinear`) or plain
  dense (the unconstrained baseline). ``s_out`` (``logit_scale``) is a fixed scalar buffer.

Note [transformer bound]: :meth:`LipschitzTransformer.lipschitz_bound` composes per-block
bounds (:class:`~sorth.nn.attention.BlockBound`, Note [attention bounds]) along the layers: with
``r₀ = R`` and ``rᵢ`` bounds on ``max_t ‖x_t‖`` after block ``i``, the Jacobian of block ``i`` at
any point reachable from ``clip_R`` has norm ``≤ Lᵢ(rᵢ₋₁)``, so by the chain rule and the mean value
inequality along a segment (the ball is convex) ``Lip(f) ≤ Πᵢ Lᵢ``. Residual: ``L = (1 − α) +
α·L_block``, ``r ← (1 − α)r + α·r_block``. MLP: ``L = σ(W₂)σ(W₁)``, ``r_block = σ(W₂)σ(W₁)·r/κ``
(``|GeLU(z)| ≤ |z|``; MaxMin keeps norms). Pooling the last token or the mean is 1-Lipschitz in
both norms. Every ``σ`` is a float64 SVD of the actual weight, rounded up (no power iteration).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sorth.errors import BlockSizeError, ShapeError, check_choice, check_positive_int
from sorth.nn.activations import MaxMin
from sorth.nn.attention import BlockBound, DotProductAttention, L2Attention
from sorth.nn.constraints import CONSTRAINTS, SpectralLinear, spectral_norm_bound, weight_matrix
from sorth.nn.linear import GSOrthogonalLinear

__all__ = [
    "GELU_MAX_SLOPE",
    "ConvexResidual",
    "LipschitzCertificate",
    "LipschitzMLP",
    "LipschitzTransformer",
    "ScaledGELU",
    "UnitEmbedding",
]

# sup GeLU'(x) = Φ(√2) + √2·φ(√2), at x = √2 (GeLU'' = φ(x)(2 − x²)); rounded up
_PHI, _DENSITY = 0.5 * (1 + math.erf(1.0)), math.exp(-1) / math.sqrt(2 * math.pi)
GELU_MAX_SLOPE = (_PHI + math.sqrt(2) * _DENSITY) * (1 + 1e-12)
LINEARS = ("gs", "spectral", "dense")
NORMS = ("both", "l2", "max_token")
RADIUS_SLACK = 1e-5  # relative: the clip's float rounding (‖clip(x)‖ ≤ R(1 + ~1e-7) in float32)


class ScaledGELU(nn.Module):
    """``GeLU(x)/κ`` (erf GeLU, ``κ`` = :data:`GELU_MAX_SLOPE`): 1-Lipschitz, ``|f| ≤ |x|/κ``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x) / GELU_MAX_SLOPE


class UnitEmbedding(nn.Module):
    """Token embedding with rows rescaled to ℓ2 norm ``√d`` (RMS 1): ``(B, T) -> (B, T, d)``."""

    def __init__(self, num_embeddings: int, dim: int, *, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_embeddings, dim, device=device, dtype=dtype))
        self.dim = dim

    def rows(self) -> torch.Tensor:
        """The normalised ``(V, d)`` table."""
        return self.weight * (math.sqrt(self.dim) / self.weight.norm(dim=-1, keepdim=True))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.rows())


class LipschitzMLP(nn.Module):
    """``W₂ σ(W₁ x)``, ``σ`` 1-Lipschitz: ``(..., d) -> (..., d)``, hidden ``ratio·d``."""

    def __init__(self, dim: int, ratio: int, make_linear: Callable, activation: str):
        super().__init__()
        check_choice("activation", activation, ("gelu", "maxmin"))
        self.fc_in, self.fc_out = make_linear(dim, ratio * dim), make_linear(ratio * dim, dim)
        self.act = ScaledGELU() if activation == "gelu" else MaxMin(dim=-1)
        self.shrink = 1 / GELU_MAX_SLOPE if activation == "gelu" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))

    def bound(self, radius: float, seq_len: int, *, cap: bool = False) -> BlockBound:
        """Token-wise: the same constant in both norms (Note [transformer bound])."""
        L = _norm(self.fc_in, cap) * _norm(self.fc_out, cap)
        return BlockBound(L, L, L * self.shrink * radius, local=False)


class ConvexResidual(nn.Module):
    """``x ← (1 − α)·x + α·block(x)``; Lipschitz ``(1 − α) + α·L_block``."""

    def __init__(self, block: nn.Module, alpha: float):
        super().__init__()
        if not 0 < alpha <= 1:
            raise BlockSizeError(f"alpha={alpha} must be in (0, 1].")
        self.block, self.alpha = block, float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * x + self.alpha * self.block(x)

    def bound(self, radius: float, seq_len: int, *, cap: bool = False) -> BlockBound:
        b, a = self.block.bound(radius, seq_len, cap=cap), self.alpha
        return BlockBound((1 - a) + a * b.l2, (1 - a) + a * b.max_token,
                          (1 - a) * radius + a * b.radius, b.local)  # fmt: skip

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}"


def _norm(layer: nn.Module, cap: bool) -> float:
    if cap and isinstance(layer, SpectralLinear):
        return layer.max_norm
    return spectral_norm_bound(weight_matrix(layer), next(layer.parameters()).dtype)


@dataclass(frozen=True)
class LipschitzCertificate:
    """Result of :meth:`LipschitzTransformer.lipschitz_bound`.

    ``value`` bounds ``‖f(X) − f(Y)‖ / ‖X − Y‖`` for **all** input embeddings ``X, Y`` of shape
    ``(T, d)``, ``T ≤ seq_len``, in the norm ``norm``: ``"l2"`` (ℓ2 of the whole sequence, i.e. the
    Frobenius norm of ``(T, d)`` in and of the ``(T, V)`` logits out), ``"max_token"`` (``max_t
    ‖x_t‖₂`` in and out; a classifier's output is one vector) or ``"both"`` (the larger, valid in
    either). It is global thanks to the input clip; ``attention_local`` says whether the attention
    bound used inside is the local one (dot product), valid because the clip keeps every token
    within ``input_radius``. ``layers``: ``(name, l2, max_token, radius after)`` per factor.
    """

    value: float
    norm: str
    l2: float
    max_token: float
    seq_len: int
    input_radius: float
    attention_local: bool
    layers: tuple[tuple[str, float, float, float], ...]

    def __float__(self) -> float:
        return self.value


class LipschitzTransformer(nn.Module):
    """Causal Lipschitz transformer for language modelling or sequence classification.

    Args:
        vocab_size: tokens.
        dim, depth, heads: width ``d``, blocks, attention heads.
        max_seq_len: longest sequence ``T``.
        linear: ``"gs"`` (GS-orthogonal), ``"spectral"`` (dense, capped) or ``"dense"``.
        attention: ``"dot"`` (:class:`~sorth.nn.DotProductAttention`) or ``"l2"``.
        positional: ``"rope"`` (dot only) or ``"none"``; default ``"rope"`` for dot-product
            and ``"none"`` for L2 attention.
        activation: ``"gelu"`` (GeLU/κ) or ``"maxmin"``.
        mlp_ratio: MLP hidden width / ``d``.
        alpha: residual weight (default ``1/(2·depth)``).
        attention_scale, attention_output_scale: ``s`` and ``c`` of the attention.
        max_norm, constraint: the :class:`~sorth.nn.SpectralLinear` cap (``linear="spectral"``).
        block_size: GS block size (default per layer, see :class:`~sorth.nn.GSOrthogonalLinear`).
        num_classes: ``None`` for a language model (logits ``(B, T, V)``), else a classifier
            (``(B, C)``) over the pooled sequence.
        pool: ``"last"`` or ``"mean"`` token (classifier).
        logit_scale: the fixed output scale ``s_out`` (see :meth:`calibrate_`).
        input_radius: ``R`` of the input clip (default ``√d``).
        device, dtype: factory kwargs.

    Example:
        >>> net = LipschitzTransformer(65, dim=64, depth=2, heads=4, max_seq_len=32)
        >>> net.calibrate_(2.0)  # logit_scale so that the certified bound is 2
        >>> float(net.lipschitz_bound())  # doctest: +SKIP
        2.0000...
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_seq_len: int = 256,
        linear: Literal["gs", "spectral", "dense"] = "gs",
        attention: Literal["dot", "l2"] = "dot",
        positional: Literal["rope", "none"] | None = None,
        activation: Literal["gelu", "maxmin"] = "gelu",
        mlp_ratio: int = 4,
        alpha: float | None = None,
        attention_scale: float = 1.0,
        attention_output_scale: float = 1 / 3,
        max_norm: float = 1.0,
        constraint: str = "hard_cap",
        block_size: int | None = None,
        num_classes: int | None = None,
        pool: Literal["last", "mean"] = "last",
        logit_scale: float = 1.0,
        input_radius: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("dim", dim), ("depth", depth),
                            ("mlp_ratio", mlp_ratio)):  # fmt: skip
            check_positive_int(name, value)
        check_choice("linear", linear, LINEARS)
        check_choice("attention", attention, ("dot", "l2"))
        check_choice("constraint", constraint, CONSTRAINTS)
        check_choice("pool", pool, ("last", "mean"))
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        if positional is None:
            positional = "rope" if attention == "dot" else "none"
        self.config = {
            "vocab_size": vocab_size,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "max_seq_len": max_seq_len,
            "linear": linear,
            "attention": attention,
            "positional": positional,
            "activation": activation,
            "mlp_ratio": mlp_ratio,
            "alpha": alpha,
            "attention_scale": attention_scale,
            "attention_output_scale": attention_output_scale,
            "max_norm": max_norm,
            "constraint": constraint,
            "block_size": block_size,
            "num_classes": num_classes,
            "pool": pool,
            "logit_scale": logit_scale,
            "input_radius": input_radius,
        }  # fmt: skip  (rebuilds the model: LipschitzTransformer(**config))
        factory = {"device": device, "dtype": dtype}

        def make_linear(i: int, o: int) -> nn.Module:
            if linear == "gs":
                return GSOrthogonalLinear(i, o, bias=False, block_size=block_size, **factory)
            if linear == "spectral":
                return SpectralLinear(i, o, max_norm=max_norm, constraint=constraint, **factory)
            return nn.Linear(i, o, bias=False, **factory)

        alpha = 1 / (2 * depth) if alpha is None else alpha
        Attention = DotProductAttention if attention == "dot" else L2Attention
        self.embed = UnitEmbedding(vocab_size, dim, **factory)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            att = Attention(dim, heads, make_linear, max_seq_len=max_seq_len,
                            scale=attention_scale, output_scale=attention_output_scale,
                            positional=positional)  # fmt: skip
            self.blocks.append(ConvexResidual(att, alpha))
            mlp = LipschitzMLP(dim, mlp_ratio, make_linear, activation)
            self.blocks.append(ConvexResidual(mlp, alpha))
        self.head = make_linear(dim, vocab_size if num_classes is None else num_classes)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale), **factory))
        self.dim, self.max_seq_len, self.pool = dim, max_seq_len, pool
        self.classifier = num_classes is not None
        self.input_radius = math.sqrt(dim) if input_radius is None else float(input_radius)
        if not self.input_radius > 0:
            raise BlockSizeError(f"input_radius={input_radius} must be > 0.")

    # ------------------------------------------------------------------ forward
    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Project each token onto ``‖x_t‖₂ ≤ input_radius``: ``(B, T, d) -> same``, 1-Lipschitz."""
        norms = x.norm(dim=-1, keepdim=True)
        return x * (self.input_radius / norms.clamp_min(self.input_radius))

    def forward(
        self, tokens: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids ``(B, T)`` or ``inputs_embeds`` ``(B, T, d)`` (the certified input) ->
        logits ``(B, T, V)`` (language model) or ``(B, C)`` (classifier)."""
        if (tokens is None) == (inputs_embeds is None):
            raise ShapeError("pass exactly one of tokens (B, T) or inputs_embeds (B, T, d).")
        x = self.embed(tokens) if inputs_embeds is None else inputs_embeds
        if x.dim() != 3 or x.shape[-1] != self.dim or not 0 < x.shape[1] <= self.max_seq_len:
            raise ShapeError(
                f"expected (B, T <= {self.max_seq_len}, {self.dim}) embeddings, got "
                f"{tuple(x.shape)}."
            )
        x = self.clip(x)
        for block in self.blocks:
            x = block(x)
        if self.classifier:
            x = x[:, -1] if self.pool == "last" else x.mean(1)
        return self.logit_scale * self.head(x)

    # ------------------------------------------------------------------ certificate
    @torch.no_grad()
    def lipschitz_bound(
        self, *, seq_len: int | None = None, norm: str = "both", cap: bool = False
    ) -> LipschitzCertificate:
        """Certified upper bound on the Lipschitz constant of ``inputs_embeds -> logits``.

        Valid for every pair of inputs of length ``T ≤ seq_len`` (default ``max_seq_len``), in
        eval mode, from the current weights (Note [transformer bound]); see
        :class:`LipschitzCertificate` for the norms.

        Args:
            seq_len: longest sequence covered (the bounds grow with ``T``).
            norm: ``"both"`` (default), ``"l2"`` or ``"max_token"``.
            cap: use each ``SpectralLinear``'s ``max_norm`` instead of its weight (the worst case
                its constraint allows; used by :meth:`calibrate_`).
        """
        check_choice("norm", norm, NORMS)
        T = self.max_seq_len if seq_len is None else check_positive_int("seq_len", seq_len)
        if self.max_seq_len < T:
            raise ShapeError(f"seq_len={T} exceeds max_seq_len={self.max_seq_len}.")
        r = self.input_radius * (1 + RADIUS_SLACK)
        l2 = inf = 1.0
        layers, local = [], False
        for i, block in enumerate(self.blocks):
            b = block.bound(r, T, cap=cap)
            l2, inf, r, local = l2 * b.l2, inf * b.max_token, b.radius, local or b.local
            kind = "attention" if i % 2 == 0 else "mlp"
            layers.append((f"blocks.{i}.{kind}", b.l2, b.max_token, r))
        head = _norm(self.head, cap) * abs(float(self.logit_scale))
        layers.append(("head", head, head, head * r))
        l2, inf = l2 * head, inf * head
        value = {"l2": l2, "max_token": inf, "both": max(l2, inf)}[norm]
        R = self.input_radius
        return LipschitzCertificate(value, norm, l2, inf, T, R, local, tuple(layers))

    @torch.no_grad()
    def calibrate_(self, target: float, *, seq_len: int | None = None, norm: str = "both") -> None:
        """Set ``logit_scale`` so that the bound is ``target``: the actual bound for GS layers
        (fixed by construction), the capped worst case for spectral layers (so it stays
        ``≤ target`` while the caps hold). Dense layers have no cap: refused."""
        if self.config["linear"] == "dense":
            raise BlockSizeError(
                "calibrate_ needs norm-constrained layers (linear='gs' or 'spectral'); a dense "
                "model's bound follows its weights: read it from lipschitz_bound()."
            )
        if not target > 0:
            raise BlockSizeError(f"target={target} must be > 0.")
        self.logit_scale.fill_(1.0)
        base = self.lipschitz_bound(seq_len=seq_len, norm=norm, cap=True).value
        self.logit_scale.fill_(target / base)
