"""dtype matrix: fp32 / bf16 / fp16 / fp64 base models with (by default) fp32 adapters.

Low-precision runs are compared with a float32 run of the same weights using
``tol_vs_float64(dtype)`` (one rounding per op of the low-precision type); merged vs unmerged in
the same dtype uses the same table, since merging rounds the weight once more."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from sorth import SOrthConfig
from tests._tolerances import tol, tol_vs_float64
from tests.tuner._models import MLP, ModelConv1D, ModelConv2D

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

CASES = {
    "mlp": (MLP, lambda: torch.randn(6, 16), {"target_modules": ["lin0", "lin1"]}),
    "conv1d": (ModelConv1D, lambda: torch.randn(2, 3, 16), {"target_modules": ["conv1d"]}),
    "conv2d": (
        lambda: ModelConv2D(padding=1),
        lambda: torch.randn(2, 8, 7, 7),
        {"target_modules": ["conv"], "side": "both"},
    ),
}


def _pair(name: str, dtype: torch.dtype, **kw):
    """The same adapted model in float32 and in ``dtype`` (base cast, adapter autocast)."""
    build, inputs, cfg = CASES[name]
    torch.manual_seed(0)
    base = build().eval()
    x = inputs()
    config = SOrthConfig(**cfg, block_size=4, init_weights=False)
    ref = get_peft_model(copy.deepcopy(base), config).eval()
    low = copy.deepcopy(ref).to(dtype)  # base and adapter in dtype ...
    if kw.get("autocast_adapter", True):
        for n, p in low.named_parameters():  # ... adapter back to fp32, as PEFT's autocast does
            if "sorth_" in n:
                p.data = p.data.float() if dtype != torch.float64 else p.data
    return ref, low, x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_forward_merge_in_dtype(name: str, dtype: torch.dtype) -> None:
    ref, low, x = _pair(name, dtype)
    # the float32 reference limits the comparison for float64 runs
    vs_ref = tol_vs_float64(torch.float32 if dtype == torch.float64 else dtype)
    with torch.no_grad():
        y_ref = ref(x)
        y = low(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), y_ref, **vs_ref)
        low.merge_adapter(safe_merge=True)
        y_merged = low(x.to(dtype))
        torch.testing.assert_close(y_merged, y, **tol_vs_float64(dtype))
        low.unmerge_adapter()
        torch.testing.assert_close(low(x.to(dtype)), y, **tol_vs_float64(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_adapter_dtype(dtype: torch.dtype, tmp_path) -> None:
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0", "lin1"], block_size=4)
    model = get_peft_model(MLP().to(dtype), cfg)
    adapter = {n: p.dtype for n, p in model.named_parameters() if "sorth_" in n}
    assert set(adapter.values()) == {torch.float32}
    kept = get_peft_model(MLP().to(dtype), cfg, autocast_adapter_dtype=False)
    assert {p.dtype for n, p in kept.named_parameters() if "sorth_" in n} == {dtype}
    model.train()
    model(torch.randn(4, 16, dtype=dtype)).float().pow(2).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "sorth_" in n)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(MLP().to(dtype), tmp_path)
    assert {p.dtype for n, p in loaded.named_parameters() if "sorth_" in n} == {torch.float32}


def test_float32_merge_is_tight() -> None:
    ref, _, x = _pair("mlp", torch.float32)
    with torch.no_grad():
        y = ref(x)
        ref.merge_adapter()
        torch.testing.assert_close(ref(x), y, **tol(torch.float32))


def test_cpu_autocast_bf16() -> None:
    ref, _, x = _pair("conv2d", torch.float32)
    with torch.no_grad():
        y = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_auto = ref(x)
    torch.testing.assert_close(y_auto.float(), y, **tol_vs_float64(torch.bfloat16))


class _WideningCopies(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts copies that widen a bf16 tensor of ``numel`` elements to float32."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(src, torch.Tensor)
            and src.dtype == torch.bfloat16
            and out.dtype == torch.float32
            and out.numel() == self.numel
        ):
            self.count += 1
        return out


@pytest.mark.parametrize("side", ["input", "output", "both"])
def test_autocast_activations_are_not_widened_and_cast_back(side: str) -> None:
    """Under bf16 autocast a bf16 activation goes to the GS multiply (and the frozen linear) as
    is: the tuner used to widen it to the adapters' float32, which the dispatch (and autocast)
    then cast straight back to bf16 — two extra passes over the activations per rotation."""
    model = get_peft_model(MLP(), SOrthConfig(target_modules=["lin1"], side=side, block_size=4))
    lin1 = model.base_model.model.lin1
    x = torch.randn(6, lin1.in_features, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), _WideningCopies(x.numel()) as widen_in:
        y = lin1(x)
    assert widen_in.count == 0
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()  # gradients still reach the float32 adapter parameters
    grads = [p.grad for n, p in model.named_parameters() if "sorth_" in n]
    assert grads
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    with torch.no_grad():
        ref = lin1(x.float())
    torch.testing.assert_close(y.float(), ref, **tol_vs_float64(torch.bfloat16))


class _One(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


_LAYERS = {
    "linear": (lambda: torch.nn.Linear(16, 16), lambda: torch.randn(3, 16)),
    "linear-nobias": (lambda: torch.nn.Linear(16, 16, bias=False), lambda: torch.randn(3, 16)),
    "conv1d": (lambda: Conv1D(16, 16), lambda: torch.randn(3, 5, 16)),
    "conv2d": (lambda: torch.nn.Conv2d(8, 8, 3, padding=1), lambda: torch.randn(2, 8, 6, 6)),
    "embedding": (lambda: torch.nn.Embedding(20, 16), lambda: torch.randint(0, 20, (3, 5))),
}


_SIDES = ("input", "output", "both")
_AUTOCAST_CASES = [
    *[(layer, side) for layer in ("linear", "linear-nobias", "conv1d") for side in _SIDES],
    ("conv2d", "input"),
    ("conv2d", "both"),
    ("embedding", "output"),
]


@pytest.mark.parametrize(("layer", "side"), _AUTOCAST_CASES)
def test_autocast_output_dtype_is_the_plain_layers(layer: str, side: str) -> None:
    """Regression: under CPU bf16 autocast a float32 input gave float32 out of a sorth layer,
    where nn.Linear / Conv2d / Conv1D (and PEFT's LoRA) return bfloat16 (Note [autocast
    dtype]); an Embedding (no autocast op) returns float32 either way."""
    build, inputs = _LAYERS[layer]
    torch.manual_seed(0)
    plain, x = _One(build()), inputs()
    cfg = SOrthConfig(target_modules=["layer"], block_size=4, side=side, init_weights=False)
    model = get_peft_model(copy.deepcopy(plain), cfg)
    with torch.no_grad():
        y_ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = plain(x).dtype
            y = model(x)
            model.merge_adapter()
            y_merged = model(x)
            model.unmerge_adapter()
    assert y.dtype == y_merged.dtype == want
    assert want == (torch.float32 if layer == "embedding" else torch.bfloat16)
    torch.testing.assert_close(y.float(), y_ref, **tol_vs_float64(torch.bfloat16))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().square().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "sorth_" in n]
    assert grads
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
