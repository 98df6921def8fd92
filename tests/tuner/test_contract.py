"""Regression tests for the defects PEFT's generic suite found (issue 12) and for merge/unmerge
state safety (issue 14: monarch + Neumann unmerge, Embedding(max_norm) merges).

Each test fails on the code before the fix; PEFT's own suite runs in compat/peft_suite/.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from sorth import GSOrthogonal, SOrthConfig
from sorth.errors import BlockSizeError, SOrthValueError
from sorth.gs import GSMatrix
from sorth.orthogonal import NEUMANN_MAX_ERROR, cayley, cayley_neumann, unpack_skew
from sorth.plotting import chain_support
from sorth.sizing import default_block_size
from sorth.tuner import AdapterCheckpointError, SOrthLayer
from tests._tolerances import tol
from tests.tuner._models import MLP, ModelConv2D, mlp_input

F32 = tol(torch.float32)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}


# ------------------------------------------------------------ merged weights are contiguous
@pytest.mark.parametrize("side", ["output", "both"])
def test_merged_weights_save_with_safetensors(side: str, tmp_path) -> None:
    # issue 12: side="output"/"both" left non-contiguous merged weights; save_file raised
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    cfg = SOrthConfig(target_modules=["0", "2"], block_size=4, side=side, init_weights=False)
    model = get_peft_model(base, cfg).eval()
    x = torch.randn(5, 16)
    with torch.no_grad():
        y = model(x)
    merged = model.merge_and_unload()
    state = merged.state_dict()
    assert all(t.is_contiguous() for t in state.values())
    save_file(state, tmp_path / "merged.safetensors")
    reloaded = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    reloaded.load_state_dict(load_file(tmp_path / "merged.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), y, **F32)


# ------------------------------------------------------------------------ default size
@pytest.mark.parametrize(
    ("n", "b"), [(1, 1), (2, 2), (7, 7), (10, 5), (12, 4), (20, 5), (72, 9), (768, 32), (3072, 64)]
)
def test_default_block_size_is_the_smallest_divisor_at_least_sqrt_n(n: int, b: int) -> None:
    assert default_block_size(n) == b
    assert n % b == 0
    assert b * b >= n
    assert all(d * d < n for d in range(1, b) if n % d == 0)


def test_default_size_gives_dense_two_factor_gs_and_reloads(tmp_path) -> None:
    # issue 12: SOrthConfig(target_modules=[...]) without a size raised
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0", "lin1"], side="both", init_weights=False)
    model = get_peft_model(MLP(), cfg).eval()
    sizes = {}
    for name, q in model.named_modules():
        if isinstance(q, GSOrthogonal):
            sizes[name] = (q.n, q.nblocks, q.block_size)
            assert q.block_size == default_block_size(q.n)
            support = chain_support(GSMatrix(q.matrix().factors, q.perms))
            assert bool(support.all()), f"{name}: 2-factor GS with b >= r must be dense"
    # lin0: in 16 -> 4 x 4, out 32 -> 4 x 8; lin1: in 32 -> 4 x 8, out 8 -> 2 x 4
    assert sorted(sizes.values()) == [(8, 2, 4), (16, 4, 4), (32, 4, 8), (32, 4, 8)]
    x = mlp_input()
    with torch.no_grad():
        y = model(x)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["block_size"] is None
    assert saved["nblocks"] is None
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(MLP().eval(), tmp_path)
    got = {
        n: (q.n, q.nblocks, q.block_size)
        for n, q in loaded.named_modules()
        if isinstance(q, GSOrthogonal)
    }
    assert got == sizes
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)


def test_inspect_shows_the_default_size(tmp_path, capsys) -> None:
    from sorth import cli

    torch.manual_seed(0)
    model = get_peft_model(MLP(), SOrthConfig(target_modules=["lin0"]))
    model.save_pretrained(tmp_path)
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "block_size=auto" in out
    assert "4×4" in out  # lin0: n = 16 -> r × b = 4 × 4


# --------------------------------------------------------------- b = 1: no rotation at all
def test_block_size_one_is_refused_naming_the_layer() -> None:
    model = MLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BlockSizeError, match=r"'lin0'.*block_size=1 on a side of size n=16"):
        get_peft_model(model, SOrthConfig(target_modules=["lin0"], block_size=1))
    assert isinstance(model.lin0, nn.Linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(BlockSizeError, match=r"'lin1'.*n=32"):
        get_peft_model(MLP(), SOrthConfig(target_modules=["lin1"], nblocks=32))


def test_a_layer_that_admits_only_block_size_one_is_refused() -> None:
    # a 1x1 conv with one input channel: the filter has a single entry, so the default size
    # (and every size) is b = 1
    model = ModelConv2D(in_channels=1, out_channels=8, kernel_size=1)
    with pytest.raises(BlockSizeError, match=r"'conv'.*n=1.*single feature"):
        get_peft_model(model, SOrthConfig(target_modules=["conv"]))
    assert isinstance(model.conv, nn.Conv2d)
    # monarch with b = 1 is one dense n x n block: allowed
    get_peft_model(MLP(), SOrthConfig(target_modules=["lin0"], block_size=1, structure="monarch"))


# --------------------------------------------------------------------- grouped Conv2d merge
def test_grouped_conv2d_merge_equals_unmerged_at_large_magnitude() -> None:
    # issue 12: Conv2d(16, 32, 3, padding=1, groups=2), block_size=8: merged vs unmerged
    # differed by 3e-3 at magnitude 440; the forward now builds the weight as the merge does
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(32 * 64, 2)
    )
    cfg = SOrthConfig(target_modules=["0"], block_size=8, init_weights=False)
    model = get_peft_model(base, cfg).eval()
    x = torch.arange(2 * 16 * 8 * 8, dtype=torch.float32).view(2, 16, 8, 8)
    with torch.no_grad():
        y = model(x)
        model.merge_adapter()
        y_merged = model(x)
        model.unmerge_adapter()
        y_unmerged = model(x)
    assert y.abs().max() > 100
    torch.testing.assert_close(y_merged, y, rtol=1e-6, atol=0)
    torch.testing.assert_close(y_unmerged, y, rtol=1e-5, atol=0)


# ------------------------------------------------------- Neumann after high-lr divergence
def _neumann_model() -> nn.Module:
    torch.manual_seed(0)
    cfg = SOrthConfig(
        target_modules=["lin0", "lin1"], block_size=8, orthogonal_map="cayley_neumann"
    )
    return get_peft_model(MLP(), cfg)


def test_neumann_stays_finite_and_orthogonal_after_high_lr_steps() -> None:
    # issue 12: PEFT's test_only_params_are_updated (SGD lr 0.5, 3 steps) gave NaN parameters
    model = _neumann_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.arange(6 * 16, dtype=torch.float32).view(6, 16)
    for _ in range(3):
        loss = model(x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = [p for n, p in model.named_parameters() if "sorth_" in n]
    assert all(torch.isfinite(p).all() for p in params)
    assert max(p.abs().max() for p in params) > 1.0  # far from the identity: the series is useless
    with torch.no_grad():
        for q in model.modules():
            if isinstance(q, GSOrthogonal):
                for p, (_, b), B in zip(q.params, q._shapes, q.orthogonal_factors(), strict=True):
                    K = unpack_skew(p, b)
                    rho = torch.linalg.matrix_norm(K) / 2**0.5
                    useless = 2 * rho**5 + rho**10 > NEUMANN_MAX_ERROR
                    assert useless.any()
                    torch.testing.assert_close(B[useless], cayley(K[useless]), **F32)
                    series = cayley_neumann(K[~useless], 5, max_error=None)
                    torch.testing.assert_close(B[~useless], series, **F32)


def test_loading_non_finite_adapter_says_diverged_not_corrupted(tmp_path) -> None:
    model = _neumann_model()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "sorth_in" in n)[0, 0] = float("nan")
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    with pytest.raises(AdapterCheckpointError, match="training diverged") as err:
        PeftModel.from_pretrained(MLP(), tmp_path)
    assert "corrupted" not in str(err.value)
    assert "intact" in str(err.value)


# ------------------------------------------- merge / unmerge: all or nothing, monarch Neumann
def _monarch_neumann() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    cfg = SOrthConfig(
        target_modules=["lin0", "lin1"],
        structure="monarch",
        orthogonal_map="cayley_neumann",
        block_size=2,  # r != b on every side
        side="both",
        init_weights=False,
    )
    return get_peft_model(MLP(), cfg).eval(), mlp_input()


def test_monarch_neumann_unmerge_restores_the_weights() -> None:
    # issue 14: unmerge built one identity of the first factor's block size and raised
    model, x = _monarch_neumann()
    weights = _weights(model)
    with torch.no_grad():
        y = model(x)
        model.merge_adapter()
        torch.testing.assert_close(model(x), y, **F32)
        model.unmerge_adapter()
        torch.testing.assert_close(model(x), y, **F32)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p.detach(), weights[n], **F32)
    assert not any(m.merged for m in model.modules() if isinstance(m, SOrthLayer))


def _fail_on(monkeypatch, layer: SOrthLayer, inverse: bool) -> None:
    """Make the second adapter's merge (or inverse) step on ``layer`` raise."""
    real = SOrthLayer._apply_to_weight
    second = "default" if inverse else "other"  # unmerge goes last merged first

    def flaky(self, W, name, inverse, _fail=inverse, **kwargs):
        if self is layer and inverse == _fail and name == second:
            raise RuntimeError("boom")
        return real(self, W, name, inverse=inverse, **kwargs)

    monkeypatch.setattr(SOrthLayer, "_apply_to_weight", flaky)


