"""The first-use check of the Triton GS kernel, and its fallback to the torch kernel.

Note [Triton check]: the fused kernel (Note [Triton GS] in :mod:`sorth.kernels.triton_gs`) is
compiled once per *kernel class* — device, dtype, padded block sizes and which permutations are
present (:func:`~sorth.kernels.triton_gs.kernel_class`). The first time the dispatch picks it for
a class, :func:`triton_fits` runs it on a slice of the real input — the first
:data:`CHECK_ROWS` token rows (an odd count, so a partial tile is included), non-finite values
zeroed and scaled by a power of two to ``max |x| ≤ 1``, with the real permutations, random blocks
of the real factors' shapes and dtype (not the factors themselves: GSOFT starts at the identity,
which a transposed or misplaced block passes) and a random upstream gradient, all drawn from a
private generator so the user's random stream is untouched — and compares the output and the
gradients of ``x``, ``R`` and ``L`` with the torch kernel in float64 on the same rounded inputs:
``max |triton − reference| ≤ tol(dtype) · max |reference|`` (:data:`CHECK_TOLERANCE`). A compile
error, a launch error or a mismatch then gives, with ``"auto"``, one ``RuntimeWarning`` naming the
cause, and the torch kernel runs for that class for the rest of the process; forced
(``SORTH_GS_KERNEL=triton`` or ``use_kernel("triton")``) it raises
:class:`~sorth.errors.MethodError` instead. A launch that raises later for a class that passed
(a new token count is a new Triton specialization) falls back the same way, in the forward and,
through ``on_error``, in the backward. The check runs eagerly, at the first call with tokens;
never while dynamo traces (``torch.compile`` runs the torch kernel) nor during CUDA-graph
capture (that call runs the torch kernel, and the check waits for the next eager call), so the
check's synchronizing comparison never lands inside a captured graph. Not recoverable: a kernel
that writes out of bounds on a GPU leaves the CUDA context unusable for every kernel; the check
reports it, but no fallback can help. Running out of memory is no kernel defect: it is raised
as it is and gives no verdict.
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType

import torch

from sorth.errors import MethodError
from sorth.kernels.plan import ShufflePlan
from sorth.kernels.torch_gs import torch_gs_apply

__all__ = [
    "CHECK_ROWS",
    "CHECK_TOLERANCE",
    "clear_triton_checks",
    "run_triton",
    "triton_checks",
    "triton_fits",
    "triton_verdict",
]

CHECK_ROWS = 67  # token rows of the check: three tiles of 32 on a GPU, the last one partial
# max |triton − float64 torch| / max |float64 torch| allowed per dtype: fp32 dots are IEEE;
# fp16/bf16 round the intermediate and the output once each (eps 2⁻¹¹ / 2⁻⁸), ~10× margin
CHECK_TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}

_verdicts: dict[tuple, str | None] = {}  # kernel class -> None (passed) or the failure's cause
_warned: set[tuple] = set()
_lock = threading.RLock()
_IMPORT = ("import",)  # the key of a failed ``import triton``: every class falls back


def triton_checks() -> dict[str, str]:
    """Every kernel class checked so far in this process: ``"passed"`` or ``"failed: <cause>"``.

    Keys read like ``"cuda:0 bfloat16 blocks 32x32|32x32 perms -PL"`` (padded block sizes of
    ``R`` and ``L``; ``R``/``P``/``L``: which of ``P_R``, ``P``, ``P_L`` are present).
    """
    with _lock:
        items = list(_verdicts.items())
    return {_describe(k): "passed" if v is None else f"failed: {v}" for k, v in items}


def _describe(key: tuple) -> str:
    """``"cuda:0 bfloat16 blocks 32x32|32x32 perms -PL"`` for a kernel class key."""
    if key == _IMPORT:
        return "import triton"
    device, dtype, (r1, r2, l1, l2), perms = key
    flags = "".join(c if on else "-" for c, on in zip("RPL", perms, strict=True))
    return f"{device} {str(dtype).removeprefix('torch.')} blocks {r1}x{r2}|{l1}x{l2} perms {flags}"


def clear_triton_checks() -> None:
    """Forget every verdict (the next call of each class is checked again), e.g. in a test."""
    with _lock:
        _verdicts.clear()
        _warned.clear()


def triton_verdict(
    x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan
) -> bool | None:
    """Whether this call's kernel class passed its check; ``None`` if not checked yet."""
    if _IMPORT in _verdicts:
        return False
    kernels = _loaded()
    if kernels is None:
        return None
    key = kernels.kernel_class(x, factors, plan)
    return None if key not in _verdicts else _verdicts[key] is None


def triton_fits(
    x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan, forced: bool
) -> bool:
    """Whether the Triton kernel may run this call; runs the class's check on first use.

    ``forced`` (``SORTH_GS_KERNEL=triton``): a failed check raises :class:`MethodError`;
    otherwise it warns once and returns ``False`` for the class from then on.
    """
    kernels = _kernels(forced)
    if kernels is None:
        return False
    key = kernels.kernel_class(x, factors, plan)
    if key not in _verdicts:
        if x.numel() == 0 or _capturing(x):  # nothing to check with / no sync allowed now
            return forced
        with _lock:
            if key not in _verdicts:
                _verdicts[key] = _check(kernels.triton_gs_apply, x, factors, plan)
    cause = _verdicts[key]
    if cause is not None:
        _failed(key, cause, forced)
    return cause is None


