"""Bounds on softmax attention used by the Lipschitz certificates (all proven below).

* :func:`softmax_jacobian_bound`: ``‖diag(p) − ppᵀ‖₂ ≤ p₁(1 − p₁ + p₂)`` (Note [softmax Jacobian]),
  the refined closed form of the JaSMin paper (Yudin, Gaponov, Kudriashov, Rakhuba 2025); the
  classical bound is ``1/2``.
* :func:`lambert_w`: ``W₀(x)``, the root of ``w·eᵂ = x``, rounded up; ``W₀((n − 1)/e)`` bounds the
  "spread" of L2 attention (Note [L2 attention spread]).
* :func:`causal_column_sum_bound`: a bound on the column sums of causal softmax matrices whose
  logits lie in ``[−β, β]``, so ``‖P‖₂ ≤ √(max col sum · max row sum) = √c``.

Note [softmax Jacobian]: let ``p`` be a probability vector sorted so ``p₁ ≥ p₂ ≥ …``, ``J = diag(p)
− ppᵀ`` and ``b = p₁(1 − p₁ + p₂)``. ``J`` is PSD (``xᵀJx = Var_p(x)``), so ``‖J‖₂ = λ_max``. With
``r = 1 − p₁``: ``b − p₂ = r(p₁ − p₂) ≥ 0`` and ``b ≤ p₁``. If ``p₁ = p₂``, ``λ_max ≤ λ_max(diag p)
= p₁ = b``. Otherwise an eigenvalue above ``p₂`` is a root in ``(p₂, p₁)`` of the secular equation
``g(λ) = Σᵢ pᵢ²/(pᵢ − λ) = 1``, and ``g`` increases there, so it suffices that ``g(b) ≥ 1``. The
first term is ``p₁²/(p₁ − b) = p₁/(p₁ − p₂)``. For ``i ≥ 2``, ``h(t) = t²/(b − t)`` is convex on
``[0, p₂]`` with ``h(0) = 0``, so ``h(pᵢ) ≤ (pᵢ/p₂)·h(p₂)`` and ``Σ_{i≥2} h(pᵢ) ≤ (r/p₂)·h(p₂) =
p₂/(p₁ − p₂)`` (using ``b − p₂ = r(p₁ − p₂)``). So ``g(b) ≥ (p₁ − p₂)/(p₁ − p₂) = 1``. Equality
holds when every ``pᵢ``, ``i ≥ 2``, is 0 or ``p₂`` (two tokens, uniform ``p``,
``(p₁, p₂, …, p₂, 0, …)``).

Note [L2 attention spread]: for ``tⱼ ≥ 0`` and ``n`` terms, ``Σⱼ tⱼe^{−tⱼ} / (1 + Σⱼ e^{−tⱼ}) ≤ w``
with ``w = W₀(n/e)``: it is ``Σⱼ (tⱼ − w)e^{−tⱼ} ≤ w``, and each term is at most ``e^{−(w+1)}``
(at ``t = w + 1``), so the sum is at most ``n·e^{−w−1} = w`` by ``w·eʷ = n/e``.
"""

from __future__ import annotations

import math

import torch

from sorth.errors import SOrthValueError

__all__ = [
    "attention_jacobian_bound",
    "causal_column_sum_bound",
    "lambert_w",
    "softmax_jacobian_bound",
]