@pytest.mark.parametrize("step", ["merge", "unmerge"])
def test_a_failed_merge_or_unmerge_leaves_the_state_as_it_was(step: str, monkeypatch) -> None:
    # issue 14: any failure inside merge/unmerge must leave weight and merged_adapters unchanged
    model, _ = _monarch_neumann()
    model.add_adapter(
        "other", SOrthConfig(target_modules=["lin0"], block_size=4, init_weights=False)
    )
    model.base_model.set_adapter(["default", "other"])
    layer = model.base_model.model.lin0
    if step == "unmerge":
        layer.merge()
        layer._merge_snapshot = None  # no exact restore (as after a device move): the inverse
    before = (layer.get_base_weight().clone(), list(layer.merged_adapters))
    _fail_on(monkeypatch, layer, inverse=step == "unmerge")
    with pytest.raises(RuntimeError, match="boom"):
        getattr(layer, step)()
    assert torch.equal(layer.get_base_weight(), before[0])
    assert layer.merged_adapters == before[1]


def test_merge_refuses_non_finite_weights_even_without_safe_merge() -> None:
    # Differs from PEFT on purpose: PEFT writes NaN weights into the base unless safe_merge=True;
    # sorth refuses (the base could not be restored from them) and leaves the layer unmerged.
    model, _ = _monarch_neumann()
    layer = model.base_model.model.lin0
    with torch.no_grad():
        layer.sorth_s["default"][0] = float("inf")
    W = layer.get_base_weight().clone()
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        layer.merge(safe_merge=False)
    assert torch.equal(layer.get_base_weight(), W)
    assert layer.merged_adapters == []


