"""Orthogonal parametrizations of square blocks: pure functions on ``(..., b, b)`` tensors.

Every map takes an unconstrained square ``A`` (or the packed free entries of a skew matrix) and
returns an orthogonal ``Q``; ``A = 0`` gives ``Q = I`` (identity at initialisation).

============================  ==========================================================
``orthogonal_map``            formula (``K = ½(A − Aᵀ)``, skew-symmetric)
============================  ==========================================================
``"cayley"``                  ``Q = (I + K)(I − K)⁻¹``, by a batched solve ``Q(I − K) = I + K``
``"expm"``                    ``Q = exp(K)``
``"cayley_neumann"``          ``Q ≈ (I + K)(I + K + K² + … + K^{t−1})`` (``t`` = ``neumann_terms``)
============================  ==========================================================

Note [precision]: the solve and the exponential run in float32 (float64 stays float64) with
autocast disabled locally; the result is cast back to the input dtype once.

Note [neumann error]: the truncated Neumann series replaces ``(I − K)⁻¹`` by
``S_t = Σ_{j<t} K^j = (I − K)⁻¹(I − K^t)``, so ``Q_t = C − C K^t`` with ``C`` the exact (orthogonal)
Cayley matrix. With ``ρ = ‖K‖₂`` this gives ``‖Q_t − C‖₂ ≤ ρ^t`` and
``‖Q_tᵀQ_t − I‖₂ ≤ 2ρ^t + ρ^{2t}``: orthogonal only while the parameters stay small (ρ < 1), and
the error grows like ``ρ^t`` once ρ > 1. :func:`neumann_error_bound` computes the bound; prefer
``"cayley"`` (exact) unless profiling says otherwise.

Note [neumann fallback]: :func:`cayley_neumann` bounds ρ of every block by ``‖K‖_F / √2`` (for a
skew ``K`` the eigenvalues come in pairs ``±iλ``, so ``‖K‖_F² ≥ 2ρ²``) and, for each block whose
bound ``2ρ^t + ρ^{2t}`` exceeds ``max_error`` (:data:`NEUMANN_MAX_ERROR` = 1e-2 by default), returns
the exact Cayley solve instead of the series. Every block it returns is thus within
``‖QᵀQ − I‖₂ ≤ max_error`` of orthogonal, whatever the parameters: after a large step (e.g.
PEFT's SGD lr 0.5 test) the series would grow like ``ρ^t`` and training would diverge to NaN.
Small generators (the usual regime) keep the fast matmul-only path.
"""

from __future__ import annotations

from typing import Literal

import torch

from sorth.errors import ShapeError, check_choice, check_positive_int, renamed_keyword

__all__ = [
    "NEUMANN_MAX_ERROR",
    "ORTHOGONAL_MAPS",
    "OrthogonalMap",
    "cayley",
    "cayley_neumann",
    "expm",
    "neumann_error_bound",
    "orthogonal_blocks",
    "orthogonality_error",
    "pack_skew",
    "skew",
    "unpack_skew",
]

# the orthogonal map of a block, named as torch's parametrizations.orthogonal(orthogonal_map=...)
OrthogonalMap = Literal["cayley", "expm", "cayley_neumann"]
ORTHOGONAL_MAPS: tuple[str, ...] = ("cayley", "expm", "cayley_neumann")
NEUMANN_MAX_ERROR = 1e-2  # Note [neumann fallback]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_square(A: torch.Tensor) -> None:
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ShapeError(f"expected square blocks (..., b, b), got shape {tuple(A.shape)}.")


