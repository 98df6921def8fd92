"""The Triton kernel can never break a run: its first-use check and the fallback to torch.

Note [Triton check] in ``sorth.kernels.triton_check``. Without a GPU the kernel runs in Triton's
interpreter on CPU tensors, and ``"auto"`` is told to send CPU work to it (``AUTO_DEVICES``);
failures are injected by replacing the launched kernels: a compile error, a launch error (out of
shared memory), a kernel with a wrong output or a wrong gradient, and triton failing to import.
Each case runs real training steps of a PEFT model under bf16 autocast and checks that they
finish with the torch kernel's result, that exactly one warning names the cause, and that the
forced mode (``use_kernel("triton")``) raises instead.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

if not torch.cuda.is_available():  # must be set before the kernels are defined (at import)
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed: Triton check tests skipped")
pytest.importorskip("peft")

from peft import get_peft_model
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

import sorth
from sorth import SOrthConfig
from sorth.errors import MethodError
from sorth.kernels import (
    clear_triton_checks,
    dispatch,
    select_kernel,
    triton_check,
    triton_checks,
    triton_gs,
    use_kernel,
)
from tests._tolerances import tol_vs_float64
from tests.tuner._models import MLP

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_gs.INTERPRET:
    pytest.skip(
        "no GPU and triton was imported without TRITON_INTERPRET=1", allow_module_level=True
    )
LOW = torch.bfloat16


@pytest.fixture(autouse=True)
def _auto_sends_cpu_to_triton(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(dispatch, "AUTO_DEVICES", ("cuda", "cpu"))
    clear_triton_checks()
    yield
    clear_triton_checks()


class Launches:
    """Stands in for a ``@triton.jit`` kernel: counts launches, then runs ``inject``."""

    def __init__(self, kernel, inject=None) -> None:
        self.kernel, self.inject, self.count = kernel, inject, 0

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.count += 1
            if self.inject is None:
                return self.kernel[grid](*args, **meta)
            return self.inject(self.kernel[grid], args, meta)

        return launch


def _compile_error(run, args, meta):
    raise CompilationError(None, ast.parse("acc = tl.dot(a, b)").body[0], "injected: bad dot")


def _out_of_resources(run, args, meta):
    raise OutOfResources(232448, 101376, "shared memory")


def _wrong_output(run, args, meta):
    run(*args, **meta)
    args[3].mul_(1.1)  # y


def _wrong_r_grad(run, args, meta):
    run(*args, **meta)
    args[7].mul_(-1.0)  # the per-program partial ∂R


INJECTED = {  # name -> (kernel replaced, injection, what the warning says)
    "compile": ("gs2_forward", _compile_error, "CompilationError: .*injected: bad dot"),
    "launch": ("gs2_backward", _out_of_resources, "OutOfResources: out of resource: shared"),
    "wrong_output": ("gs2_forward", _wrong_output, "wrong result: output differs"),
    "wrong_grad": ("gs2_backward", _wrong_r_grad, "wrong result: ∂R differs"),
}


def _model():
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0", "lin1"], block_size=4, init_weights=False)
    return get_peft_model(MLP(), cfg).to(DEVICE)


def _train(model, steps: int = 2) -> torch.Tensor:
    """``steps`` AdamW steps under bf16 autocast; returns the last loss."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for _ in range(steps):
        with torch.autocast(DEVICE, dtype=LOW):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return loss.detach()


def _adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "sorth_" in n}


@pytest.fixture(scope="module")
def torch_run() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    model = _model()
    with use_kernel("torch"):
        loss = _train(model)
    return _adapter(model), loss


def _sorth_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "Triton GS kernel" in str(w.message)]


def test_a_passing_class_is_checked_once_then_runs_triton(monkeypatch, torch_run) -> None:
    fwd = Launches(triton_gs.gs2_forward)
    monkeypatch.setattr(triton_gs, "gs2_forward", fwd)
    model = _model()
    rng = torch.get_rng_state()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loss = _train(model)
    assert _sorth_warnings(record) == []
    assert torch.equal(torch.get_rng_state(), rng)  # the check draws from its own generator
    assert list(triton_checks().values()) == ["passed"]  # lin0 and lin1: one class (16 × 16)
    # 2 steps × 2 layers (one rotation each, input side) + the check's one launch
    assert fwd.count == 2 * 2 + 1
    want, want_loss = torch_run
    torch.testing.assert_close(loss, want_loss, **tol_vs_float64(LOW))
    for name, p in _adapter(model).items():
        torch.testing.assert_close(p, want[name], **tol_vs_float64(LOW))