# ------------------------------------------------------------------- Embedding(max_norm)
class _EmbMaxNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, max_norm=1.0)
        with torch.no_grad():
            self.emb.weight.mul_(3.0)  # rows well above max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x)


def test_embedding_max_norm_with_scale_is_refused() -> None:
    # issue 14: merged != unmerged by 0.125 (the scale changes the row norms max_norm clips)
    model = _EmbMaxNorm()
    with pytest.raises(SOrthValueError, match=r"'emb'.*max_norm=1\.0.*scale=False"):
        get_peft_model(model, SOrthConfig(target_modules=["emb"], side="output", block_size=4))
    assert isinstance(model.emb, nn.Embedding)


def test_embedding_max_norm_without_scale_merges_exactly() -> None:
    torch.manual_seed(0)
    cfg = SOrthConfig(
        target_modules=["emb"], side="output", block_size=4, scale=False, init_weights=False
    )
    model = get_peft_model(_EmbMaxNorm(), cfg).eval()
    idx = torch.tensor([[1, 2, 3, 5], [7, 1, 11, 13]])
    with torch.no_grad():
        y = model(idx)  # renormalises rows 1, 2, 3, 5, 7, 11, 13 of the base weight in place
        W = model.base_model.model.emb.get_base_weight().clone()
        model.merge_adapter()
        torch.testing.assert_close(model(idx), y, **F32)
        model.unmerge_adapter()
        torch.testing.assert_close(model(idx), y, **F32)
        torch.testing.assert_close(model.base_model.model.emb.get_base_weight(), W, **F32)
    assert float(y.norm(dim=-1).max()) <= 1.0 + 1e-6


