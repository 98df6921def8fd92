"""Triton source of the fused 2-factor GS kernels (Note [Triton GS] in ``triton_gs``).

Importing this module imports triton and defines the kernels; ``triton.jit`` chooses the
interpreter (``TRITON_INTERPRET=1``) at that moment.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

__all__ = ["INTERPRET", "gs2_backward", "gs2_forward"]

# triton.jit picks the interpreter when the kernels are defined, i.e. at this import
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """``a @ b`` with fp32 accumulation (see Note [Triton GS] for ``UPCAST``)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _first_factor(
    x_ptr,
    r_ptr,
    slot,
    pr_ptr,
    pinv_ptr,
    rows,
    rmask,
    n_in,
    n_mid,
    kR,
    bR1,
    bR2,
    HAS_PR: tl.constexpr,
    HAS_P: tl.constexpr,
    BM: tl.constexpr,
    BR1: tl.constexpr,
    BR2: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Write ``u = P · R · P_R · x`` of the tile's rows into the scratch slot ``(BM, n_mid)``."""
    kk = tl.arange(0, BR2)
    ii = tl.arange(0, BR1)
    kmask = kk < bR2
    imask = ii < bR1
    lr = tl.arange(0, BM)
    for c in range(0, kR):
        col = c * bR2 + kk
        if HAS_PR:
            col = tl.load(pr_ptr + col, mask=kmask, other=0)
        xc = tl.load(
            x_ptr + rows[:, None] * n_in + col[None, :],
            mask=rmask[:, None] & kmask[None, :],
            other=0.0,
        )
        rt = tl.load(
            r_ptr + c * bR1 * bR2 + ii[None, :] * bR2 + kk[:, None],
            mask=kmask[:, None] & imask[None, :],
            other=0.0,
        )  # R[c]ᵀ
        tc = _dot(xc, rt, UPCAST, IEEE)  # (BM, BR1)
        dest = c * bR1 + ii
        if HAS_P:
            dest = tl.load(pinv_ptr + dest, mask=imask, other=0)
        tl.store(
            slot + lr[:, None] * n_mid + dest[None, :],
            tc.to(slot.dtype.element_ty),
            mask=imask[None, :],
        )


@triton.jit
def gs2_forward(
    x_ptr,
    r_ptr,
    l_ptr,
    y_ptr,
    scratch_ptr,
    pr_ptr,
    pinv_ptr,
    plinv_ptr,
    M,
    n_in,
    n_mid,
    n_out,
    kR,
    bR1,
    bR2,
    kL,
    bL1,
    bL2,
    nprog,
    HAS_PR: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_PL: tl.constexpr,
    BM: tl.constexpr,
    BR1: tl.constexpr,
    BR2: tl.constexpr,
    BL1: tl.constexpr,
    BL2: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """``y = P_L L P R P_R x`` for ``x`` ``(M, n_in)`` -> ``y`` ``(M, n_out)`` (row-major)."""
    pid = tl.program_id(0)
    slot = scratch_ptr + pid * BM * n_mid
    lr = tl.arange(0, BM)
    jj = tl.arange(0, BL2)
    oo = tl.arange(0, BL1)
    jmask = jj < bL2
    omask = oo < bL1
    for tile in range(pid, tl.cdiv(M, BM), nprog):
        rows = (tile * BM + lr).to(tl.int64)
        rmask = rows < M
        _first_factor(
            x_ptr,
            r_ptr,
            slot,
            pr_ptr,
            pinv_ptr,
            rows,
            rmask,
            n_in,
            n_mid,
            kR,
            bR1,
            bR2,
            HAS_PR,
            HAS_P,
            BM,
            BR1,
            BR2,
            UPCAST,
            IEEE,
        )
        tl.debug_barrier()
        for g in range(0, kL):
            ug = tl.load(
                slot + lr[:, None] * n_mid + (g * bL2 + jj)[None, :],
                mask=jmask[None, :],
                other=0.0,
                cache_modifier=".cg",
            )
            lt = tl.load(
                l_ptr + g * bL1 * bL2 + oo[None, :] * bL2 + jj[:, None],
                mask=jmask[:, None] & omask[None, :],
                other=0.0,
            )  # L[g]ᵀ
            yg = _dot(ug, lt, UPCAST, IEEE)  # (BM, BL1)
            dest = g * bL1 + oo
            if HAS_PL:
                dest = tl.load(plinv_ptr + dest, mask=omask, other=0)
            tl.store(
                y_ptr + rows[:, None] * n_out + dest[None, :],
                yg.to(y_ptr.dtype.element_ty),
                mask=rmask[:, None] & omask[None, :],
            )
        tl.debug_barrier()  # the slot is rewritten by the next tile


@triton.jit
def gs2_backward(
    x_ptr,
    r_ptr,
    l_ptr,
    gy_ptr,
    gx_ptr,
    su_ptr,
    sg_ptr,
    dr_ptr,
    dl_ptr,
    pr_ptr,
    pfwd_ptr,
    pinv_ptr,
    plinv_ptr,
    M,
    n_in,
    n_mid,
    n_out,
    kR,
    bR1,
    bR2,
    kL,
    bL1,
    bL2,
    nprog,
    HAS_PR: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_PL: tl.constexpr,
    BM: tl.constexpr,
    BR1: tl.constexpr,
    BR2: tl.constexpr,
    BL1: tl.constexpr,
    BL2: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """``∂ℓ/∂x`` ``(M, n_in)`` and per-program partial ``∂ℓ/∂R``, ``∂ℓ/∂L`` (fp32)."""
    pid = tl.program_id(0)
    su = su_ptr + pid * BM * n_mid
    sg = sg_ptr + pid * BM * n_mid
    lr = tl.arange(0, BM)
    jj = tl.arange(0, BL2)
    oo = tl.arange(0, BL1)
    ii = tl.arange(0, BR1)
    kk = tl.arange(0, BR2)
    jmask, omask, imask, kmask = jj < bL2, oo < bL1, ii < bR1, kk < bR2
    dl_base = dl_ptr + pid * kL * bL1 * bL2
    dr_base = dr_ptr + pid * kR * bR1 * bR2
    for tile in range(pid, tl.cdiv(M, BM), nprog):
        rows = (tile * BM + lr).to(tl.int64)
        rmask = rows < M
        _first_factor(
            x_ptr,
            r_ptr,
            su,
            pr_ptr,
            pinv_ptr,
            rows,
            rmask,
            n_in,
            n_mid,
            kR,
            bR1,
            bR2,
            HAS_PR,
            HAS_P,
            BM,
            BR1,
            BR2,
            UPCAST,
            IEEE,
        )
        tl.debug_barrier()
        for g in range(0, kL):  # ∂L[g] += Gᵀ U;  ∂u = G L[g], written through P
            src = g * bL1 + oo
            if HAS_PL:
                src = tl.load(plinv_ptr + src, mask=omask, other=0)
            gz = tl.load(
                gy_ptr + rows[:, None] * n_out + src[None, :],
                mask=rmask[:, None] & omask[None, :],
                other=0.0,
            )  # (BM, BL1)
            ug = tl.load(
                su + lr[:, None] * n_mid + (g * bL2 + jj)[None, :],
                mask=jmask[None, :],
                other=0.0,
                cache_modifier=".cg",
            )  # (BM, BL2)
            dl_ptrs = dl_base + g * bL1 * bL2 + oo[:, None] * bL2 + jj[None, :]
            dl_mask = omask[:, None] & jmask[None, :]
            acc = tl.load(dl_ptrs, mask=dl_mask, other=0.0)
            acc += _dot(tl.trans(gz), ug, UPCAST, IEEE)
            tl.store(dl_ptrs, acc, mask=dl_mask)
            lg = tl.load(
                l_ptr + g * bL1 * bL2 + oo[:, None] * bL2 + jj[None, :], mask=dl_mask, other=0.0
            )  # L[g] (BL1, BL2)
            gu = _dot(gz, lg, UPCAST, IEEE)  # (BM, BL2)
            dest = g * bL2 + jj
            if HAS_P:
                dest = tl.load(pfwd_ptr + dest, mask=jmask, other=0)
            tl.store(
                sg + lr[:, None] * n_mid + dest[None, :],
                gu.to(sg.dtype.element_ty),
                mask=jmask[None, :],
            )
        tl.debug_barrier()
        for c in range(0, kR):  # ∂R[c] += Tᵀ X;  ∂x = T R[c], scattered through P_R
            gt = tl.load(
                sg + lr[:, None] * n_mid + (c * bR1 + ii)[None, :],
                mask=imask[None, :],
                other=0.0,
                cache_modifier=".cg",
            )  # (BM, BR1)
            col = c * bR2 + kk
            if HAS_PR:
                col = tl.load(pr_ptr + col, mask=kmask, other=0)
            io_mask = rmask[:, None] & kmask[None, :]
            xc = tl.load(x_ptr + rows[:, None] * n_in + col[None, :], mask=io_mask, other=0.0)
            dr_ptrs = dr_base + c * bR1 * bR2 + ii[:, None] * bR2 + kk[None, :]
            dr_mask = imask[:, None] & kmask[None, :]
            acc = tl.load(dr_ptrs, mask=dr_mask, other=0.0)
            acc += _dot(tl.trans(gt), xc, UPCAST, IEEE)
            tl.store(dr_ptrs, acc, mask=dr_mask)
            rc = tl.load(
                r_ptr + c * bR1 * bR2 + ii[:, None] * bR2 + kk[None, :], mask=dr_mask, other=0.0
            )  # R[c] (BR1, BR2)
            gxc = _dot(gt, rc, UPCAST, IEEE)  # (BM, BR2)
            tl.store(
                gx_ptr + rows[:, None] * n_in + col[None, :],
                gxc.to(gx_ptr.dtype.element_ty),
                mask=io_mask,
            )
        tl.debug_barrier()
