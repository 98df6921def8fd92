"""GS multiply kernels: dense reference, torch (``bmm``, any device), Triton (fused, CUDA).

:func:`gs_apply` / :func:`gs_apply_planned` are the one dispatch point
(:mod:`sorth.kernels.dispatch`); :func:`use_kernel` forces a kernel; :func:`triton_checks` shows
the first-use checks of the Triton kernel (Note [Triton check]). Importing this package never
imports triton.
"""

from __future__ import annotations

from sorth.kernels.dispatch import (
    KERNELS,
    gs_apply,
    gs_apply_planned,
    select_kernel,
    triton_available,
    use_kernel,
)
from sorth.kernels.plan import ShufflePlan, shuffle_plan
from sorth.kernels.reference import gs_apply_reference
from sorth.kernels.torch_gs import torch_gs_apply
from sorth.kernels.triton_check import CHECK_TOLERANCE, clear_triton_checks, triton_checks

__all__ = [
    "CHECK_TOLERANCE",
    "KERNELS",
    "ShufflePlan",
    "clear_triton_checks",
    "gs_apply",
    "gs_apply_planned",
    "gs_apply_reference",
    "select_kernel",
    "shuffle_plan",
    "torch_gs_apply",
    "triton_available",
    "triton_checks",
    "use_kernel",
]