# ------------------------------------------------------------------------- exact unmerge
def test_exact_unmerge_restores_the_base_weight_bit_for_bit() -> None:
    # Note [exact unmerge]: with exact_unmerge=True merge/unmerge cycles do not move a bit
    torch.manual_seed(0)
    cfg = SOrthConfig(
        target_modules=["lin0", "lin1"], side="both", init_weights=False, exact_unmerge=True
    )
    model = get_peft_model(MLP(), cfg)
    weights = _weights(model)
    for _ in range(3):
        model.merge_adapter()
        model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in weights:
            assert torch.equal(p, weights[n]), n


def test_unmerge_inverts_a_merged_weight_that_was_changed() -> None:
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0"], side="both", init_weights=False, exact_unmerge=True)
    model = get_peft_model(MLP(), cfg).eval()
    layer = model.base_model.model.lin0
    W = layer.get_base_weight().clone()
    model.merge_adapter()
    with torch.no_grad():
        layer.get_base_layer().weight.add_(1.0)  # e.g. a user edit while merged
    model.unmerge_adapter()
    # the snapshot is stale, so the merge is inverted: A^T (W' + 1) A_out^T / s, not W
    assert not torch.equal(layer.get_base_weight(), W)
    expected = layer._apply_to_weight(
        layer._apply_to_weight(W, "default", False) + 1, "default", True
    ).float()
    torch.testing.assert_close(layer.get_base_weight(), expected, **F32)


@pytest.mark.parametrize("n", [1031, 2 * 1031])
def test_default_size_without_a_divisor_near_sqrt_n_is_refused(n: int, tmp_path) -> None:
    # issue 26: width 1031 got one dense 1031 x 1031 block (33x the parameters of 1024), silently
    base = nn.Sequential(nn.Linear(n, 8))
    with pytest.raises(
        BlockSizeError, match=rf"default block size of a side of size n={n} .*exclude_modules"
    ):
        get_peft_model(base, SOrthConfig(target_modules=["0"]))
    # an explicit size keeps the dense block; the adapter saved so still loads with the default
    model = get_peft_model(
        nn.Sequential(nn.Linear(n, 8)),
        SOrthConfig(target_modules=["0"], block_size=default_block_size(n)),
    )
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    saved["block_size"] = None
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    PeftModel.from_pretrained(nn.Sequential(nn.Linear(n, 8)), tmp_path)


def test_default_size_keeps_small_and_well_divisible_widths() -> None:
    for n in (251, 1024, 1030):  # a small prime (cheap dense block), 32 x 32, 1030 = 2*5*103
        get_peft_model(nn.Sequential(nn.Linear(n, 8)), SOrthConfig(target_modules=["0"]))
