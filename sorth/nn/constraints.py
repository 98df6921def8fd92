"""Spectral norms of linear layers and the spectral constraints of dense weights.

* :func:`weight_matrix`: the dense ``(out, in)`` weight of ``nn.Linear``,
  :class:`~sorth.nn.GSOrthogonalLinear` or :class:`~sorth.nn.CayleyLinear`, in float64.
* :func:`spectral_norm_bound`: ``σ_max`` of a matrix by a float64 SVD, rounded up by
  ``1 + max(1e-10, 4·eps(dtype))`` (the convention of :mod:`sorth.nn.lipschitz`): an upper bound,
  never an estimate from below (power iteration approaches ``σ_max`` from below, so it is not
  used for certificates).
* :class:`SpectralLinear`: ``nn.Linear`` whose weight is kept at ``σ_max ≤ max_norm`` by
  :meth:`SpectralLinear.project_`, called after every optimiser step (the "project after every
  step" scheme of Newhouse et al. 2025, arXiv 2507.13338). Three projections:

  ============  =================================================================================
  constraint    ``W ← …`` (``σ_i`` the singular values, ``w = max_norm``)
  ============  =================================================================================
  normalize     ``W · min(1, w / σ_max)`` (spectral normalisation; exact SVD norm)
  hard_cap      ``U · diag(min(σ_i, w)) · Vᵀ`` (exact SVD)
  soft_cap      ``σ ↦ σ₁(1 + a σ₁²)``, ``σ₁ = σ(1 − a σ²)``: two odd matrix polynomials, no SVD;
                ``a`` from :func:`soft_cap_strength` so that ``σ ≤ w + max_update`` before the
                step maps to ``≤ w`` (the coupling with Muon's update norm)
  ============  =================================================================================

  Whatever the projection, the certified bounds use the *actual* weights' exact norm.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sorth.errors import SOrthValueError, check_choice
from sorth.nn.linear import CayleyLinear, GSOrthogonalLinear

__all__ = [
    "CONSTRAINTS",
    "SpectralLinear",
    "hard_cap",
    "project_model_",
    "rounded_up",
    "soft_cap",
    "soft_cap_strength",
    "spectral_norm_bound",
    "spectral_normalize",
    "weight_matrix",
]

Constraint = Literal["normalize", "hard_cap", "soft_cap"]
CONSTRAINTS: tuple[str, ...] = ("normalize", "hard_cap", "soft_cap")
ROUNDING_MARGIN = 1e-10  # relative, on every float64 SVD value (as in sorth.nn.lipschitz)
ROUNDING_ULPS = 4  # allowance for the forward pass, in units of the layer dtype's eps


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The dense ``(out, in)`` float64 weight of a linear layer (bias excluded).

    ``GSOrthogonalLinear``: its orthogonal factors (eval-mode solve) cast to float64, then
    multiplied out, so the result is the exact product of the factors the layer uses.
    """
    if isinstance(layer, GSOrthogonalLinear):
        was = layer.orth.training
        layer.orth.eval()
        try:
            with torch.no_grad():
                Q = layer.orth.matrix(dtype=torch.float64).to_dense()
        finally:
            layer.orth.train(was)
        return Q[: layer.out_features, : layer.in_features]
    if isinstance(layer, CayleyLinear):
        return layer.dense_weight().detach().to(torch.float64)
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().to(torch.float64)
    raise TypeError(
        f"weight_matrix supports nn.Linear, GSOrthogonalLinear and CayleyLinear, got "
        f"{type(layer).__name__}."
    )


