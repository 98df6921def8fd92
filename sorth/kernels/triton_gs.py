"""The fused Triton kernel of the 2-factor GS multiply ``y = P_L · L · P · R · P_R · x`` (CUDA).

Importing this module imports triton; :mod:`sorth.kernels.dispatch` imports it only when it
picks this kernel. Shapes: ``x`` ``(..., n_in)``, ``R`` ``(k_R, b_R1, b_R2)``, ``L``
``(k_L, b_L1, b_L2)``, ``n_in = k_R·b_R2``, ``n_mid = k_R·b_R1 = k_L·b_L2``, ``n_out = k_L·b_L1``;
the permutations are index vectors in the scatter convention (``P @ x == x[..., perm]``,
Note [scatter] in :mod:`sorth.permutations`), or absent for the identity.

Note [Triton GS]: one program owns a tile of ``BM`` tokens at a time (a persistent grid of
``NPROG`` programs walks the tiles). Forward, per tile: for each block ``c`` of ``R`` it loads
the ``b_R2`` input columns ``P_R`` routes to it (a gather of ``x``), multiplies them by ``R[c]ᵀ``
(``tl.dot``, fp32 accumulation) and writes the ``b_R1`` results to the places ``P`` sends them,
in a per-program scratch slot of ``BM × n_mid``; then, for each block ``g`` of ``L``, it reads
its ``b_L2`` contiguous inputs from the slot, multiplies by ``L[g]ᵀ`` and writes the outputs to
the columns ``P_L`` sends them to. So ``x`` is read once and ``y`` written once; the
intermediate never exists as a tensor: it lives in a slot that the same program rewrites for
every tile, small enough (all slots together at most half the GPU's L2 cache, and 32 MB) to stay
there (its loads use ``.cg``: L2, not the SM's L1; a ``tl.debug_barrier`` separates writing and
reading it). The backward is one kernel of the same shape: it recomputes the intermediate into
one slot, then per block of ``L`` reads ``∂ℓ/∂y`` (gathered through ``P_L``), accumulates
``∂ℓ/∂L[g] += Gᵀ U`` and writes ``∂ℓ/∂u = G L[g]`` through ``P`` into a second slot; then per
block of ``R`` accumulates ``∂ℓ/∂R[c] += Tᵀ X`` and writes ``∂ℓ/∂x = T R[c]`` through ``P_R``
(a scatter). Factor gradients are summed per program in fp32 (``(NPROG, k, b_out, b_in)``,
no atomics, deterministic) and reduced over programs at the end. Block sizes are padded to
``max(16, next power of two)`` with masks, so any ``b`` and token count works. Under
``TRITON_INTERPRET=1`` (CPU tests) the dot operands are upcast to fp32 first: the interpreter
multiplies bf16 as integers; a bf16 product is exact in fp32, so the result is what the GPU's
bf16 dot with fp32 accumulation computes. Tile sizes are not tuned on a GPU yet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import triton
from torch.autograd.function import once_differentiable

from sorth.kernels.plan import ShufflePlan, plan_index
from sorth.kernels.triton_kernels import INTERPRET, gs2_backward, gs2_forward

__all__ = ["kernel_class", "triton_gs_apply"]

SCRATCH_BYTES = 32 << 20  # cap on all programs' scratch slots together (Note [Triton GS])


def _pad(b: int) -> int:
    return max(16, triton.next_power_of_2(b))


@functools.lru_cache(maxsize=64)
def _gpu(device_index: int) -> tuple[int, int]:
    """``(streaming multiprocessors, scratch bytes)`` of a CUDA device (Note [Triton GS])."""
    props = torch.cuda.get_device_properties(device_index)
    l2 = getattr(props, "L2_cache_size", 0) or 2 * SCRATCH_BYTES
    return props.multi_processor_count, min(SCRATCH_BYTES, l2 // 2)


class _Launch:
    """Sizes, padded tiles, grid and index vectors of one call (shared by forward/backward)."""

    def __init__(self, x: torch.Tensor, R: torch.Tensor, L: torch.Tensor, idx: tuple) -> None:
        self.kR, self.bR1, self.bR2 = R.shape
        self.kL, self.bL1, self.bL2 = L.shape
        self.n_in, self.n_mid, self.n_out = (
            self.kR * self.bR2,
            self.kR * self.bR1,
            self.kL * self.bL1,
        )
        self.M = x.shape[0]
        self.BM = 16 if INTERPRET else 32
        tiles = max(1, triton.cdiv(self.M, self.BM))
        if x.device.type == "cuda":
            sms, budget = _gpu(x.device.index or 0)
            cap = budget // max(1, 2 * self.BM * self.n_mid * x.element_size())
            nprog = min(tiles, 4 * sms, max(cap, 1))
        else:  # the interpreter runs programs one after the other
            nprog = min(tiles, 2)
        self.nprog = nprog
        self.idx = idx
        self.ptrs = [_dummy(x.device) if i is None else i for i in idx]
        self.meta = {
            "HAS_PR": idx[0] is not None,
            "HAS_P": idx[1] is not None,
            "HAS_PL": idx[3] is not None,
            "BM": self.BM,
            "BR1": _pad(self.bR1),
            "BR2": _pad(self.bR2),
            "BL1": _pad(self.bL1),
            "BL2": _pad(self.bL2),
            "UPCAST": INTERPRET,
            "IEEE": x.dtype == torch.float32,
        }

    @property
    def sizes(self) -> tuple[int, ...]:
        return (
            self.M,
            self.n_in,
            self.n_mid,
            self.n_out,
            self.kR,
            self.bR1,
            self.bR2,
            self.kL,
            self.bL1,
            self.bL2,
            self.nprog,
        )


# ``on_error(err, h, R, L, gy) -> (∂h, ∂R, ∂L)``: gradients by another kernel when the backward
# launch raises (the dispatch's fallback, Note [Triton check]); ``None`` lets the error through.
BackwardFallback = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class _TritonGS2(torch.autograd.Function):
    """``y = P_L L P R P_R x`` on ``(M, n_in)`` rows (Note [Triton GS]); first-order backward."""

    @staticmethod
    def forward(
        ctx,
        h: torch.Tensor,
        R: torch.Tensor,
        L: torch.Tensor,
        idx: tuple,
        on_error: BackwardFallback | None,
    ) -> torch.Tensor:
        R, L = R.contiguous(), L.contiguous()
        h = h.contiguous()
        run = _Launch(h, R, L, idx)
        y = h.new_empty(run.M, run.n_out)
        if run.M:
            scratch = h.new_empty(run.nprog * run.BM * run.n_mid)
            pr, _, pinv, plinv = run.ptrs
            gs2_forward[(run.nprog,)](h, R, L, y, scratch, pr, pinv, plinv, *run.sizes, **run.meta)
        ctx.save_for_backward(h, R, L)
        ctx.idx, ctx.on_error = idx, on_error
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        h, R, L = ctx.saved_tensors
        gy = gy.contiguous().to(h.dtype)
        try:
            gx, dR, dL = _backward(h, R, L, gy, ctx.idx)
        except Exception as err:
            if ctx.on_error is None:
                raise
            gx, dR, dL = ctx.on_error(err, h, R, L, gy)
        need_h, need_r, need_l = ctx.needs_input_grad[:3]
        return gx if need_h else None, dR if need_r else None, dL if need_l else None, None, None


def _backward(h: torch.Tensor, R: torch.Tensor, L: torch.Tensor, gy: torch.Tensor, idx: tuple):
    """``(∂ℓ/∂h, ∂ℓ/∂R, ∂ℓ/∂L)`` by one launch of ``gs2_backward`` (Note [Triton GS])."""
    run = _Launch(h, R, L, idx)
    gx = torch.empty_like(h)
    dR = torch.zeros(run.nprog, *R.shape, dtype=torch.float32, device=h.device)
    dL = torch.zeros(run.nprog, *L.shape, dtype=torch.float32, device=h.device)
    if run.M:
        su = h.new_empty(run.nprog * run.BM * run.n_mid)
        sg = torch.empty_like(su)
        pr, pfwd, pinv, plinv = run.ptrs
        gs2_backward[(run.nprog,)](
            h, R, L, gy, gx, su, sg, dR, dL, pr, pfwd, pinv, plinv, *run.sizes, **run.meta
        )
    return gx, dR.sum(0).to(R.dtype), dL.sum(0).to(L.dtype)


def _indices(plan: ShufflePlan, sizes: Sequence[int], device: torch.device) -> tuple:
    """``(P_R, P, P⁻¹, P_L⁻¹)`` as int32 index vectors (``None`` for identities)."""
    (pr, _), (p, p_inv), (_, pl_inv) = plan
    n_in, n_mid, n_out = sizes
    return (
        _index(pr, n_in, device),
        _index(p, n_mid, device),
        _index(p_inv, n_mid, device),
        _index(pl_inv, n_out, device),
    )


def _index(s, n: int, device: torch.device) -> torch.Tensor | None:
    """One plan entry as an int32 index vector; shuffles ``P_(q,n)`` are built once per device
    (GSOFT's permutations are all shuffles: no index-building launches per call)."""
    if isinstance(s, int):
        return _shuffle_index(s, n, device)
    i = plan_index(s, n, device)
    return None if i is None else i.to(torch.int32)


@functools.lru_cache(maxsize=256)
def _shuffle_index(q: int, n: int, device: torch.device) -> torch.Tensor:
    return plan_index(q, n, device).to(torch.int32)


@functools.lru_cache(maxsize=16)
def _dummy(device: torch.device) -> torch.Tensor:
    """The pointer passed for an absent permutation (never read: its ``HAS_*`` flag is off)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def kernel_class(x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan) -> tuple:
    """The compiled variant a call needs (its device, dtype and constexprs), Note [Triton check].

    ``(device, dtype, padded (b_R1, b_R2, b_L1, b_L2), (has P_R, has P, has P_L))``.
    """
    R, L = factors
    (pr, _), (p, _), (_, pl_inv) = plan
    blocks = tuple(_pad(b) for b in (*R.shape[1:], *L.shape[1:]))
    return str(x.device), x.dtype, blocks, (pr is not None, p is not None, pl_inv is not None)


def triton_gs_apply(
    x: torch.Tensor,
    factors: Sequence[torch.Tensor],
    plan: ShufflePlan,
    on_error: BackwardFallback | None = None,
) -> torch.Tensor:
    """``y = P_L · L · P · R · P_R · x`` on the last dim by the fused kernel (Note [Triton GS]).

    Args:
        x: ``(..., n_in)`` on CUDA (or CPU under ``TRITON_INTERPRET=1``), fp16/bf16/fp32.
        factors: ``[R, L]``, ``R``: ``(k_R, b_R1, b_R2)``, ``L``: ``(k_L, b_L1, b_L2)``, in
            ``x``'s dtype.
        plan: the shuffle plan of ``[P_R, P, P_L]`` (:func:`~sorth.kernels.plan.shuffle_plan`).
        on_error: computes the gradients instead when the backward launch raises,
            ``on_error(err, h, R, L, gy) -> (∂h, ∂R, ∂L)`` on the ``(M, n_in)`` rows ``h``;
            ``None`` (default) lets the error through.

    Returns:
        ``(..., n_out)`` in ``x``'s dtype; differentiable once in ``x``, ``R`` and ``L``.
    """
    R, L = factors
    n_in = R.shape[0] * R.shape[2]
    sizes = (n_in, R.shape[0] * R.shape[1], L.shape[0] * L.shape[1])
    idx = _indices(plan, sizes, x.device)
    y = _TritonGS2.apply(x.reshape(-1, n_in), R, L, idx, on_error)
    return y.view(*x.shape[:-1], sizes[2])
