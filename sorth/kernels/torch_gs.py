"""The torch GS kernel: one ``torch.bmm`` per factor on transposed activations (any device).

The fallback on every device and the kernel on CPU; see Note [GS kernel] below. The dispatch
point is :func:`sorth.kernels.dispatch.gs_apply_planned`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sorth.kernels.plan import Shuffle, ShufflePlan

__all__ = ["torch_gs_apply"]


def torch_gs_apply(
    x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan
) -> torch.Tensor:
    """``y = A x`` on the last dim, ``(..., n_in) -> (..., n_out)``, by :class:`_GSApply`.

    ``factors``: ``m`` tensors ``(k_i, b_out_i, b_in_i)`` of one dtype; ``plan``: the
    :func:`~sorth.kernels.plan.shuffle_plan` of the ``m + 1`` permutations. Differentiable
    (twice) in ``x`` and every factor.
    """
    return _GSApply.apply(x, plan, *factors)


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
# Tried on CPU and dropped (paired A/B, one thread, 2026-12-01, loaded 2-core VM): grouping g
# narrow blocks into one block-diagonal ``g·b`` block (fewer, wider ``bmm``; g = 2, 4 at b = 8):
# 1.10–1.23× slower; ``torch.compile`` of this kernel: the multiply alone at b = 8 0.77× (inductor
# writes the small-K products as C++ loops), at b = 32 0.97×, but the whole MiniLM training step
# 1.13–1.18× slower, and it needs a C++ compiler at run time. Also dropped (2026-12-02, paired,
# one thread, ``python -m tests.perf.bench_grouped_qkv``): q/k/v's three rotations of one input as
# one ``(3n) × n`` chain (stacked factors, gathers between them): 0.96× the three separate calls
# at n = 1024, b = 32, 512 tokens and 0.985× at n = 384, b = 8, 1024 tokens, i.e. under 1% of a
# training step, for a tuner that would have to group layers. On CUDA the dispatch sends
# fp16/bf16 two-factor chains to the fused Triton kernel instead (Note [Triton GS] in
# ``triton_gs``).


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
