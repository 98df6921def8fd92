"""One table of test tolerances, by dtype. Loosen here, with the reason, never inline."""

from __future__ import annotations

import torch

# (rtol, atol) for comparing two equivalent computations done in the same dtype. These are
# torch.testing.assert_close's own defaults (torch 2.13), except float32, where the GS
# multiply chains several matmuls and reshapes (errors add up over m factors of size b):
# atol 1e-5 -> 1e-4 relative to O(1) activations.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}

# Comparing a low-precision run against a float64 reference of the same math: one rounding per
# matmul, so allow a few ulps of the low-precision type relative to O(1) values.
VS_FLOAT64: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Keyword arguments ``rtol``/``atol`` for ``assert_close`` in ``dtype``."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


def tol_vs_float64(dtype: torch.dtype) -> dict[str, float]:
    """``rtol``/``atol`` for a ``dtype`` result against a float64 reference."""
    rtol, atol = VS_FLOAT64[dtype]
    return {"rtol": rtol, "atol": atol}


def orth_atol(dtype: torch.dtype, n: int, c: float = 10.0) -> float:
    """``‖QᵀQ − I‖_max`` allowed for an ``n × n`` orthogonal matrix in ``dtype`` (PyTorch's)."""
    return c * n * torch.finfo(dtype).eps
