"""The fused ``h ⊙ s + b`` of the tuner layers: values and gradients against autograd."""

from __future__ import annotations

import pytest
import torch

from sorth.tuner.forward import _ScaleShift

F64 = torch.float64


CASES = [((3, 5, 6), -1), ((2, 6, 4, 3), -3), ((6,), -1)]  # Linear, Conv2d, unbatched


@pytest.mark.parametrize(("shape", "feature_dim"), CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_scale_shift_matches_autograd(shape, feature_dim, with_bias) -> None:
    torch.manual_seed(0)
    view = [1] * len(shape)
    view[feature_dim] = -1
    h = torch.randn(shape, dtype=F64, requires_grad=True)
    s = torch.randn(shape[feature_dim], dtype=F64, requires_grad=True)
    b = torch.randn(shape[feature_dim], dtype=F64, requires_grad=True) if with_bias else None

    def fused(h, s, b):
        return _ScaleShift.apply(h, s.view(view), None if b is None else b.view(view))

    def reference(h, s, b):
        y = h * s.view(view)
        return y if b is None else y + b.view(view)

    inputs = (h, s, b)
    torch.testing.assert_close(fused(*inputs), reference(*inputs))
    assert torch.autograd.gradcheck(fused, inputs)
    g = torch.randn(shape, dtype=F64)
    wrt = [t for t in inputs if t is not None]
    got = torch.autograd.grad(fused(*inputs), wrt, g)
    want = torch.autograd.grad(reference(*inputs), wrt, g)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)


def test_scale_shift_frozen_scale_saves_no_activation() -> None:
    h = torch.randn(4, 3, requires_grad=True)
    s = torch.randn(1, 3)  # no gradient wanted
    y = _ScaleShift.apply(h, s, None)
    assert y.grad_fn.saved_tensors[0] is None
    (gh,) = torch.autograd.grad(y.sum(), h)
    torch.testing.assert_close(gh, s.expand(4, 3))