def run_triton(
    x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan, forced: bool
) -> torch.Tensor:
    """The Triton kernel for a class that passed; unless ``forced``, a launch that raises
    (forward or backward) falls back to the torch kernel with one warning."""
    kernels = _kernels(forced)
    if forced:
        return kernels.triton_gs_apply(x, factors, plan)
    key = kernels.kernel_class(x, factors, plan)
    try:
        on_error = functools.partial(_torch_backward, key, plan)
        return kernels.triton_gs_apply(x, factors, plan, on_error=on_error)
    except torch.cuda.OutOfMemoryError:
        raise  # no kernel defect: the torch kernel would need the memory too
    except Exception as err:
        _record(key, _cause("launch failed", err))
        return torch_gs_apply(x, factors, plan)


def _torch_backward(key: tuple, plan: ShufflePlan, err: Exception, *tensors: torch.Tensor):
    """``on_error`` of :func:`run_triton`: the gradients by the torch kernel (recomputed)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        raise err
    _record(key, _cause("backward launch failed", err))
    h, R, L, gy = tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (h, R, L)]
        y = torch_gs_apply(leaves[0], leaves[1:], plan)
        return torch.autograd.grad(y, leaves, gy)


def _record(key: tuple, cause: str) -> None:
    with _lock:
        _verdicts[key] = cause
    _failed(key, cause, forced=False)


def _failed(key: tuple, cause: str, forced: bool) -> None:
    """Raise (forced) or warn once per class that the torch kernel runs instead."""
    where = "" if key == _IMPORT else f" for {_describe(key)}"
    if forced:
        raise MethodError(
            f"the Triton GS kernel was forced but failed{where}: {cause} "
            "(SORTH_GS_KERNEL=auto falls back to the torch kernel)."
        )
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(
        f"sorth: the Triton GS kernel is not used{where}: {cause}; the torch "
        "kernel runs instead for the rest of this process (SORTH_GS_KERNEL=torch chooses it "
        "from the start, SORTH_GS_KERNEL=triton raises instead).",
        RuntimeWarning,
        stacklevel=2,
    )


def _loaded() -> ModuleType | None:
    return sys.modules.get("sorth.kernels.triton_gs")


def _kernels(forced: bool) -> ModuleType | None:
    """:mod:`sorth.kernels.triton_gs`, or ``None`` (after one warning) if it cannot import."""
    if _IMPORT not in _verdicts:
        try:
            return importlib.import_module("sorth.kernels.triton_gs")
        except Exception as err:
            if forced:
                cause = _cause("import failed", err)
                raise MethodError(f"the Triton GS kernel was forced but {cause}.") from err
            _record(_IMPORT, _cause("import failed", err))
    if forced:
        raise MethodError(f"the Triton GS kernel was forced but {_verdicts[_IMPORT]}.")
    return None


def _capturing(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _cause(what: str, err: BaseException) -> str:
    """``"<what>: <type>: <message>"`` on one line (Triton's compile errors end with the reason)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    text = (
        f"{lines[0]} {lines[-1]}"
        if len(lines) > 1 and "Compilation" in type(err).__name__
        else lines[0]
    )
    return f"{what}: {type(err).__name__}: {text[:300]}"


def _check(kernel, x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan):
    """``None`` if ``kernel`` matches the torch kernel on a slice of ``x``, else the cause."""
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(x.device.type, enabled=False),
        ):
            xs, fs, gy = _check_inputs(x, factors)
            got = _value_and_grads(kernel, xs, fs, plan, gy)
            ref = _value_and_grads(
                torch_gs_apply, xs.double(), [B.double() for B in fs], plan, gy.double()
            )
            pairs = [((a - b).abs().max(), b.abs().max()) for a, b in zip(got, ref, strict=True)]
            errors = torch.stack([torch.stack(p) for p in pairs]).tolist()  # one sync, eager
    except torch.cuda.OutOfMemoryError:
        raise  # no verdict: the step itself would not fit either
    except Exception as err:
        return _cause("first-use check raised", err)
    tol = CHECK_TOLERANCE.get(x.dtype, CHECK_TOLERANCE[torch.float32])
    for name, (err, scale) in zip(("output", "∂x", "∂R", "∂L"), errors, strict=True):
        if not err <= tol * max(scale, 1e-30):  # also catches NaN
            return (
                f"first-use check: wrong result: {name} differs from the torch kernel by {err:.3g} "
                f"(max |reference| {scale:.3g}, tolerance {tol:g} relative)"
            )
    return None


def _check_inputs(x: torch.Tensor, factors: Sequence[torch.Tensor]):
    """``(x slice, random blocks, upstream gradient)`` of the check (Note [Triton check])."""
    gen = torch.Generator().manual_seed(0)  # CPU, private: the user's random stream is untouched
    h = x.detach().reshape(-1, x.shape[-1])[:CHECK_ROWS].to(torch.float64)
    h = torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(h.abs().max())
    if scale == 0.0:  # all-zero rows check little: random rows of the same shape
        h = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.device)
        scale = float(h.abs().max())
    h = h * 2.0 ** -math.frexp(scale)[1]  # exact: max |h| in [1/2, 1)
    fs = [torch.randn(B.shape, generator=gen, dtype=torch.float64) for B in factors]
    fs = [B / B.shape[2] ** 0.5 for B in fs]  # ~ orthogonal scale: |B x| ≈ |x|
    n_out = factors[-1].shape[0] * factors[-1].shape[1]
    gy = torch.randn(h.shape[0], n_out, generator=gen, dtype=torch.float64)
    like = factors[0]
    return h.to(x.dtype), [B.to(like.device, like.dtype) for B in fs], gy.to(x.device, x.dtype)


def _value_and_grads(kernel, x, factors, plan, gy) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in (x, *factors)]
    y = kernel(leaves[0], leaves[1:], plan)
    return [t.double() for t in (y.detach(), *torch.autograd.grad(y, leaves, gy))]
