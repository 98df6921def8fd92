"""SOC2d and GSOrthogonalConv2d: semantics, train/eval, errors, saving, dtypes, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import sorth.nn as snn
from sorth.errors import BlockSizeError, MethodError, ShapeError
from tests.nn._helpers import train_steps


def _reference_soc(conv: snn.SOC2d, x: torch.Tensor, terms: int) -> torch.Tensor:
    """SOC spelled out: space-to-depth, channel pad, Σ L^i x / i!, truncate, bias."""
    if conv.stride == 2:
        N, C, H, W = x.shape
        x = (
            x.view(N, C, H // 2, 2, W // 2, 2)
            .permute(0, 1, 3, 5, 2, 4)
            .reshape(N, 4 * C, H // 2, W // 2)
        )
    x = F.pad(x, (0, 0, 0, 0, 0, conv.max_channels - x.shape[1]))
    L = conv.normalized_kernel()
    p = conv.kernel_size // 2
    z, term = x, x
    for i in range(1, terms + 1):
        term = F.conv2d(term, L, padding=p, groups=conv.groups) / i
        z = z + term
    return z[:, : conv.out_channels] + conv.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize(("cin", "cout", "stride"), [(4, 8, 1), (8, 4, 1), (4, 8, 2), (4, 32, 2)])
def test_soc_matches_reference_in_train_and_eval(cin: int, cout: int, stride: int) -> None:
    conv = snn.SOC2d(cin, cout, 3, stride, groups=2).double()
    x = torch.randn(2, cin, 8, 8, dtype=torch.float64)
    conv.eval()
    torch.testing.assert_close(conv(x), _reference_soc(conv, x, 12))
    conv.train()
    y = conv(x)  # one power-iteration step first, then the 5-term series
    ref = _reference_soc(conv, x, 5)
    torch.testing.assert_close(y, ref)
    assert conv.terms == 5
    conv.eval()
    assert conv.terms == 12
    assert not torch.allclose(conv(x), ref)  # eval uses more terms


def test_eval_terms_changes_output() -> None:
    conv = snn.SOC2d(4, 4, 3, eval_terms=1).double().eval()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    L = conv.normalized_kernel()
    torch.testing.assert_close(conv(x), x + F.conv2d(x, L, padding=1) + conv.bias.view(1, -1, 1, 1))


def test_sigma_is_min_of_four_reshaped_norms_after_power_iteration() -> None:
    conv = snn.SOC2d(6, 6, 3, groups=2, init_iters=500).double()
    L = conv.skew_weight()
    exact = torch.stack(
        [torch.linalg.matrix_norm(M, ord=2) for M in snn.soc.reshaped_kernel_views(L)]
    )
    torch.testing.assert_close(conv.sigma(), exact.amin(0), rtol=1e-6, atol=0)


def test_power_iteration_runs_in_training_only() -> None:
    conv = snn.SOC2d(4, 4, 3)
    u0 = conv.u0.clone()
    with torch.no_grad():
        conv.weight.add_(torch.randn_like(conv.weight))
    conv.eval()
    conv(torch.randn(1, 4, 4, 4))
    assert torch.equal(conv.u0, u0)
    conv.train()
    conv(torch.randn(1, 4, 4, 4))
    assert not torch.equal(conv.u0, u0)


def test_gs_groups_one_is_soc() -> None:
    gs = snn.GSOrthogonalConv2d(8, 8, 3, 1, (1, None), paired=False)
    soc = snn.SOC2d(8, 8, 3)
    soc.load_state_dict(gs.conv1.state_dict())
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(gs.eval()(x), soc.eval()(x))


def test_gs_conv_is_shuffle_soc_shuffle_soc() -> None:
    gs = snn.GSOrthogonalConv2d(16, 32, 3, 2, (4, 2)).double().eval()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    p1 = snn.channel_permutation(16, 4, paired=True)
    p2 = snn.channel_permutation(32, 2, paired=True)
    y = gs.conv2(gs.conv1(x[:, p1])[:, p2])
    torch.testing.assert_close(gs(x), y)
    assert isinstance(gs.shuffle1, snn.ChannelShuffle)


def test_gs_input_shuffle_skipped_when_undefined_or_forced() -> None:
    gs = snn.GSOrthogonalConv2d(3, 32, 3, 1, (4, None))
    assert isinstance(gs.shuffle1, torch.nn.Identity)
    assert "shuffle_input=False" in repr(gs)
    with pytest.raises(BlockSizeError, match="2\\*groups to divide channels"):
        snn.GSOrthogonalConv2d(3, 32, 3, 1, (4, None), shuffle_input=True)


@pytest.mark.parametrize(
    ("groups", "k", "stride", "cin", "cout", "expected"),
    [
        ((4, None), 3, 1, 32, 32, 32 * 32 * 9 // 4 + 32),
        ((4, 2), 3, 2, 32, 64, 128 * 128 * 9 // 4 + 64 + 64 * 64 // 2 + 64),
        ((2, 1), 1, 1, 16, 8, 16 * 16 // 2 + 8 + 8 * 8 + 8),
    ],
)
def test_gs_parameter_count(groups, k, stride, cin, cout, expected) -> None:
    gs = snn.GSOrthogonalConv2d(cin, cout, k, stride, groups, device="meta")
    assert sum(p.numel() for p in gs.parameters()) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kernel_size": 4}, BlockSizeError, "kernel_size=4 is even"),
        ({"kernel_size": (3, 5)}, BlockSizeError, "square kernel"),
        ({"kernel_size": 0}, BlockSizeError, "kernel_size=0 must be a positive integer"),
        ({"stride": 3}, BlockSizeError, "stride=3 is not supported"),
        ({"groups": 3}, BlockSizeError, "groups=3 must divide the SOC width"),
        ({"padding": 0}, BlockSizeError, "padding=0"),
        ({"padding_mode": "reflect"}, MethodError, "padding_mode='reflect'"),
        ({"eval_terms": 0}, BlockSizeError, "eval_terms=0"),
    ],
)
def test_soc_construction_errors(kwargs: dict, error: type, match: str) -> None:
    args = {"in_channels": 8, "out_channels": 8, "kernel_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        snn.SOC2d(**args)


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ((3, None), "groups=3 must divide"),
        ((4, 3), "groups=3"),
        ((4, 0), "groups\\[1\\]=0"),
        ((4, 2, 1), "pass \\(a, b\\)"),
    ],
)
def test_gs_construction_errors(groups, match: str) -> None:
    with pytest.raises(BlockSizeError, match=match):
        snn.GSOrthogonalConv2d(16, 16, 3, 1, groups)


def test_gs_paired_needs_even_group_size() -> None:
    with pytest.raises(BlockSizeError, match="2\\*groups to divide channels"):
        snn.GSOrthogonalConv2d(12, 12, 3, 1, (4, 4))  # 12 channels, 4 groups of 3: pairs split


def test_forward_shape_errors() -> None:
    with pytest.raises(ShapeError, match="expects \\(N, 4, H, W\\)"):
        snn.SOC2d(4, 4)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ShapeError, match="even H and W"):
        snn.SOC2d(4, 4, stride=2)(torch.randn(1, 4, 5, 4))


@pytest.mark.parametrize("kind", ["soc", "gs"])
def test_state_dict_and_safetensors_round_trip(kind: str, tmp_path) -> None:
    def make(seed: int) -> torch.nn.Module:
        g = torch.Generator().manual_seed(seed)
        if kind == "soc":
            return snn.SOC2d(4, 8, 3, 2, generator=g)
        return snn.GSOrthogonalConv2d(8, 8, 3, 1, (2, 2), generator=g)

    a = make(0)
    train_steps(a, (a.in_channels, 8, 8))
    save_file(a.state_dict(), tmp_path / "layer.safetensors")
    b = make(1)
    x = torch.randn(2, a.in_channels, 8, 8)
    assert not torch.allclose(a.eval()(x), b.eval()(x))
    b.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    torch.testing.assert_close(b.eval()(x), a(x), rtol=0, atol=0)
    assert not any("perm" in key for key in a.state_dict())  # shuffles rebuilt, never saved


def test_factory_kwargs_and_repr() -> None:
    conv = snn.GSOrthogonalConv2d(8, 8, 3, groups=(2, 2), dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in conv.parameters())
    assert all(b.dtype == torch.float64 for n, b in conv.named_buffers() if "perm" not in n)
    y = conv(torch.randn(1, 8, 4, 4, dtype=torch.float64))
    assert y.dtype == torch.float64
    text = repr(snn.SOC2d(4, 8, 5, 2, groups=2, padding_mode="circular"))
    for part in ("kernel_size=5", "stride=2", "groups=2", "'circular'", "12 eval"):
        assert part in text


@pytest.mark.slow  # compiling takes ~1-2 min on a 2-core CPU
def test_torch_compile_eval_matches_eager() -> None:
    conv = snn.GSOrthogonalConv2d(8, 8, 3, 1, (2, 2)).eval()
    x = torch.randn(2, 8, 6, 6)
    compiled = torch.compile(conv)
    torch.testing.assert_close(compiled(x), conv(x))


def test_config_fields_take_effect() -> None:
    g = torch.Generator().manual_seed(0)
    base = snn.SOC2d(4, 4, 3, generator=g)
    half = snn.SOC2d(4, 4, 3, correction=0.35, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(half.normalized_kernel(), 0.5 * base.normalized_kernel())
    assert snn.SOC2d(4, 4, 1).correction == 1.0  # 1×1 default: the estimate is exact
    frozen = snn.SOC2d(4, 4, 3, update_iters=0, update_freq=1000)
    frozen.train()
    frozen(torch.randn(1, 4, 4, 4))  # step 0: the init_iters refresh
    u = frozen.u0.clone()
    with torch.no_grad():
        frozen.weight.add_(torch.randn_like(frozen.weight))
    frozen(torch.randn(1, 4, 4, 4))  # step 1: update_iters=0, nothing runs
    assert torch.equal(frozen.u0, u)
    every = snn.SOC2d(4, 4, 3, update_iters=0, update_freq=1)
    every.train()
    u = every.u0.clone()
    with torch.no_grad():
        every.weight.add_(torch.randn_like(every.weight))
    every(torch.randn(1, 4, 4, 4))  # update_freq=1: every step is a full refresh
    assert not torch.equal(every.u0, u)
