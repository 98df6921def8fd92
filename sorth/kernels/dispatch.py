"""The one dispatch point of the GS multiply: which kernel runs for a device and dtype.

=========  ======================================================  ==========================
kernel     module                                                  used (``"auto"``)
=========  ======================================================  ==========================
torch      :mod:`sorth.kernels.torch_gs` (one ``bmm`` per factor)   everywhere else; fallback
triton     :mod:`sorth.kernels.triton_gs` (fused, Note [Triton GS])  CUDA, 2 factors, fp16/bf16,
                                                                   triton importable
reference  :mod:`sorth.kernels.reference` (dense)                   tests only
=========  ======================================================  ==========================

The choice is ``"auto"`` unless the environment variable ``SORTH_GS_KERNEL`` (read and checked
once, when ``sorth`` is imported: any case, surrounding spaces ignored, empty means ``"auto"``)
or :func:`use_kernel` says ``"torch"`` or ``"triton"``. The first time the Triton kernel is
picked for a kernel class it is checked against the torch kernel on a slice of the real input;
with ``"auto"`` a failure warns once and the torch kernel runs for that class from then on,
forced it raises (Note [Triton check] in :mod:`sorth.kernels.triton_check`). Forcing
``"triton"`` where it cannot run raises :class:`~sorth.errors.MethodError` naming the reason.
Triton is imported lazily, the first time the Triton kernel is chosen, so ``import sorth`` never
needs it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator, Sequence

import torch

from sorth.errors import MethodError, check_choice
from sorth.kernels.plan import Perm, ShufflePlan, shuffle_plan
from sorth.kernels.torch_gs import torch_gs_apply
from sorth.kernels.triton_check import run_triton, triton_fits, triton_verdict

__all__ = [
    "KERNELS",
    "gs_apply",
    "gs_apply_planned",
    "select_kernel",
    "triton_available",
    "use_kernel",
]

KERNELS: tuple[str, ...] = ("auto", "torch", "triton")
AUTO_DEVICES = ("cuda",)  # where "auto" sends work to Triton (tests add "cpu" + the interpreter)
TRITON_DTYPES = (torch.float16, torch.bfloat16)  # what "auto" sends to Triton on CUDA
MAX_TRITON_BLOCK = 128  # larger blocks make the kernel's register tiles too big ("auto")


def _kernel_from_env() -> str:
    """``SORTH_GS_KERNEL``, checked at import: any case, empty or unset = ``"auto"``."""
    raw = os.environ.get("SORTH_GS_KERNEL", "")
    name = raw.strip().lower() or "auto"
    if name not in KERNELS:
        raise MethodError(
            f"SORTH_GS_KERNEL={raw!r} is not a GS kernel; set it to one of {list(KERNELS)} "
            "or unset it."
        )
    return name


_choice: list[str] = [_kernel_from_env()]


def gs_apply(
    x: torch.Tensor, factors: Sequence[torch.Tensor], perms: Sequence[Perm]
) -> torch.Tensor:
    """Fast ``A @ x`` on the last dim for ``A = P_{m+1} B_m ··· B_1 P_1``.

    Args:
        x: ``(..., n_in)`` with ``n_in = k_1 · b_in_1``.
        factors: ``m`` tensors ``(k_i, b_out_i, b_in_i)``.
        perms: ``m + 1`` index vectors (or ``None``).

    Returns:
        ``(..., n_out)`` with ``n_out = k_m · b_out_m``, by the kernel :func:`select_kernel`
        picks (Note [GS kernel] in :mod:`sorth.kernels.torch_gs`, Note [Triton GS] in
        :mod:`sorth.kernels.triton_gs`).
    """
    return gs_apply_planned(x, list(factors), shuffle_plan(perms))


def gs_apply_planned(
    x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan
) -> torch.Tensor:
    """:func:`gs_apply` with a precomputed shuffle plan; casts once under autocast."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, factors = x.to(dtype), [B.to(dtype) for B in factors]
        with torch.autocast(device, enabled=False):
            return _run(x, factors, plan)
    return _run(x, factors, plan)