@pytest.mark.parametrize("case", list(INJECTED))
def test_an_injected_failure_never_stops_a_training_step(case, monkeypatch, torch_run) -> None:
    kernel, inject, says = INJECTED[case]
    spy = Launches(getattr(triton_gs, kernel), inject)
    monkeypatch.setattr(triton_gs, kernel, spy)
    model = _model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loss = _train(model)
    messages = _sorth_warnings(record)
    assert len(messages) == 1, messages
    assert messages[0].startswith("sorth: the Triton GS kernel is not used for cpu bfloat16 blo")
    assert "SORTH_GS_KERNEL=torch" in messages[0]
    [verdict] = triton_checks().values()
    assert verdict.startswith("failed:")
    assert re.search(says, verdict), verdict
    assert spy.count == 1  # only the check launched it: the steps ran the torch kernel
    want, want_loss = torch_run  # ... so they are the torch kernel's steps, bit for bit
    assert torch.equal(loss, want_loss)
    for name, p in _adapter(model).items():
        assert torch.equal(p, want[name]), name
    x = torch.randn(3, 16, dtype=LOW, device=DEVICE)
    A = sorth.GSMatrix.gsoft(*[torch.randn(4, 4, 4, dtype=LOW, device=DEVICE)] * 2)
    assert select_kernel(x, A.factors) == "triton"  # what "auto" picks for the class ...
    assert select_kernel(x, A.factors, A.plan) == "torch"  # ... and what runs after the check


@pytest.mark.parametrize("case", list(INJECTED))
def test_forced_triton_raises_the_failure(case, monkeypatch) -> None:
    kernel, inject, says = INJECTED[case]
    monkeypatch.setattr(triton_gs, kernel, Launches(getattr(triton_gs, kernel), inject))
    model = _model()
    with use_kernel("triton"), pytest.raises(MethodError, match=f"forced but failed for .*{says}"):
        _train(model, steps=1)


def test_triton_that_cannot_import_falls_back(monkeypatch, torch_run) -> None:
    monkeypatch.delitem(sys.modules, "sorth.kernels.triton_gs")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    model = _model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loss = _train(model)
    [message] = _sorth_warnings(record)
    assert re.search(r"not used: import failed: (ModuleNotFound|Import)Error", message)
    assert torch.equal(loss, torch_run[1])
    with use_kernel("triton"), pytest.raises(MethodError, match="forced but import failed"):
        _train(model, steps=1)


def test_a_launch_failing_after_the_check_falls_back_in_forward_and_backward(
    monkeypatch, torch_run
) -> None:
    """A new token count is a new Triton specialization: its launch may fail after the check."""
    model = _model()
    _train(model, steps=1)  # the class passes its check
    assert list(triton_checks().values()) == ["passed"]
    bwd = Launches(triton_gs.gs2_backward, _out_of_resources)
    monkeypatch.setattr(triton_gs, "gs2_backward", bwd)
    reference = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loss = _train(model, steps=2)
    [message] = _sorth_warnings(record)
    assert "backward launch failed: OutOfResources" in message
    assert bwd.count == 2  # the failing step: both layers' forwards had run in Triton
    with use_kernel("torch"):
        want = _train(reference, steps=2)
    torch.testing.assert_close(loss, want, **tol_vs_float64(LOW))


def test_a_forward_launch_failing_after_the_check_falls_back(monkeypatch) -> None:
    A = sorth.GSMatrix.gsoft(*[torch.randn(4, 4, 4, dtype=LOW, device=DEVICE)] * 2)
    x = torch.randn(5, 16, dtype=LOW, device=DEVICE)
    A @ x  # the class passes its check
    fwd = Launches(triton_gs.gs2_forward, _compile_error)
    monkeypatch.setattr(triton_gs, "gs2_forward", fwd)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        y = A @ x
        A @ x
    [message] = _sorth_warnings(record)
    assert "launch failed: CompilationError" in message
    assert fwd.count == 1  # the second call ran the torch kernel
    with use_kernel("torch"):
        assert torch.equal(y, A @ x)


