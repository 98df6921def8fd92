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
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from sorth.blockdiag import blockdiag_to_dense
from sorth.errors import BlockSizeError, ShapeError, check_positive_int, divisors
from sorth.permutations import (
    butterfly_permutation,
    compose_permutations,
    gs_permutation,
    gs_shuffle_groups,
    invert_permutation,
    permutation_matrix,
    validate_permutation,
)

__all__ = [
    "GSMatrix",
    "gs_apply",
    "gs_apply_reference",
    "min_butterfly_factors_for_density",
    "min_factors_for_density",
    "resolve_blocks",
]

Perm = torch.Tensor | None


def gs_apply(
    x: torch.Tensor, factors: Sequence[torch.Tensor], perms: Sequence[Perm]
) -> torch.Tensor:
    """Fast ``A @ x`` on the last dim for ``A = P_{m+1} B_m ··· B_1 P_1``.

    Args:
        x: ``(..., n_in)`` with ``n_in = k_1 · b_in_1``.
        factors: ``m`` tensors ``(k_i, b_out_i, b_in_i)``.
        perms: ``m + 1`` index vectors (or ``None``).

    Returns:
        ``(..., n_out)`` with ``n_out = k_m · b_out_m``. One ``bmm`` per factor; shuffles of the
        form ``P_(k,n)`` are reshapes + transposes, other permutations gathers (see
        Note [GS kernel]).
    """
    return _gs_apply_planned(x, list(factors), shuffle_plan(perms))


# Note [GS kernel]: between factors the activations are kept *transposed*, as ``(n, M)`` rows
# (``M`` = all batch dims flattened), so that every shuffle is a view or a row gather and each
# factor is one ``torch.bmm``: ``P_(q,n)`` on rows is ``T.view(n/q, q, M).transpose(0, 1)``, a
# ``(q, n/q, M)`` stack of BLAS-ready strided matrices, exactly the blocks of a following factor
# with ``q`` blocks; ``None`` is ``T.view(k, b, M)``; any other permutation is
# ``T.index_select(0, perm)`` (contiguous rows). The input ``x`` enters as the free view
# ``x.T`` and the last factor is computed untransposed, ``(k, M, b)``, so the only copies are
# one or two 2-D transposes: GSOFT ``Pᵀ L P R x`` is two ``bmm`` and one blocked 2-D transpose
# (``P_(b,n)`` at the exit). Without an exit shuffle (OFT) the last ``bmm`` writes straight into
# the flat output through a strided ``out=`` (no copy at all; the same for ``∂ℓ/∂x``). The
# autograd function saves only ``x`` and the factors and recomputes the block inputs in the
# backward (``m − 1`` ``bmm``), so a GS layer keeps no activations. On a CPU the tokens go through
# in chunks of ~512 KB (:func:`_chunk_rows`), so that a chunk's intermediates stay in L2 cache
# between the ``bmm`` and the transposes. Measured (one thread, d = 1024, b = 32): forward +
# backward of the GS multiply followed by the frozen d × d matmul took 3% less time at 512
# tokens and 18% less at 2048 tokens, where whole-batch intermediates (8 MB) spill to memory.
# Narrow blocks (b < 16) compute the last product as ``b × M`` rows and copy once, since CPU
# BLAS writes ``M × b`` outputs ~5× slower at b = 8 (:func:`_bmm_flat`).
Shuffle = int | torch.Tensor | None  # None: identity; q: P_(q, n); tensor: index vector
ShufflePlan = tuple[tuple[Shuffle, Shuffle], ...]  # (P_i, P_iᵀ) for i = 1 … m+1