def _run(x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan) -> torch.Tensor:
    if torch.compiler.is_compiling():  # dynamo traces the torch kernel (no Triton launch inside)
        return torch_gs_apply(x, factors, plan)
    if select_kernel(x, factors) == "triton":
        forced = _choice[0] == "triton"
        if triton_fits(x, factors, plan, forced):  # Note [Triton check]
            return run_triton(x, factors, plan, forced)
    return torch_gs_apply(x, factors, plan)


def select_kernel(
    x: torch.Tensor, factors: Sequence[torch.Tensor], plan: ShufflePlan | None = None
) -> str:
    """``"torch"`` or ``"triton"``: the kernel :func:`gs_apply` runs for this input.

    ``"auto"`` picks Triton for a 2-factor chain on CUDA in fp16/bf16 when triton is
    importable (never under ``torch.compile``, which traces the torch kernel), torch otherwise.
    With ``plan`` (:attr:`sorth.GSMatrix.plan`) the answer also reflects a failed first-use
    check of this kernel class (Note [Triton check]); it never runs one.

    The Triton kernel is the automatic choice on CUDA, yet it is tested only in Triton's CPU
    interpreter against the dense reference: it has never run on a GPU, so its speed and its
    behaviour on real hardware are unmeasured (each first use on CUDA is checked against the
    torch kernel, Note [Triton check]). ``use_kernel("torch")`` (or ``SORTH_GS_KERNEL=torch``)
    keeps a CUDA run on the tested torch kernel.
    """
    choice = _choice[0]
    if choice == "torch" or (choice == "auto" and x.device.type not in AUTO_DEVICES):
        return "torch"  # the hot CPU path
    reason = _triton_unfit(x, factors, strict=choice == "triton")
    if reason is None:
        if choice == "auto" and plan is not None and triton_verdict(x, factors, plan) is False:
            return "torch"
        return "triton"
    if choice == "triton":
        raise MethodError(f"the Triton GS kernel was forced but cannot run: {reason}.")
    return "torch"


def _triton_unfit(x: torch.Tensor, factors: Sequence[torch.Tensor], strict: bool) -> str | None:
    """Why the Triton kernel cannot (``strict``: must not) run here, or ``None``."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if x.device.type != "cuda" and not (interpreted and (strict or x.device.type in AUTO_DEVICES)):
        return f"input is on {x.device.type}; it runs on CUDA (or on CPU with TRITON_INTERPRET=1)"
    if len(factors) != 2:
        return f"it handles 2-factor chains, this one has {len(factors)} (use 'torch')"
    if any(B.dtype != x.dtype for B in factors):
        dtypes = [str(B.dtype) for B in factors]
        return f"input {x.dtype} and factors {dtypes} differ; cast them to one dtype"
    if not strict and x.dtype not in TRITON_DTYPES:
        return f"'auto' sends only {TRITON_DTYPES} to Triton, got {x.dtype}"
    if not strict and max(max(B.shape[1:]) for B in factors) > MAX_TRITON_BLOCK:
        return f"'auto' sends blocks up to {MAX_TRITON_BLOCK} to Triton (register tiles)"
    if not triton_available():
        return "triton is not importable (pip install triton, or use 'torch')"
    return None


@functools.cache
def triton_available() -> bool:
    """Whether ``import triton`` would succeed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


@contextlib.contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Run the GS multiply with kernel ``name`` (``"auto"``, ``"torch"``, ``"triton"``) inside.

    Example: ``with use_kernel("torch"): y = gs @ x`` (the fallback, e.g. for an A/B timing).
    """
    check_choice("kernel", name, KERNELS)
    old, _choice[0] = _choice[0], name
    try:
        yield
    finally:
        _choice[0] = old
