"""The fused Triton GS kernel (Note [Triton GS]) against the dense reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, on CPU tensors);
shapes are small so that the module takes seconds. Every case checks the output and all three
gradients (``x``, ``R``, ``L``) with one shared upstream gradient, on odd shapes: ``n`` not a
power of two, ``r ≠ b``, rectangular blocks, token counts that are not a multiple of the tile.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():  # must be set before the kernels are defined (at import)
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed: Triton GS kernel tests skipped")

import sorth
from sorth import GSMatrix
from sorth.errors import MethodError
from sorth.kernels import select_kernel, use_kernel
from sorth.kernels.triton_gs import INTERPRET, triton_gs_apply
from tests._tolerances import tol_vs_float64

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not INTERPRET:
    pytest.skip(
        "no GPU and triton was imported without TRITON_INTERPRET=1", allow_module_level=True
    )
F64 = torch.float64


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _blocks(k: int, b_out: int, b_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, b_out, b_in, generator=g, dtype=F64) / b_in**0.5


CASES = {
    # GSOFT Pᵀ L P R, n = 15 (r = 3, b = 5): not a power of two, r ≠ b
    "gsoft_r3_b5": lambda: GSMatrix.gsoft(_blocks(3, 5, 5, 1), _blocks(3, 5, 5, 2)),
    # GSOFT with r > b (r = 6, b = 2): blocks padded from 2 to 16
    "gsoft_r6_b2": lambda: GSMatrix.gsoft(_blocks(6, 2, 2, 3), _blocks(6, 2, 2, 4)),
    # general P_L L P R P_R: random permutations everywhere, rectangular blocks
    # R: 4 blocks 3×6 (24 -> 12), L: 2 blocks 5×6 (12 -> 10)
    "general_random": lambda: GSMatrix(
        [_blocks(4, 3, 6, 5), _blocks(2, 5, 6, 6)], [_perm(24, 7), _perm(12, 8), _perm(10, 9)]
    ),
    # Definition 3.1 default P = P_(k_L, s) with k_L ≠ k_R and no outer permutations
    "gs_default": lambda: GSMatrix.gs(_blocks(2, 6, 6, 10), _blocks(4, 3, 3, 11)),
    # generalized Monarch: P_L = P_(s, l·s) is a shuffle, not an index vector
    "monarch": lambda: GSMatrix.monarch(_blocks(3, 2, 4, 12), _blocks(4, 3, 5, 13)),
}


def _check(A: GSMatrix, dtype: torch.dtype, tokens: int, lead: tuple[int, ...] = ()) -> None:
    n_in = A.shape[1]
    x64 = torch.randn(*lead, tokens, n_in, dtype=F64, generator=torch.Generator().manual_seed(0))
    fa = [B.to(dtype).to(DEVICE).requires_grad_() for B in A.factors]
    xa = x64.to(dtype).to(DEVICE).requires_grad_()
    ya = triton_gs_apply(xa, fa, A.to(DEVICE).plan)
    # reference in float64 on the same (rounded) inputs
    fb = [B.detach().double().cpu().requires_grad_() for B in fa]
    xb = xa.detach().double().cpu().requires_grad_()
    yb = sorth.gs_apply_reference(xb, fb, A.perms)
    assert ya.dtype == dtype
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya.double().cpu(), yb, **tol_vs_float64(dtype))
    g = torch.randn(yb.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    ya.backward(g.to(dtype).to(DEVICE))
    yb.backward(g.to(dtype).double())
    torch.testing.assert_close(xa.grad.double().cpu(), xb.grad, **tol_vs_float64(dtype))
    for a, b in zip(fa, fb, strict=True):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.double().cpu(), b.grad, **tol_vs_float64(dtype))


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_all_gradients_match_dense_float32(case: str) -> None:
    _check(CASES[case](), torch.float32, tokens=37)  # 37: three tiles, the last one partial


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["gsoft_r3_b5", "general_random"])
def test_half_precision_accumulates_in_float32(case: str, dtype: torch.dtype) -> None:
    _check(CASES[case](), dtype, tokens=19, lead=(2,))


def test_more_tiles_than_programs_and_no_tokens() -> None:
    """Each program walks several tiles (factor gradients summed per program), and M = 0."""
    A = CASES["gsoft_r3_b5"]()
    _check(A, torch.float32, tokens=16 * 5 + 3)
    x = torch.randn(0, 15, device=DEVICE, requires_grad=True)
    y = triton_gs_apply(x, [B.float().to(DEVICE) for B in A.factors], A.plan)
    assert y.shape == (0, 15)


def test_input_gradient_only() -> None:
    A = CASES["general_random"]()
    x = torch.randn(9, A.shape[1], device=DEVICE, requires_grad=True)
    factors = [B.float().to(DEVICE) for B in A.factors]
    triton_gs_apply(x, factors, A.plan).sum().backward()
    ref = torch.ones(9, A.shape[0], dtype=F64) @ A.to_dense()
    torch.testing.assert_close(x.grad.double().cpu(), ref, **tol_vs_float64(torch.float32))


def test_dispatch_forced_triton_through_gsmatrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """``use_kernel("triton")`` routes ``GSMatrix @ x`` (and GSOrthogonal) to the kernel."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = sorth.GSOrthogonal(24, block_size=4).to(DEVICE)  # r = 6, b = 4
    q.reset_parameters("random", std=0.3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 24, device=DEVICE)
    with use_kernel("triton"):
        assert select_kernel(x, q.matrix().factors) == "triton"
        y = q(x)
    with use_kernel("torch"):
        assert select_kernel(x, q.matrix().factors) == "torch"
        y_ref = q(x)
    torch.testing.assert_close(y, y_ref, **tol_vs_float64(torch.float32))
    assert select_kernel(x.cpu(), [B.cpu() for B in q.matrix().factors]) == "torch"  # auto, CPU


def test_forced_triton_that_cannot_run_names_the_reason() -> None:
    three = GSMatrix.shuffled([torch.randn(2, 4, 4, device=DEVICE)] * 3)
    with use_kernel("triton"), pytest.raises(MethodError, match="2-factor chains, this one has 3"):
        three @ torch.randn(2, 8, device=DEVICE)
    with pytest.raises(MethodError, match="'bogus'"), use_kernel("bogus"):
        pass


def test_import_sorth_never_imports_triton() -> None:
    code = (
        "import sys, sorth, sorth.kernels; import torch; x = torch.randn(3, 16); "
        "sorth.GSMatrix.gsoft(torch.randn(2, 8, 8), torch.randn(2, 8, 8)) @ x; "
        "print('triton' in sys.modules, 'sorth.kernels.triton_gs' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
