"""Muon: momentum SGD whose update is the orthogonalised momentum (Jordan et al. 2024).

For a matrix parameter with gradient ``G`` and momentum ``M ← μM + G``, the update is
``−lr · NS(G + μM)`` (Nesterov) or ``−lr · NS(M)``, where :func:`newton_schulz` maps a matrix
``U Σ Vᵀ`` to approximately ``U Vᵀ`` (five steps move every ``σ/‖G‖_F ∈ [1e-3, 1]`` into
``[0.47, 1.21]``). So each step changes the weight by spectral norm at most ``lr · NS_MAX``
(:data:`NS_MAX` is checked by the tests), which is what couples Muon to the spectral soft cap
(:func:`~sorth.nn.constraints.soft_cap_strength`).

Only 2-D parameters (the hidden weight matrices) are accepted; train embeddings, gains and
GS-orthogonal generators with another optimiser (e.g. AdamW).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sorth.errors import ShapeError, SOrthValueError, check_positive_int

__all__ = ["NS_COEFFICIENTS", "NS_MAX", "Muon", "newton_schulz"]

# quintic iteration X ← aX + b(XXᵀ)X + c(XXᵀ)²X: p(σ) = aσ + bσ³ + cσ⁵ pushes σ ∈ [1e-3, 1] into
# [0.47, 1.21] in 5 steps (fast rather than exact)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_MAX = 1.25  # ≥ sup of p∘p∘p∘p∘p on (0, 1], which is 1.2024 (see the tests)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate ``U Vᵀ`` of ``G = U Σ Vᵀ``: ``(m, n) -> (m, n)``, computed in float32.

    ``X₀ = G / ‖G‖_F`` (so ``σ ≤ 1``), then ``steps`` quintic iterations (:data:`NS_COEFFICIENTS`)
    on the side with fewer rows.
    """
    if G.dim() != 2:
        raise ShapeError(f"newton_schulz needs a matrix (m, n), got shape {tuple(G.shape)}.")
    a, b, c = NS_COEFFICIENTS
    X = G.to(torch.float32)
    wide = X.shape[0] <= X.shape[1]
    X = X if wide else X.mT
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.mT  # (m, m), m the smaller side
        X = a * X + (b * A + c * A @ A) @ X
    return (X if wide else X.mT).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for matrix parameters: ``W ← (1 − lr·wd)·W − lr · NS(momentum)``.

    Args:
        params: 2-D parameters (``(out, in)`` weights).
        lr: step size; the spectral norm of one update is at most ``lr · NS_MAX``.
        momentum: ``μ``.
        nesterov: use ``G + μM`` (default) rather than ``M``.
        weight_decay: decoupled weight decay.
        ns_steps: Newton–Schulz iterations.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 0.02,
        momentum: float = 0.95,
        *,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
    ):
        if not lr > 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise SOrthValueError(
                f"Muon needs lr > 0, 0 <= momentum < 1, weight_decay >= 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}."
            )
        check_positive_int("ns_steps", ns_steps)
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "weight_decay": weight_decay, "ns_steps": ns_steps}  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ShapeError(
                        f"Muon updates matrices only; got a parameter of shape {tuple(p.shape)}: "
                        "give vectors, embeddings and GS generators to AdamW instead."
                    )

    def max_update_norm(self) -> float:
        """Largest spectral norm one step can add to a weight (for the soft cap coupling)."""
        return max(group["lr"] for group in self.param_groups) * NS_MAX

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One Muon step (``closure`` re-evaluates the loss, as in ``torch.optim``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buf = state.get("momentum")
                if buf is None:
                    buf = state["momentum"] = torch.zeros_like(p)
                buf.mul_(mu).add_(p.grad)
                direction = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(newton_schulz(direction, group["ns_steps"]), alpha=-lr)
        return loss