def shuffle_plan(perms: Sequence[Perm]) -> ShufflePlan:
    """``(P_i, P_iᵀ)`` of every permutation, as ``None`` / ``P_(q,n)``'s ``q`` / index vector."""
    plan = []
    for P in perms:
        P = None if P is None else P.long()
        q = None if P is None else gs_shuffle_groups(P)
        if P is None or q == 1:
            plan.append((None, None))
        elif q is not None:
            plan.append((q, P.numel() // q))  # P_(q,n)ᵀ = P_(n/q,n)
        else:
            plan.append((P, invert_permutation(P)))
    return tuple(plan)


def _row_blocks(T: torch.Tensor, s: Shuffle, k: int) -> torch.Tensor:
    """Rows ``(n, M)`` -> ``(k, n/k, M)`` blocks of ``P @ T`` (a view whenever possible)."""
    n, M = T.shape
    if isinstance(s, int):
        PT = T.reshape(n // s, s, M).transpose(0, 1)  # (s, n/s, M), Note [scatter]
        return PT if s == k else PT.reshape(k, n // k, M)
    if s is not None:
        T = T.index_select(0, s)
    return T.reshape(k, n // k, M)


def _shuffle_flat(h: torch.Tensor, s: Shuffle) -> torch.Tensor:
    """``P @ h`` for flat ``h``: ``(M, n) -> (M, n)``."""
    if s is None:
        return h
    M, n = h.shape
    if isinstance(s, int):
        return h.reshape(M, n // s, s).transpose(1, 2).reshape(M, n)  # Note [scatter]
    return h.index_select(1, s)


def _to_blocks(h: torch.Tensor, s: Shuffle, k: int) -> torch.Tensor:
    """Flat ``(M, n)`` -> ``(k, M, n/k)`` contiguous blocks of ``P @ h``."""
    M, n = h.shape
    if isinstance(s, int) and s == k:  # block g of P_(k,n) h is h[:, g::k]: one 2-D transpose
        return h.reshape(M * (n // k), k).t().contiguous().view(k, M, n // k)
    return _shuffle_flat(h, s).reshape(M, k, n // k).transpose(0, 1).contiguous()


def _from_blocks(y: torch.Tensor, s: Shuffle) -> torch.Tensor:
    """``(k, M, b)`` blocks -> flat ``(M, k·b)`` ``P @ y``."""
    k, M, b = y.shape
    if isinstance(s, int) and s == b:  # P_(b,n): out[m, c·k + j] = y[j, m, c], one 2-D transpose
        return y.reshape(k, M * b).t().contiguous().view(M, k * b)
    return _shuffle_flat(y.transpose(0, 1).reshape(M, k * b), s)


_NARROW = 16  # block sizes below this take the "rows" form in _bmm_flat (measured, CPU BLAS)


def _bmm_flat(
    a: torch.Tensor, B: torch.Tensor, s: Shuffle, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Flat ``(M, k·b)`` ``P @ blocks`` of ``bmm(a, B)`` (``(k, M, b)``), into ``out`` if given.

    Without a shuffle the ``bmm`` writes straight into the flat layout (a strided ``out=`` that
    BLAS takes as its leading dimension); ``P_(b,n)`` is one 2-D transpose into ``out``. For
    narrow blocks (``b < 16``) on a CPU the product is computed as ``(Bᵀ aᵀ)ᵀ``, ``b × M``
    outputs, and copied once: with ``b = 8`` BLAS is ~5× slower writing ``M × b`` outputs
    (192 blocks, 1024 tokens: 12.1 vs 2.3 ms), and the strided ``out=`` falls back to a loop
    over the blocks.
    """
    differentiable = torch.is_grad_enabled() and (a.requires_grad or B.requires_grad)
    if differentiable or torch.compiler.is_compiling():  # no strided out= for autograd / dynamo
        y = _from_blocks(torch.bmm(a, B), s)
        return y if out is None else out.copy_(y)
    k, M, b = a.shape[0], a.shape[1], B.shape[2]
    out = a.new_empty(M, k * b, dtype=torch.promote_types(a.dtype, B.dtype)) if out is None else out
    if b < _NARROW and a.device.type == "cpu":
        U = torch.bmm(B.mT, a.mT)  # (k, b, M): the b × M products, rows of the flat output
        if s is None:  # a 2-D transpose (n, M) -> (M, n): copy_'s blocked transpose path
            out.copy_(U.view(k * b, M).t())
        elif isinstance(s, int) and s == b:  # P_(b,n): out[m, c·k + j] = U[j, c, m]
            out.view(M, b, k).copy_(U.permute(2, 1, 0))
        else:
            out.copy_(_from_blocks(U.transpose(1, 2), s))
    elif s is None and a.dtype == B.dtype:
        torch.bmm(a, B, out=out.view(M, k, b).transpose(0, 1))
    elif isinstance(s, int) and s == b:
        out.view(M * b, k).copy_(torch.bmm(a, B).reshape(k, M * b).t())
    else:
        out.copy_(_from_blocks(torch.bmm(a, B), s))
    return out


def _entry_blocks(h: torch.Tensor, s: Shuffle, k: int) -> torch.Tensor:
    """First factor's blocks ``(k, b, M)`` of ``(P_1 hᵀ)`` from flat ``h`` ``(M, n)``."""
    if s is not None and not isinstance(s, int):
        return h.index_select(1, s).t().reshape(k, h.shape[1] // k, h.shape[0])
    return _row_blocks(h.t(), s, k)


def _block_inputs(
    h: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan
) -> list[torch.Tensor]:
    """Transposed block inputs ``(k_i, b_in_i, M)`` of every factor (``m − 1`` bmm)."""
    hb = _entry_blocks(h, plan[0][0], factors[0].shape[0])
    inputs = [hb]
    for i in range(1, len(factors)):
        T = torch.bmm(factors[i - 1], hb)  # (k, b_out, M) = rows (n, M)
        hb = _row_blocks(T.flatten(0, 1), plan[i][0], factors[i].shape[0])
        inputs.append(hb)
    return inputs


def _chunk_rows(M: int, n: int, device: torch.device) -> int:
    """Rows per chunk: on a CPU ~512 KB of float32 activations, so that a chunk's block inputs
    and outputs stay in L2 cache between the ``bmm`` and the shuffles (Note [GS kernel]);
    one chunk on other devices and under ``torch.compile``."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return M
    return max(8, min(M, (1 << 17) // max(n, 1)))


class _GSApply(torch.autograd.Function):
    """``y = A x`` (Note [GS kernel]) with a hand-written, recomputing backward.

    With ``H_i`` = the transposed block input of factor ``i`` (``(k, b_in, M)``) and
    ``G_i = ∂ℓ/∂(B_i H_i)`` (``(k, b_out, M)``): ``∂ℓ/∂B_i = G_i H_iᵀ`` and
    ``G_{i-1} = blocks(P_iᵀ · rows(B_iᵀ G_i))`` per block; ``∂ℓ/∂x = P_1ᵀ (B_1ᵀ G_1)``.
    Tokens are processed in chunks of rows (:func:`_chunk_rows`); factor gradients sum over
    the chunks.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, plan: ShufflePlan, *factors: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])  # (M, n_in)
        M, n_out = h.shape[0], factors[-1].shape[0] * factors[-1].shape[1]
        out = h.new_empty(M, n_out, dtype=torch.promote_types(x.dtype, factors[-1].dtype))
        step = _chunk_rows(M, max(h.shape[1], n_out), h.device)
        for m0 in range(0, M, step):
            H = _block_inputs(h[m0 : m0 + step], factors, plan)[-1]  # (k, b_in, Mc)
            _bmm_flat(H.mT, factors[-1].mT, plan[-1][0], out=out[m0 : m0 + step])
        ctx.plan = plan
        ctx.save_for_backward(x, *factors)
        return out.view(*x.shape[:-1], n_out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *factors = ctx.saved_tensors
        plan = ctx.plan
        need_x, need_f = ctx.needs_input_grad[0], ctx.needs_input_grad[2:]
        h, g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        M = h.shape[0]
        if torch.is_grad_enabled():  # double backward: one differentiable chunk
            gx, grads = _backward_rows(h, g, factors, plan, need_x, need_f, None)
            return None if gx is None else gx.view(x.shape), None, *grads
        gx = h.new_empty(h.shape, dtype=grad.dtype) if need_x else None
        grads: list[torch.Tensor | None] = [None] * len(factors)
        step = _chunk_rows(M, max(h.shape[1], g.shape[1]), h.device)
        for m0 in range(0, M, step):
            rows = slice(m0, m0 + step)
            out = None if gx is None else gx[rows]
            _, part = _backward_rows(h[rows], g[rows], factors, plan, need_x, need_f, out)
            grads = [p if a is None else a.add_(p) for a, p in zip(grads, part, strict=True)]
        return None if gx is None else gx.view(x.shape), None, *grads


def _backward_rows(
    h: torch.Tensor,
    g: torch.Tensor,
    factors: Sequence[torch.Tensor],
    plan: ShufflePlan,
    need_x: bool,
    need_f: Sequence[bool],
    gx: torch.Tensor | None,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """``(∂ℓ/∂h, [∂ℓ/∂B_i])`` for rows ``h`` ``(M, n_in)`` and their output gradient ``g``;
    ``∂ℓ/∂h`` is written into ``gx`` when given."""
    m = len(factors)
    inputs = _block_inputs(h, factors, plan) if any(need_f) else [None] * m
    G = _to_blocks(g, plan[-1][1], factors[-1].shape[0]).mT  # (k, b_out, M)
    grads: list[torch.Tensor | None] = [None] * m
    for i in range(m - 1, 0, -1):
        if need_f[i]:
            grads[i] = torch.bmm(G, inputs[i].mT)  # (k, b_out, b_in)
        T = torch.bmm(factors[i].mT, G)  # (k, b_in, M) = rows of P_i · (previous output)
        G = _row_blocks(T.flatten(0, 1), plan[i][1], factors[i - 1].shape[0])
    if need_f[0]:
        grads[0] = torch.bmm(G, inputs[0].mT)
    if need_x:
        gx = _bmm_flat(G.mT, factors[0], plan[0][1], out=gx)  # P_1ᵀ B_1ᵀ G_1
    return gx, grads


def _gs_apply_planned(
    x: torch.Tensor, factors: list[torch.Tensor], plan: ShufflePlan
) -> torch.Tensor:
    """:func:`gs_apply` with a precomputed :func:`shuffle_plan`; casts once under autocast."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, factors = x.to(dtype), [B.to(dtype) for B in factors]
        with torch.autocast(device, enabled=False):
            return _GSApply.apply(x, plan, *factors)
    return _GSApply.apply(x, plan, *factors)


def gs_apply_reference(
    x: torch.Tensor, factors: Sequence[torch.Tensor], perms: Sequence[Perm]
) -> torch.Tensor:
    """Dense reference of :func:`gs_apply`: builds every factor and permutation densely."""
    A = None
    mats: list[torch.Tensor] = []
    for B, P in zip(factors, perms, strict=False):
        n = B.shape[0] * B.shape[2]
        mats.append(_dense_perm(P, n, B))
        mats.append(blockdiag_to_dense(B))
    last = factors[-1]
    mats.append(_dense_perm(perms[-1], last.shape[0] * last.shape[1], last))
    for M in mats:
        A = M if A is None else M @ A
    return x @ A.T


def _dense_perm(P: Perm, n: int, like: torch.Tensor) -> torch.Tensor:
    if P is None:
        return torch.eye(n, dtype=like.dtype, device=like.device)
    return permutation_matrix(P, dtype=like.dtype)


def min_factors_for_density(n: int, block_size: int) -> int:
    """Theorem 2: least ``m`` with ``GS(P_L, P_(r,n), …, P_R)`` dense, ``r = n/b``.

    ``m = 1 + ⌈log_b r⌉`` (exact integer arithmetic): each input reaches at most ``b^m`` outputs.
    """
    _blocks_for(n, block_size)  # validates that block_size divides n
    if block_size == 1:
        return 1 if n == 1 else n  # no mixing ever happens with 1×1 blocks
    m, reach = 1, block_size
    while reach < n:
        reach *= block_size
        m += 1
    return m


def min_butterfly_factors_for_density(n: int, block_size: int) -> int:
    """Block butterfly (BOFT) needs ``m = 1 + ⌈log_2 r⌉`` factors to be dense, ``r = n/b``."""
    r = _blocks_for(n, block_size)
    return 1 + max(0, (r - 1).bit_length())


def _blocks_for(n: int, block_size: int) -> int:
    return resolve_blocks(n, block_size=block_size)[0]


def resolve_blocks(
    n: int, *, nblocks: int | None = None, block_size: int | None = None
) -> tuple[int, int]:
    """``(nblocks, block_size)`` with ``nblocks · block_size == n`` from exactly one of them.

    Raises :class:`~sorth.errors.BlockSizeError` naming the value and the valid choices.
    """
    check_positive_int("n", n)
    if nblocks is None and block_size is None:
        raise BlockSizeError(f"give nblocks or block_size for n={n}; valid: {divisors(n)}.")
    if nblocks is not None:
        check_positive_int("nblocks", nblocks)
        if n % nblocks:
            raise BlockSizeError(
                f"nblocks={nblocks} must divide n={n}; valid choices here: {divisors(n)} "
                "(or pass block_size instead)."
            )
        if block_size is not None and block_size * nblocks != n:
            raise BlockSizeError(
                f"nblocks={nblocks} and block_size={block_size} disagree for n={n} "
                f"(need nblocks*block_size == n); pass only one of them."
            )
        return nblocks, n // nblocks
    check_positive_int("block_size", block_size)
    if n % block_size:
        raise BlockSizeError(
            f"block_size={block_size} must divide n={n}; valid choices here: {divisors(n)} "
            "(or pass nblocks instead)."
        )
    return n // block_size, block_size


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
        return _gs_apply_planned(x, self.factors, self.plan)

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
        """Boolean ``(n_out, n_in)`` mask of the structurally non-zero entries."""
        ones = [torch.ones(B.shape, dtype=torch.float64, device=B.device) for B in self.factors]
        return GSMatrix._trusted(ones, self.perms).to_dense() > 0

    def density(self) -> float:
        """Fraction of structurally non-zero entries (1.0 means dense, Theorem 2)."""
        return float(self.support().double().mean())

    def block_ranks(self) -> torch.Tensor:
        """Proposition 1: rank bound of every block of ``P_Lᵀ A P_Rᵀ = L P R`` (2 factors).

        Block ``(k1, k2)`` (``b_L1 × b_R2``) has rank at most
        ``#{i : ⌊i / b_R1⌋ = k2, ⌊σ(i) / b_L2⌋ = k1}`` with ``σ`` the map of ``P``
        (divisions by block *sizes*, see paper.md §6.4). Returns a ``(k_L, k_R)`` long tensor.
        """
        R, L = self._two_factors("block_ranks")
        kL, _, bL2 = L.shape
        kR, bR1, _ = R.shape
        i, sigma = _inner_map(self.perms[1], kR * bR1, R.device)
        ranks = torch.zeros(kL, kR, dtype=torch.long, device=R.device)
        ranks.index_put_((sigma // bL2, i // bR1), torch.ones_like(i), accumulate=True)
        return ranks

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
        return _project(A, like)

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


def _inner_map(P: Perm, s: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i, σ(i))`` for the inner permutation ``P`` (``σ = perm⁻¹``, Note [scatter])."""
    i = torch.arange(s, device=device)
    return i, (i if P is None else invert_permutation(P))


def _project(A: torch.Tensor, like: GSMatrix) -> GSMatrix:
    R0, L0 = like._two_factors("project")
    kL, bL1, bL2 = L0.shape
    kR, bR1, bR2 = R0.shape
    P_R, P, P_L = like.perms
    M = A if P_L is None else A[invert_permutation(P_L)]  # P_Lᵀ A
    M = M if P_R is None else M[:, P_R]  # (P_Lᵀ A) P_Rᵀ
    blocks = M.reshape(kL, bL1, kR, bR2).permute(0, 2, 1, 3)  # (kL, kR, bL1, bR2)
    # U: (kL, kR, bL1, q), S: (kL, kR, q), Vh: (kL, kR, q, bR2), q = min(bL1, bR2)
    U, S, Vh = torch.linalg.svd(blocks, full_matrices=False)
    q = S.shape[-1]
    i, sigma = _inner_map(P, kR * bR1, A.device)
    k1, k2 = sigma // bL2, i // bR1
    key = k1 * kR + k2
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    t = torch.empty_like(i)
    t[order] = torch.arange(i.numel(), device=A.device) - torch.searchsorted(sorted_key, sorted_key)
    keep = (t < q).to(A.dtype)  # ranks beyond min(bL1, bR2) get zero vectors
    tc = t.clamp(max=q - 1)
    root = S[k1, k2, tc].sqrt() * keep  # (s,)
    u = U[k1, k2, :, tc] * root[:, None]  # (s, bL1): column σ(i) of L
    v = Vh[k1, k2, tc, :] * root[:, None]  # (s, bR2): row i of R
    L_cols = torch.empty_like(u)
    L_cols[sigma] = u
    L = L_cols.reshape(kL, bL2, bL1).transpose(1, 2).contiguous()  # (kL, bL1, bL2)
    R = v.reshape(kR, bR1, bR2)  # (kR, bR1, bR2)
    return GSMatrix._trusted([R, L], list(like.perms))