def rounded_up(value: float, dtype: torch.dtype = torch.float64) -> float:
    """``value · (1 + max(1e-10, 4·eps(dtype)))``: the rounding allowance of every bound."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return value * (1.0 + max(ROUNDING_MARGIN, ROUNDING_ULPS * eps))


def spectral_norm_bound(W: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    """Upper bound on ``σ_max(W)`` (``(..., m, n)``: the max over the batch), float64 SVD.

    Args:
        W: the matrix (any dtype; computed in float64).
        dtype: the dtype the layer runs in, for the rounding allowance (default ``W.dtype``).
    """
    if W.numel() == 0:
        return 0.0
    W64 = W.detach().to(torch.float64)
    if not torch.isfinite(W64).all():
        raise SOrthValueError(
            "a weight has NaN/inf entries: no Lipschitz bound exists; reload or re-initialise it."
        )
    sigma = float(torch.linalg.matrix_norm(W64, ord=2).max())
    return rounded_up(sigma, W.dtype if dtype is None else dtype)


# --------------------------------------------------------------------------- projections
@torch.no_grad()
def spectral_normalize(W: torch.Tensor, max_norm: float = 1.0) -> torch.Tensor:
    """``W · min(1, max_norm / σ_max(W))``: ``(m, n) -> (m, n)``, ``σ_max`` by exact SVD."""
    sigma = float(torch.linalg.matrix_norm(W.to(torch.float64), ord=2))
    return W if sigma <= max_norm else W * (max_norm / sigma)


@torch.no_grad()
def hard_cap(W: torch.Tensor, max_norm: float = 1.0) -> torch.Tensor:
    """``U diag(min(σ_i, max_norm)) Vᵀ`` (exact SVD in float64): ``(m, n) -> (m, n)``."""
    U, S, Vh = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
    return ((U * S.clamp(max=max_norm)) @ Vh).to(W.dtype)


def soft_cap_strength(max_norm: float, max_update: float) -> float:
    """The ``a`` of :func:`soft_cap` that maps ``σ = k = max_norm + max_update`` to ``max_norm``.

    With ``u = a k²`` the two polynomials map ``k`` to ``k(1 − u)(1 + u(1 − u)²)``; setting this to
    ``max_norm`` gives ``u²(u² − 3u + 3) = 1 − max_norm / k``, whose left side increases on
    ``[0, 1]`` (derivative ``u(4u² − 9u + 6) > 0``) from 0 to 1: one root, found by bisection.
    The map ``σ ↦ σ(1 − aσ²)(1 + aσ²(1 − aσ²)²)`` increases while ``aσ² ≤ 1/3``, which holds on
    ``[0, k]`` when ``max_update ≤ 0.306·max_norm`` (then ``u ≤ 1/3``): every ``σ ≤ k`` then lands
    at ``≤ max_norm``. Beyond that the cap is not guaranteed (certificates never assume it).
    """
    if not (max_norm > 0 and max_update >= 0):
        raise SOrthValueError(
            f"soft_cap_strength needs max_norm > 0 and max_update >= 0, got {max_norm}, "
            f"{max_update}."
        )
    k = max_norm + max_update
    target = 1.0 - max_norm / k
    lo, hi = 0.0, 1.0
    for _ in range(60):
        u = (lo + hi) / 2
        lo, hi = (u, hi) if u * u * (u * u - 3 * u + 3) < target else (lo, u)
    return hi / (k * k)


@torch.no_grad()
def soft_cap(W: torch.Tensor, strength: float) -> torch.Tensor:
    """Soft cap ``W ← W₁(I + a W₁ᵀW₁)``, ``W₁ = W(I − a WᵀW)``: ``σ ↦ σ₁(1 + aσ₁²)``."""
    tall = W.shape[-2] >= W.shape[-1]
    M = W if tall else W.mT  # multiply on the smaller side
    M = M - strength * M @ (M.mT @ M)
    M = M + strength * M @ (M.mT @ M)
    return M if tall else M.mT


class SpectralLinear(nn.Linear):
    """``nn.Linear`` (no bias by default) kept at ``σ_max(W) ≤ max_norm`` by :meth:`project_`.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: learnable bias (default off: the transformer's norm propagation assumes none).
        max_norm: the cap ``w`` on the spectral norm.
        constraint: ``"normalize"``, ``"hard_cap"`` or ``"soft_cap"`` (module docstring).
        device, dtype: factory kwargs.

    The constructor rescales the random init to ``σ_max = max_norm``. The constraint holds only
    after :meth:`project_` (call it after each optimiser step; :func:`project_model_` does it
    for a whole model); certificates use the weight's actual norm either way.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        max_norm: float = 1.0,
        constraint: Constraint = "hard_cap",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        check_choice("constraint", constraint, CONSTRAINTS)
        if not float(max_norm) > 0:
            raise SOrthValueError(f"max_norm={max_norm!r} must be > 0 (the spectral-norm cap).")
        self.max_norm, self.constraint = float(max_norm), constraint
        with torch.no_grad():
            sigma = torch.linalg.matrix_norm(self.weight.to(torch.float64), ord=2)
            self.weight.mul_(self.max_norm / float(sigma))

    @torch.no_grad()
    def project_(self, max_update: float = 0.0) -> None:
        """Apply the constraint in place. ``max_update``: soft cap only, the largest spectral
        norm an optimiser step can add (Muon: its learning rate), see :func:`soft_cap_strength`."""
        W = self.weight
        if self.constraint == "normalize":
            W.copy_(spectral_normalize(W, self.max_norm))
        elif self.constraint == "hard_cap":
            W.copy_(hard_cap(W, self.max_norm))
        else:
            W.copy_(soft_cap(W, soft_cap_strength(self.max_norm, max_update)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_norm={self.max_norm}, constraint={self.constraint!r}"


def project_model_(model: nn.Module, max_update: float = 0.0) -> None:
    """Call :meth:`SpectralLinear.project_` on every ``SpectralLinear`` in ``model``."""
    for module in model.modules():
        if isinstance(module, SpectralLinear):
            module.project_(max_update)