def softmax_jacobian_bound(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``p₁(1 − p₁ + p₂) ≥ ‖diag(p) − ppᵀ‖₂`` per probability row: ``(..., n) -> (...)``.

    ``p₁ ≥ p₂`` are the two largest entries along ``dim`` (Note [softmax Jacobian]); ``1 − p₁`` is
    computed as the sum of the other entries (no cancellation when ``p₁ ≈ 1``). Differentiable
    (used by the JaSMin regulariser). A row of one entry gives 0.
    """
    p = p.movedim(dim, -1)
    if p.shape[-1] == 1:
        return torch.zeros_like(p[..., 0])
    top, idx = p.topk(2, dim=-1)
    first = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, idx[..., :1], True)
    others = p.masked_fill(first, 0.0).sum(-1)  # 1 − p₁
    return top[..., 0] * (others + top[..., 1])


def lambert_w(x: float) -> float:
    """``W₀(x)`` for ``x ≥ 0`` (the ``w ≥ 0`` with ``w·eʷ = x``), rounded up: ``w·eʷ ≥ x``."""
    if not (x >= 0 and math.isfinite(x)):
        raise SOrthValueError(f"lambert_w needs a finite x >= 0, got {x!r}.")
    if x == 0:
        return 0.0
    w = math.log1p(x)  # W₀(x) ≤ log(1 + x)
    for _ in range(100):  # Newton on f(w) = w·eʷ − x, convex and increasing: converges from above
        step = (w * math.exp(w) - x) / (math.exp(w) * (w + 1))
        w -= step
        if abs(step) <= 1e-15 * max(w, 1e-300):
            break
    while w * math.exp(w) < x:  # rounded up
        w = math.nextafter(w, math.inf)
    return w * (1 + 1e-12)


def causal_column_sum_bound(beta: float, seq_len: int) -> float:
    """Max column sum of a causal softmax ``P`` (``(T, T)``) whose logits lie in ``[−β, β]``.

    Row ``i`` (1-based) has ``i`` entries, each ``≤ e^β / (e^β + (i − 1)e^{−β}) = 1/(1 + (i − 1)
    e^{−2β})``; column ``j`` sums rows ``i ≥ j``, so every column sum is at most
    ``c = Σ_{i=1}^{T} 1/(1 + (i − 1)e^{−2β}) ≤ T`` (rounded up). ``‖P‖₂ ≤ √c`` since rows sum to 1.
    """
    if not (beta >= 0) or seq_len < 1:
        raise SOrthValueError(f"need beta >= 0 and seq_len >= 1, got {beta!r}, {seq_len!r}.")
    if not math.isfinite(beta) or 2 * beta > 700:
        return float(seq_len)
    decay = math.exp(-2 * beta)
    i = torch.arange(seq_len, dtype=torch.float64)
    c = float((1.0 / (1.0 + i * decay)).sum())
    return min(c * (1 + 1e-12), float(seq_len))


def attention_jacobian_bound(
    P: torch.Tensor,
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    head_norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    output_norm: torch.Tensor,
    scaling: float,
    *,
    rotary: bool = False,
    softmax_bound: str = "jasmin",
) -> torch.Tensor:
    """Local bound on ``‖∂ attention(X) / ∂X‖₂`` (ℓ2 of the ``(T, d)`` sequence) per input.

    For ``Oʰ = Pʰ Vʰ``, ``Pʰ = softmax(scaling · QʰKʰᵀ + mask)``, output ``W_O [O¹ … O^H]``:
    ``dOʰ = Pʰ dVʰ + dPʰ Vʰ`` with row ``i`` of ``dPʰVʰ`` equal to ``dSᵢᵀ Jᵢ Vʰ``, ``Jᵢ = diag(pᵢ) −
    pᵢpᵢᵀ`` and ``dS = scaling·(dQ Kᵀ + Q dKᵀ)``. So ``‖dOʰ‖_F ≤ (‖Pʰ‖₂ n_v + jʰ ‖Vʰ‖₂ · scaling ·
    (n_q ‖Kʰ‖ + ‖Qʰ‖ n_k))‖dX‖_F`` with ``jʰ = maxᵢ ‖Jᵢ‖₂ ≤ maxᵢ p₁(1 − p₁ + p₂)`` (``"jasmin"``,
    :func:`softmax_jacobian_bound`) or ``1/2`` (``"classical"``); heads add in squares, and
    ``‖W_O‖`` multiplies. With rotary embeddings (``rotary=True``) ``Q, K`` are the un-rotated
    projections and ``‖·‖`` their Frobenius norm (a rotation per position keeps every row norm,
    and ``‖·‖₂ ≤ ‖·‖_F``); otherwise the exact spectral norm.

    Args:
        P: attention probabilities ``(B, H, T, T)`` (rows sum to 1; no dropout).
        Q, K, V: ``(B, H, T, d_h)`` (key/value heads repeated for grouped-query attention).
        head_norms: ``(n_q, n_k, n_v)``, each ``(H,)``: spectral norms of head ``h``'s rows of
            the query/key/value weights.
        output_norm: ``σ_max(W_O)`` (0-dim tensor).
        scaling: the logit scale (``1/√d_h`` in most models).
        rotary: whether rotary position embeddings rotate ``Q, K`` inside the attention.
        softmax_bound: ``"jasmin"`` or ``"classical"``.

    Returns:
        ``(B,)`` bounds, differentiable in every argument (for a regulariser).
    """
    if softmax_bound not in ("jasmin", "classical"):
        raise SOrthValueError(
            f"softmax_bound={softmax_bound!r} is not supported; choose 'jasmin' or 'classical'."
        )
    nq, nk, nv = head_norms
    j = softmax_jacobian_bound(P).amax(-1) if softmax_bound == "jasmin" else P.new_tensor(0.5)
    qk_norm = "fro" if rotary else 2
    normQ = torch.linalg.matrix_norm(Q, ord=qk_norm)  # (B, H)
    normK = torch.linalg.matrix_norm(K, ord=qk_norm)
    normV = torch.linalg.matrix_norm(V, ord=2)
    normP = torch.linalg.matrix_norm(P, ord=2)
    heads = normP * nv + j * normV * scaling * (nq * normK + normQ * nk)  # (B, H)
    return output_norm * heads.pow(2).sum(-1).sqrt()
