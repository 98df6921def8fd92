"""Section (a) of the GPU check: the Triton and torch GS kernels against the dense reference.

Every row is one GS matrix, dtype and token count: the output and the gradients of ``x``, ``R``
and ``L`` (one shared upstream gradient) of each kernel, against the dense reference in float64
on the same rounded inputs, as ``max |error| / max |reference|`` — the measure and the
tolerances of the dispatch's first-use check (``sorth.kernels.CHECK_TOLERANCE``). Shapes: GSOFT
``Pᵀ L P R`` with ``r ≠ b`` and a general ``P_L L P R P_R`` with random permutations and
rectangular ``L`` blocks, for each block size; token counts 1, 37 and 20,001 (more tiles than a
GPU's programs, the last one partial).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import torch

import sorth
from sorth.kernels import CHECK_TOLERANCE, torch_gs_apply

BLOCKS = (8, 16, 32, 64, 128)
R_OF = {8: 12, 16: 6, 32: 12, 64: 6, 128: 3}  # r ≠ b: n = r·b = 96 or 384
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # the auto path's dtypes first
TOKENS = (37, 20001, 1)
QUICK_TOKENS = (37, 1)


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def matrices(b: int) -> dict[str, sorth.GSMatrix]:
    """GSOFT (``r = R_OF[b]``) and a general GS matrix (random ``P_R``, ``P``, ``P_L``,
    ``L`` blocks ``b/2 × b``) of block size ``b``, float64 on the CPU."""
    r = R_OF[b]
    L, R = (_randn((r, b, b), s) / b**0.5 for s in (1, 2))
    n, half = r * b, max(1, b // 2)
    gen = torch.Generator().manual_seed(3)
    perms = [torch.randperm(m, generator=gen) for m in (n, n, r * half)]
    general = sorth.GSMatrix([_randn((r, b, b), 4) / b**0.5, _randn((r, half, b), 5)], perms)
    return {"gsoft": sorth.GSMatrix.gsoft(L, R), "general": general}


def cases(quick: bool) -> Iterator[tuple[torch.dtype, int, str, int]]:
    """``(dtype, b, structure, tokens)`` in priority order (bf16 first: what "auto" runs);
    ``quick``: b ∈ {8, 32} in bf16 and GSOFT b = 8 in fp16 and fp32 (the interpreter is slow)."""
    for dtype in DTYPES:
        bf16 = dtype == torch.bfloat16
        for b in ((8, 32) if bf16 else (8,)) if quick else BLOCKS:
            for structure in ("gsoft", "general"):
                if structure == "general" and (dtype == torch.float32 or (quick and not bf16)):
                    continue  # fp32 reaches Triton only when forced: GSOFT rows suffice
                for tokens in QUICK_TOKENS if quick else TOKENS:
                    if tokens == 1 and (not bf16 or structure != "gsoft"):
                        continue  # M = 1 is its own Triton specialization: bf16 GSOFT only
                    yield dtype, b, structure, tokens


def _errors(kernel: Callable, A: sorth.GSMatrix, dtype, tokens: int, device: str) -> list[float]:
    """``max |error| / max |ref|`` of output, ∂x, ∂R, ∂L against the dense float64 reference."""
    fs = [B.to(device, dtype).requires_grad_() for B in A.factors]
    x = _randn((tokens, A.shape[1]), 6).to(device, dtype).requires_grad_()
    gy = _randn((tokens, A.shape[0]), 7).to(device, dtype)
    y = kernel(x, fs, A.to(device).plan)
    grads = torch.autograd.grad(y, [x, *fs], gy)
    got = [y.detach(), *grads]
    fr = [B.detach().double().requires_grad_() for B in fs]
    xr = x.detach().double().requires_grad_()
    yr = sorth.gs_apply_reference(xr, fr, A.perms)
    ref = [yr.detach(), *torch.autograd.grad(yr, [xr, *fr], gy.double())]
    out = [
        (a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)
        for a, b in zip(got, ref, strict=True)
    ]
    return torch.stack(out).tolist()


def accuracy_rows(
    device: str, quick: bool, time_left: Callable[[], float], emit: Callable[[dict], None]
) -> None:
    """One row per case: errors of each kernel, tolerance, pass/fail; ``emit`` gets each row
    as it is done (rows left when ``time_left()`` runs out are emitted as not run)."""
    triton_ok = device.startswith("cuda") or _interpreting()
    if triton_ok:
        from sorth.kernels.triton_gs import triton_gs_apply
    kernels = {"torch": torch_gs_apply}
    if triton_ok:
        kernels["triton"] = triton_gs_apply
    built: dict[int, dict[str, sorth.GSMatrix]] = {}
    for dtype, b, structure, tokens in cases(quick):
        A = built.setdefault(b, matrices(b))[structure]
        row = {"dtype": str(dtype).removeprefix("torch."), "b": b, "r": R_OF[b],
               "structure": structure, "n_in": A.shape[1], "n_out": A.shape[0],
               "tokens": tokens, "tolerance": CHECK_TOLERANCE[dtype]}  # fmt: skip
        if time_left() <= 0:
            emit({**row, "status": "not run: section time spent", "pass": None})
            continue
        t0 = time.perf_counter()
        for name, kernel in kernels.items():
            row[name] = _guarded(_errors, kernel, A, dtype, tokens, device)
        if not triton_ok:
            row["triton"] = "skipped: no CUDA (TRITON_INTERPRET=1 runs it on the CPU)"
        errs = [row[k] for k in kernels]
        row["pass"] = all(isinstance(e, list) and max(e) <= row["tolerance"] for e in errs)
        row["status"] = "pass" if row["pass"] else "FAIL"
        row["seconds"] = time.perf_counter() - t0
        emit(row)


def _guarded(fn: Callable, *args) -> list[float] | str:
    """``fn(*args)``, or the error's first line: a compile or launch error fails its row only."""
    try:
        return fn(*args)
    except Exception as err:
        return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