def test_no_check_while_compiling_or_capturing(monkeypatch) -> None:
    q = sorth.GSOrthogonal(16, block_size=4).to(DEVICE)
    q.reset_parameters("random", std=0.3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 16, dtype=LOW, device=DEVICE)
    with use_kernel("torch"):
        want = q(x)
    compiled = torch.compile(q, backend="eager", fullgraph=True)  # dynamo traces the torch kernel
    torch.testing.assert_close(compiled(x), want)
    assert triton_checks() == {}
    monkeypatch.setattr(triton_check, "_capturing", lambda x: True)  # as in CUDA-graph capture
    torch.testing.assert_close(q(x), want)  # that call runs the torch kernel, unchecked
    assert triton_checks() == {}
    monkeypatch.undo()
    monkeypatch.setattr(dispatch, "AUTO_DEVICES", ("cuda", "cpu"))
    with torch.inference_mode():  # the next eager call checks, even in inference mode
        y = q(x)
    assert list(triton_checks().values()) == ["passed"]
    torch.testing.assert_close(y, want, **tol_vs_float64(LOW))


def test_the_check_uses_every_gradient() -> None:
    """The check compares the output and all three gradients (a kernel off in one fails)."""
    x = torch.randn(9, 16, dtype=LOW, device=DEVICE)
    A = sorth.GSMatrix.gsoft(*[torch.randn(4, 4, 4, dtype=LOW, device=DEVICE)] * 2)

    assert triton_check._check(triton_gs.triton_gs_apply, x, A.factors, A.plan) is None
    for index, name in enumerate(("∂x", "∂R", "∂L")):

        def skewed(x, factors, plan, index=index):
            leaves = [x, *factors]
            leaves[index] = _Scale.apply(leaves[index])
            return triton_gs.triton_gs_apply(leaves[0], leaves[1:], plan)

        cause = triton_check._check(skewed, x, A.factors, A.plan)
        assert cause is not None
        assert cause.startswith(f"first-use check: wrong result: {name} differs"), cause


class _Scale(torch.autograd.Function):
    """Identity forward, gradient × 1.5 (a kernel whose one gradient is off)."""

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return 1.5 * g


@pytest.mark.parametrize(
    ("value", "kernel"), [("", "torch"), ("Torch", "torch"), (" TRITON ", "triton")]
)
def test_sorth_gs_kernel_any_case_and_empty_means_auto(value: str, kernel: str) -> None:
    """In a fresh process: ``SORTH_GS_KERNEL=`` is the shell's "unset", the case is free."""
    code = (
        "import torch, sorth; from sorth.kernels import select_kernel; "
        "A = sorth.GSMatrix.gsoft(torch.randn(2, 8, 8), torch.randn(2, 8, 8)); "
        "x = torch.randn(3, 16); y = A @ x; print(select_kernel(x, A.factors))"
    )
    env = dict(os.environ, SORTH_GS_KERNEL=value, TRITON_INTERPRET="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [kernel]


def test_a_bad_sorth_gs_kernel_fails_at_import_with_one_line() -> None:
    env = dict(os.environ, SORTH_GS_KERNEL="trition")
    out = subprocess.run(
        [sys.executable, "-c", "import sorth"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        "sorth.errors.MethodError: SORTH_GS_KERNEL='trition' is not a GS kernel; set it to one "
        "of ['auto', 'torch', 'triton'] or unset it."
    )


def test_out_of_memory_is_raised_and_gives_no_verdict(monkeypatch) -> None:
    """Running out of memory is no kernel defect: no fallback, no verdict, the next call checks."""

    def oom(run, args, meta):
        raise torch.cuda.OutOfMemoryError("injected: CUDA out of memory")

    A = sorth.GSMatrix.gsoft(*[torch.randn(4, 4, 4, dtype=LOW, device=DEVICE)] * 2)
    x = torch.randn(5, 16, dtype=LOW, device=DEVICE)
    monkeypatch.setattr(triton_gs, "gs2_forward", Launches(triton_gs.gs2_forward, oom))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        A @ x  # in the first-use check
    assert triton_checks() == {}
    monkeypatch.undo()
    monkeypatch.setattr(dispatch, "AUTO_DEVICES", ("cuda", "cpu"))
    A @ x  # checked now, and passes
    monkeypatch.setattr(triton_gs, "gs2_forward", Launches(triton_gs.gs2_forward, oom))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        A @ x  # in a later launch
    assert list(triton_checks().values()) == ["passed"]