def skew(A: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric part ``K = ½(A − Aᵀ)`` of ``A``: ``(..., b, b) -> (..., b, b)``."""
    _check_square(A)
    return 0.5 * (A - A.mT)


def _triu_index(b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.triu_indices(b, b, offset=1, device=device).unbind(0)


def unpack_skew(p: torch.Tensor, b: int) -> torch.Tensor:
    """Skew matrix from its ``b(b−1)/2`` free entries (strict upper triangle, row-major).

    ``(..., b(b−1)/2) -> (..., b, b)`` with ``K[i, j] = p[idx(i, j)] = −K[j, i]`` for ``i < j``.
    """
    if p.shape[-1] != b * (b - 1) // 2:
        raise ShapeError(
            f"expected {b * (b - 1) // 2} packed entries for b={b}, got {p.shape[-1]}."
        )
    rows, cols = _triu_index(b, p.device)
    K = p.new_zeros(*p.shape[:-1], b, b)
    K[..., rows, cols] = p
    return K - K.mT


def pack_skew(K: torch.Tensor) -> torch.Tensor:
    """Free entries of the skew part of ``K``: ``(..., b, b) -> (..., b(b−1)/2)``."""
    _check_square(K)
    rows, cols = _triu_index(K.shape[-1], K.device)
    return skew(K)[..., rows, cols]


def _eye_like(K: torch.Tensor) -> torch.Tensor:
    return torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)


def _refine_inverse(M: torch.Tensor, X: torch.Tensor, max_iter: int = 6) -> torch.Tensor | None:
    """``M⁻¹`` by Newton–Schulz from a close guess ``X``, or ``None`` if it does not converge.

    ``R = I − M X`` and ``X ← X + X R`` give ``R_new = R²`` exactly, so the iteration
    converges once ``‖R‖₂ ≤ ‖R‖_F < 1`` (required: ``< ½``), and once ``‖R‖_F ≤ √eps`` one more
    step leaves a residual below ``eps``: the result is then as exact as an LU solve (see
    Note [warm Cayley]). Each step is two batched matmuls and one norm.
    """
    shape, b = M.shape, M.shape[-1]
    M, X = M.reshape(-1, b, b), X.reshape(-1, b, b)
    eye = _eye_like(M).expand_as(M)
    tol = torch.finfo(M.dtype).eps ** 0.5
    for _ in range(max_iter):
        R = torch.baddbmm(eye, M, X, alpha=-1)
        err = float(torch.linalg.matrix_norm(R).amax())  # max over blocks of ‖R‖_F ≥ ‖R‖₂
        if not err < 0.5:  # too far (or NaN): convergence is not guaranteed
            return None
        X = torch.baddbmm(X, X, R)
        if err <= tol:
            return X.view(shape)
    return None


# Note [warm Cayley]: while training, the generators move a little per step, so the previous
# step's ``Q`` gives ``(Q_prev + I) / 2`` as a close guess of ``(I − K)⁻¹``; two to five
# Newton–Schulz steps (batched matmuls) then reach the float tolerance, where PyTorch's batched
# LAPACK solve costs ~25 µs per 32 × 32 block on a CPU. The residual is checked on every step
# and anything that does not converge fast (first step, reloaded or reset weights, NaNs) falls
# back to the solve, so the result is always exact to the tolerance. CPU only: on CUDA the
# check would synchronise the device every step, and batched solves are cheap there.
def _warm_usable(K: torch.Tensor, guess: torch.Tensor | None) -> bool:
    return (
        guess is not None
        and K.device.type == "cpu"
        and guess.shape == K.shape
        and guess.device == K.device
        and not torch.compiler.is_compiling()
    )


class _Cayley(torch.autograd.Function):
    """``Q = (I + K)(I − K)⁻¹ = 2(I − K)⁻¹ − I`` with a two-``bmm`` backward.

    Forward: one batched LU solve ``(I − K) X = 2I``, then ``Q = X − I`` (or Newton–Schulz
    refinement of a close ``guess`` of ``Q``, Note [warm Cayley]). Backward: with
    ``M = I − K``, ``dQ = 2 M⁻¹ dK M⁻¹``, so ``∂ℓ/∂K = 2 M⁻ᵀ G M⁻ᵀ = ½ Sᵀ G Sᵀ`` where
    ``S = Q + I = 2M⁻¹`` is rebuilt from the saved output: no second solve (autograd's
    ``linalg.solve`` backward does one more LU solve per block, slow for many small blocks).
    Valid for any ``K`` with ``I − K`` invertible, skew or not.
    """

    @staticmethod
    def forward(ctx, K: torch.Tensor, guess: torch.Tensor | None = None) -> torch.Tensor:
        eye = _eye_like(K)
        M = eye - K
        X = _refine_inverse(M, 0.5 * (guess.to(K.dtype) + eye)) if _warm_usable(K, guess) else None
        if X is not None:  # X = (I − K)⁻¹
            Q = 2 * X - eye
        else:
            X, _ = torch.linalg.solve_ex(M, (2 * eye).expand_as(K))  # X = 2(I − K)⁻¹
            Q = X - eye
        ctx.save_for_backward(Q)
        return Q

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> tuple[torch.Tensor, None]:
        (Q,) = ctx.saved_tensors
        St = (Q + _eye_like(Q)).mT  # Sᵀ = 2(I − K)⁻ᵀ
        return 0.5 * (St @ G @ St), None


def cayley(K: torch.Tensor, guess: torch.Tensor | None = None) -> torch.Tensor:
    """Exact Cayley transform ``Q = (I + K)(I − K)⁻¹`` of a skew ``K``: ``(..., b, b)``.

    Computed as ``Q = 2(I − K)⁻¹ − I`` by one batched solve ``(I − K) X = 2I`` (no explicit
    inverse); the backward is two batched matmuls (see :class:`_Cayley`). ``I − K`` is always
    invertible for skew ``K`` (its singular values are ``√(1 + λ²) ≥ 1``). ``guess``: a
    previous ``Q`` of the same shape; on a CPU it replaces the solve by a few verified
    Newton–Schulz steps when it is close (Note [warm Cayley]), with the same result.
    """
    return _Cayley.apply(K, guess)


def cayley_neumann(
    K: torch.Tensor, terms: int = 5, max_error: float | None = NEUMANN_MAX_ERROR
) -> torch.Tensor:
    """Cayley with ``(I − K)⁻¹`` replaced by ``Σ_{j<terms} K^j``: ``(..., b, b)``.

    Fast (matmuls only) but approximate: see Note [neumann error] and :func:`neumann_error_bound`.
    Blocks whose certified error bound exceeds ``max_error`` get the exact :func:`cayley` solve
    instead (Note [neumann fallback]); ``max_error=None`` always returns the plain series.
    """
    check_positive_int("neumann_terms", terms)
    eye = _eye_like(K)
    series, power = eye, eye
    for _ in range(terms - 1):
        power = power @ K
        series = series + power
    Q = (eye + K) @ series
    if max_error is None or K.numel() == 0:
        return Q
    rho = torch.linalg.matrix_norm(K.detach()) / 2**0.5  # ≥ ‖K‖₂ for skew K
    bound = 2 * rho**terms + rho ** (2 * terms)
    exact = ~(bound <= max_error)  # NaN bounds too
    if torch.compiler.is_compiling():  # no data-dependent branch: compute both
        return torch.where(exact[..., None, None], cayley(K), Q)
    if not bool(exact.any()):
        return Q
    b = K.shape[-1]
    flat_Q, flat_K, mask = Q.reshape(-1, b, b), K.reshape(-1, b, b), exact.reshape(-1)
    flat_Q = flat_Q.index_put((mask,), cayley(flat_K[mask]))
    return flat_Q.view(Q.shape)


def expm(K: torch.Tensor) -> torch.Tensor:
    """Matrix exponential ``Q = exp(K)`` of a skew ``K``: ``(..., b, b)``."""
    return torch.linalg.matrix_exp(K)


def orthogonal_blocks(
    K: torch.Tensor,
    orthogonal_map: OrthogonalMap = "cayley",
    *,
    neumann_terms: int = 5,
    guess: torch.Tensor | None = None,
    method: OrthogonalMap | None = None,
) -> torch.Tensor:
    """Orthogonal blocks from skew blocks ``K`` (``(..., b, b)``), in ``K``'s dtype.

    Args:
        K: skew-symmetric blocks ``(..., b, b)``.
        orthogonal_map: one of :data:`ORTHOGONAL_MAPS` (table above).
        neumann_terms: series length ``t`` for ``"cayley_neumann"``.
        guess: (Cayley only) a previous result, see :func:`cayley`.
        method: deprecated name of ``orthogonal_map`` (a :class:`DeprecationWarning`).

    Returns:
        Orthogonal ``Q`` of ``K``'s shape and dtype. See Note [precision]: the computation runs in
        float32/float64 with autocast off.
    """
    orthogonal_map = renamed_keyword(
        "orthogonal_blocks", "method", "orthogonal_map", method, orthogonal_map, "cayley"
    )
    check_choice("orthogonal_map", orthogonal_map, ORTHOGONAL_MAPS)
    _check_square(K)
    out_dtype = K.dtype
    Kc = K.to(_compute_dtype(out_dtype))
    with torch.autocast(device_type=K.device.type, enabled=False):
        if orthogonal_map == "cayley":
            Q = cayley(Kc, None if guess is None else guess.detach())
        elif orthogonal_map == "expm":
            Q = expm(Kc)
        else:
            Q = cayley_neumann(Kc, neumann_terms, max_error=NEUMANN_MAX_ERROR)
    return Q.to(out_dtype)


def orthogonality_error(Q: torch.Tensor) -> torch.Tensor:
    """``max |QᵀQ − I|`` over all entries and blocks of ``(..., b, b)``, computed in float64."""
    Q64 = Q.to(torch.float64)
    eye = torch.eye(Q.shape[-1], dtype=torch.float64, device=Q.device)
    return (Q64.mT @ Q64 - eye).abs().amax()


def neumann_error_bound(spectral_norm: float, terms: int) -> float:
    """Upper bound ``2ρ^t + ρ^{2t}`` on ``‖QᵀQ − I‖₂`` for :func:`cayley_neumann`.

    ``ρ = ‖K‖₂`` (spectral norm of the skew block), ``t`` = ``terms``; see Note [neumann error].
    """
    e = float(spectral_norm) ** terms
    return 2 * e + e * e
