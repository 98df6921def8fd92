"""The GS matrix class: block-diagonal factors interleaved with fixed permutations.

Paper Definition 5.1 (m factors, Definition 3.1 is ``m = 2``)::

    A = P_{m+1} · B_m · P_m · B_{m-1} ··· P_2 · B_1 · P_1

Each ``B_i`` is block-diagonal with ``k_i`` blocks of shape ``b_out_i × b_in_i`` and is stored as
a ``(k_i, b_out_i, b_in_i)`` tensor; each ``P_i`` is a ``torch.long`` index vector in the scatter
convention (``P @ x == x[..., perm]``, see Note [scatter] in :mod:`sorth.permutations`) or
``None`` for the identity. The chain condition is ``k_i · b_out_i == k_{i+1} · b_in_{i+1}``.

``GS(P_L, P, P_R)`` of Definition 3.1 is ``A = P_L · L · P · R · P_R``: factors ``[R, L]`` and
permutations ``[P_R, P, P_L]``.

======================  =============================================  ============================
paper                   here                                           shape
======================  =============================================  ============================
``B_i`` (``L``, ``R``)  ``factors[i-1]`` (``factors = [R, L]``)        ``(k_i, b_out_i, b_in_i)``
``P_i``                 ``perms[i-1]``                                 ``(n_i,)`` long or ``None``
``r`` (GSOFT)           ``nblocks``                                    ``n = r · b``
======================  =============================================  ============================

Legend: ``k`` blocks, ``b`` block size, ``n`` features, ``...`` batch dimensions.

This module is the math (the class, its algebra and structure); the multiply runs in
:mod:`sorth.kernels` (one dispatch point picks the torch or the Triton kernel), the sizes in
:mod:`sorth.sizing` and Algorithm 1 / Proposition 1 in :mod:`sorth.projection`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from sorth.errors import ShapeError
from sorth.kernels.dispatch import gs_apply, gs_apply_planned
from sorth.kernels.plan import Perm, ShufflePlan, shuffle_plan
from sorth.kernels.reference import gs_apply_reference
from sorth.permutations import (
    butterfly_permutation,
    compose_permutations,
    gs_permutation,
    invert_permutation,
    validate_permutation,
)
from sorth.projection import block_rank_bound, project_two_factor
from sorth.sizing import (
    min_butterfly_factors_for_density,
    min_factors_for_density,
    resolve_blocks,
)

__all__ = [  # the kernels and sizes are re-exported here, where they were first defined
    "GSMatrix",
    "ShufflePlan",
    "gs_apply",
    "gs_apply_reference",
    "min_butterfly_factors_for_density",
    "min_factors_for_density",
    "resolve_blocks",
    "shuffle_plan",
]


class GSMatrix:
    """An ``n_out × n_in`` matrix in the GS class, held as factors and index permutations.

    ``A = P_{m+1} · B_m · P_m ··· B_1 · P_1`` (paper Definition 5.1). Build one with a named
    constructor (:meth:`gs`, :meth:`gsoft`, :meth:`block_diagonal`, :meth:`butterfly`,
    :meth:`monarch`, :meth:`shuffled`) or directly from ``factors`` and ``perms``.

    ``gs @ x`` and ``gs.apply(x)`` apply ``A`` to the last dim of ``x`` (``(..., n_in) ->
    (..., n_out)``); ``x @ gs`` is the row-vector product ``(..., n_out) -> (..., n_in)``;
    ``gs1 @ gs2`` composes. The object is a plain container: gradients flow to the factor
    tensors through every operation.

    Args:
        factors: ``m ≥ 1`` tensors ``(k_i, b_out_i, b_in_i)``, ``B_1`` first.
        perms: ``m + 1`` permutations (long index vectors or ``None`` for identity),
            ``P_1`` first; ``None`` means all identity.
    """

    def __init__(self, factors: Sequence[torch.Tensor], perms: Sequence[Perm] | None = None):
        factors = list(factors)
        if not factors:
            raise ShapeError("a GS matrix needs at least one block-diagonal factor.")
        for i, B in enumerate(factors):
            if not isinstance(B, torch.Tensor) or B.dim() != 3:
                shape = tuple(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__
                raise ShapeError(
                    f"factor {i} has shape {shape}; expected a (nblocks, block_out, block_in) "
                    "tensor."
                )
        perms = [None] * (len(factors) + 1) if perms is None else list(perms)
        if len(perms) != len(factors) + 1:
            raise ShapeError(
                f"{len(factors)} factors need {len(factors) + 1} permutations "
                f"(P_1 … P_m+1, None for identity); got {len(perms)}."
            )
        sizes = _chain_sizes(factors)
        self.factors: list[torch.Tensor] = factors
        self.perms: list[Perm] = [
            None if P is None else validate_permutation(P, n, f"perms[{i}]").to(factors[0].device)
            for i, (P, n) in enumerate(zip(perms, sizes, strict=True))
        ]

    @classmethod
    def _trusted(
        cls, factors: list[torch.Tensor], perms: list[Perm], plan: ShufflePlan | None = None
    ) -> GSMatrix:
        """Build without validation (hot path: the inputs come from validated objects)."""
        self = cls.__new__(cls)
        self.factors, self.perms, self._plan = factors, perms, plan
        return self

    # ----------------------------------------------------------------- named constructors
    @classmethod
    def gs(
        cls,
        L: torch.Tensor,
        R: torch.Tensor,
        perm: Perm = None,
        perm_left: Perm = None,
        perm_right: Perm = None,
    ) -> GSMatrix:
        """``GS(P_L, P, P_R)`` of Definition 3.1: ``A = P_L · L · P · R · P_R``.

        ``L``: ``(k_L, b_L1, b_L2)``, ``R``: ``(k_R, b_R1, b_R2)`` with ``k_L·b_L2 = k_R·b_R1``.
        ``perm`` defaults to ``P_(k_L, s)`` (``s`` the inner size), the paper's choice.
        """
        if perm is None and L.dim() == 3 and R.dim() == 3:
            s = R.shape[0] * R.shape[1]
            if s % L.shape[0] == 0:
                perm = gs_permutation(L.shape[0], s, device=R.device)
        return cls([R, L], [perm_right, perm, perm_left])

    @classmethod
    def gsoft(cls, L: torch.Tensor, R: torch.Tensor) -> GSMatrix:
        """GSOFT's ``Q = Pᵀ · L · P · R`` with ``P = P_(r, r·b)``; ``L, R``: ``(r, b, b)``."""
        _check_square_blocks("L", L)
        _check_square_blocks("R", R)
        if L.shape != R.shape:
            raise ShapeError(
                f"GSOFT needs L and R of the same shape (r, b, b); got {tuple(L.shape)} and "
                f"{tuple(R.shape)}."
            )
        r, b, _ = R.shape
        P = gs_permutation(r, r * b, device=R.device)
        return cls._trusted([R, L], [None, P, invert_permutation(P)])

    @classmethod
    def shuffled(
        cls, factors: Sequence[torch.Tensor], perm_left: Perm = None, perm_right: Perm = None
    ) -> GSMatrix:
        """``GS(P_L, P_(k_m,·), …, P_(k_2,·), P_R)``: Theorem 2's chain of ``m`` factors.

        Between ``B_{i-1}`` and ``B_i`` the shuffle is ``P_(k_i, n_i)`` (``k_i`` blocks of the next
        factor), so each block of ``B_i`` gathers entries from every block of ``B_{i-1}``.
        """
        factors = list(factors)
        sizes = _chain_sizes(factors)
        inner = [
            gs_permutation(B.shape[0], n, device=B.device)
            for B, n in zip(factors[1:], sizes[1:-1], strict=True)
        ]
        return cls(factors, [perm_right, *inner, perm_left])

    @classmethod
    def block_diagonal(cls, blocks: torch.Tensor) -> GSMatrix:
        """OFT: one block-diagonal factor ``diag(B_1..B_k)``; ``blocks``: ``(k, b_out, b_in)``."""
        return cls([blocks])

    @classmethod
    def butterfly(cls, factors: Sequence[torch.Tensor]) -> GSMatrix:
        """BOFT's block butterfly ``∏_i Π_iᵀ · diag(B_i) · Π_i`` with ``m`` factors ``(r, b, b)``.

        ``Π_i`` = :func:`~sorth.permutations.butterfly_permutation` ``(i, b, n)``: factor ``i``
        mixes half-blocks ``2**i`` apart, so ``m = 1 + log2(r)`` factors make it dense.
        """
        factors = list(factors)
        for i, B in enumerate(factors):
            _check_square_blocks(f"factors[{i}]", B)
            if B.shape != factors[0].shape:
                raise ShapeError(
                    f"butterfly factors must share one shape (r, b, b); factor {i} is "
                    f"{tuple(B.shape)}, factor 0 is {tuple(factors[0].shape)}."
                )
        r, b, _ = factors[0].shape
        n = r * b
        pis = [
            butterfly_permutation(i, b, n, device=factors[0].device) for i in range(len(factors))
        ]
        perms: list[Perm] = [pis[0]]
        for prev, nxt in itertools.pairwise(pis):
            perms.append(compose_permutations(invert_permutation(prev), nxt))
        perms.append(invert_permutation(pis[-1]))
        return cls(factors, perms)

    @classmethod
    def monarch(cls, L: torch.Tensor, R: torch.Tensor) -> GSMatrix:
        """Generalized Monarch ``P_(s, l·s) · L · P_(l, n) · R`` (paper App. C, Dao et al. 2022).

        ``R``: ``(k, q, p)``, ``L``: ``(l, s, k)`` with the Monarch constraints ``l = q`` (blocks
        of ``L`` = rows of an ``R`` block) and ``L``'s block width = ``k`` (blocks of ``R``).
        Square case: ``n = k·q``, ``L`` has ``q`` blocks of ``k × k``.
        """
        k, q, _ = R.shape
        l_, s, kk = L.shape
        if l_ != q or kk != k:
            raise ShapeError(
                f"Monarch needs L of shape (q, s, k) = ({q}, s, {k}) for R of shape "
                f"{tuple(R.shape)}; got L {tuple(L.shape)}."
            )
        P = gs_permutation(l_, k * q, device=R.device)
        P_L = gs_permutation(s, l_ * s, device=R.device)
        return cls([R, L], [None, P, P_L])

    # -------------------------------------------------------------------------- shape
    @property
    def shape(self) -> torch.Size:
        """``(n_out, n_in)``."""
        first, last = self.factors[0], self.factors[-1]
        return torch.Size((last.shape[0] * last.shape[1], first.shape[0] * first.shape[2]))

    @property
    def n_factors(self) -> int:
        """Number ``m`` of block-diagonal factors."""
        return len(self.factors)

    @property
    def dtype(self) -> torch.dtype:
        return self.factors[0].dtype

    @property
    def device(self) -> torch.device:
        return self.factors[0].device

    @property
    def num_parameters(self) -> int:
        """Stored block entries ``Σ_i k_i · b_out_i · b_in_i`` (dense would be ``n_out·n_in``)."""
        return sum(B.numel() for B in self.factors)

    def __repr__(self) -> str:
        blocks = ", ".join("x".join(map(str, B.shape)) for B in self.factors)
        return f"GSMatrix(shape={tuple(self.shape)}, factors=[{blocks}], dtype={self.dtype})"

    # ---------------------------------------------------------------------- algebra
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``A @ x`` on the last dim: ``(..., n_in) -> (..., n_out)``."""
        n_in = self.shape[1]
        if x.shape[-1] != n_in:
            raise ShapeError(f"input has last dim {x.shape[-1]}, this GS matrix takes {n_in}.")
        return gs_apply_planned(x, self.factors, self.plan)

    @property
    def plan(self) -> ShufflePlan:
        """How :meth:`apply` performs each permutation (:func:`shuffle_plan`), built once."""
        plan = getattr(self, "_plan", None)
        if plan is None:
            plan = self._plan = shuffle_plan(self.perms)
        return plan

    def __matmul__(self, other: torch.Tensor | GSMatrix) -> torch.Tensor | GSMatrix:
        if isinstance(other, GSMatrix):
            return self.compose(other)
        return self.apply(other)

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ A`` for row vectors: ``(..., n_out) -> (..., n_in)``."""
        return self.T.apply(x)

    @property
    def T(self) -> GSMatrix:
        """``Aᵀ = P_1ᵀ B_1ᵀ P_2ᵀ ··· B_mᵀ P_{m+1}ᵀ``, still in the GS class."""
        factors = [B.mT for B in reversed(self.factors)]
        perms = [None if P is None else invert_permutation(P) for P in reversed(self.perms)]
        plan = getattr(self, "_plan", None)
        plan = None if plan is None else tuple((inv, fwd) for fwd, inv in reversed(plan))
        return GSMatrix._trusted(factors, perms, plan)

    def compose(self, other: GSMatrix) -> GSMatrix:
        """``self · other`` as one GS matrix with ``m_self + m_other`` factors."""
        if other.shape[0] != self.shape[1]:
            raise ShapeError(
                f"cannot compose {tuple(self.shape)} with {tuple(other.shape)}: inner sizes differ."
            )
        a, b = other.perms[-1], self.perms[0]
        joint = b if a is None else (a if b is None else compose_permutations(a, b))
        return GSMatrix._trusted(
            other.factors + self.factors, [*other.perms[:-1], joint, *self.perms[1:]]
        )

    def to_dense(self) -> torch.Tensor:
        """The dense ``(n_out, n_in)`` matrix, obtained by applying ``A`` to the identity."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.apply(eye).T

    def to(self, *args, **kwargs) -> GSMatrix:
        """Move/cast the factors (``Tensor.to`` arguments); permutations follow the device."""
        factors = [B.to(*args, **kwargs) for B in self.factors]
        dev = factors[0].device
        return GSMatrix._trusted(factors, [None if P is None else P.to(dev) for P in self.perms])

    # -------------------------------------------------------------------- structure
    def support(self) -> torch.Tensor:
        """Boolean ``(n_out, n_in)`` mask of the structurally non-zero entries (all blocks full).

        By reachability, ``O(m · n_out · n_in)`` boolean work: a feature after ``B_i`` reaches
        the union of the inputs of its block's rows; permutations move rows
        (``P @ S == S[perm]``, Note [scatter]).
        """
        S = torch.eye(self.shape[1], dtype=torch.bool, device=self.device)  # rows: features
        for B, P in zip(self.factors, self.perms, strict=False):
            if P is not None:
                S = S[P]
            k, b_out, b_in = B.shape
            S = S.reshape(k, b_in, -1).any(1, keepdim=True).expand(k, b_out, -1)
            S = S.reshape(k * b_out, -1)
        return S if self.perms[-1] is None else S[self.perms[-1]]

    def density(self) -> float:
        """Fraction of structurally non-zero entries (1.0 means dense, Theorem 2)."""
        return float(self.support().double().mean())

    def block_ranks(self) -> torch.Tensor:
        """Proposition 1: rank bound of every block of ``P_Lᵀ A P_Rᵀ = L P R`` (2 factors).

        Block ``(k1, k2)`` (``b_L1 × b_R2``) has rank at most
        ``#{i : ⌊i / b_R1⌋ = k2, ⌊σ(i) / b_L2⌋ = k1}`` with ``σ`` the map of ``P``
        (divisions by block *sizes*, not block counts). Returns a ``(k_L, k_R)`` long tensor.
        """
        R, L = self._two_factors("block_ranks")
        return block_rank_bound(tuple(L.shape), tuple(R.shape), self.perms[1], R.device)

    def _two_factors(self, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_factors != 2:
            raise ShapeError(
                f"{what} is defined for the two-factor class GS(P_L, P, P_R) (Definition 3.1); "
                f"this matrix has {self.n_factors} factors."
            )
        return self.factors[0], self.factors[1]

    # ------------------------------------------------------------------- projection
    @classmethod
    def project(
        cls,
        A: torch.Tensor,
        like: GSMatrix | None = None,
        *,
        nblocks: int | None = None,
    ) -> GSMatrix:
        """Algorithm 1: the best Frobenius approximation of dense ``A`` in a GS class.

        The class is that of ``like`` (a two-factor GS matrix: its block shapes and
        permutations), or GSOFT's ``Pᵀ L P R`` with ``nblocks`` blocks. Each block of
        ``P_Lᵀ A P_Rᵀ`` is replaced by its truncated SVD at the rank Proposition 1 allows, and the
        singular vectors are written into the columns of ``L`` and rows of ``R`` that ``P`` routes
        to that block (exact by Eckart–Young, blocks are independent).

        Args:
            A: ``(n_out, n_in)``.
            like: structure template.
            nblocks: GSOFT ``r`` when ``like`` is not given (``A`` square).
        """
        if like is None:
            if nblocks is None or A.dim() != 2 or A.shape[0] != A.shape[1]:
                raise ShapeError(
                    "project needs `like=` (a GS matrix giving the class) or `nblocks=` with a "
                    f"square A; got nblocks={nblocks}, A of shape {tuple(A.shape)}."
                )
            nblocks, b = resolve_blocks(A.shape[0], nblocks=nblocks)
            z = torch.zeros(nblocks, b, b, dtype=A.dtype, device=A.device)
            like = cls.gsoft(z, z)
        if tuple(A.shape) != tuple(like.shape):
            raise ShapeError(f"A has shape {tuple(A.shape)}, the class {tuple(like.shape)}.")
        R0, L0 = like._two_factors("project")
        R, L = project_two_factor(A, tuple(L0.shape), tuple(R0.shape), list(like.perms))
        return GSMatrix._trusted([R, L], list(like.perms))

    def orthogonality_error(self) -> torch.Tensor:
        """``max |AᵀA − I|`` of the dense matrix, in float64 (diagnostics and tests)."""
        D = self.to_dense().to(torch.float64)
        return (D.T @ D - torch.eye(D.shape[1], dtype=D.dtype, device=D.device)).abs().amax()


def _check_square_blocks(name: str, B: torch.Tensor) -> None:
    if B.dim() != 3 or B.shape[1] != B.shape[2]:
        raise ShapeError(f"{name} must be (nblocks, b, b) square blocks; got {tuple(B.shape)}.")


def _chain_sizes(factors: Sequence[torch.Tensor]) -> list[int]:
    """Lengths ``[n_1, …, n_{m+1}]`` of the permutations; checks the chain condition."""
    sizes = [factors[0].shape[0] * factors[0].shape[2]]
    for i, B in enumerate(factors):
        n_in = B.shape[0] * B.shape[2]
        if n_in != sizes[-1]:
            prev = factors[i - 1]
            raise ShapeError(
                f"factor {i} {tuple(B.shape)} takes {n_in} features but factor {i - 1} "
                f"{tuple(prev.shape)} gives {sizes[-1]}; need k_i·b_out_i = k_(i+1)·b_in_(i+1)."
            )
        sizes.append(B.shape[0] * B.shape[1])
    return sizes
