"""GSOrthogonal: identity at init, orthogonal after training, structures, dtypes, saving."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import sorth
from sorth.errors import BlockSizeError, MethodError
from tests._tolerances import orth_atol, tol_vs_float64

STRUCTURES = ["gs", "oft", "butterfly", "monarch"]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", ["cayley", "expm", "cayley_neumann"])
def test_identity_at_init(structure: str, method: str) -> None:
    q = sorth.GSOrthogonal(64, nblocks=4, structure=structure, orthogonal_map=method)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(q(x), x)


@pytest.mark.parametrize("n_factors", [1, 2, 3, 4])
def test_identity_at_init_any_number_of_gs_factors(n_factors: int) -> None:
    q = sorth.GSOrthogonal(32, block_size=4, n_factors=n_factors)
    x = torch.randn(3, 32)
    torch.testing.assert_close(q(x), x)
    q.reset_parameters("random", std=0.5)
    with torch.no_grad():
        assert sorth.orthogonality_error(q.dense()) <= orth_atol(torch.float32, 32)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", ["cayley", "expm"])
def test_orthogonal_after_aggressive_training(structure: str, method: str) -> None:
    n = 64
    q = sorth.GSOrthogonal(n, nblocks=4, structure=structure, orthogonal_map=method)
    target = torch.linalg.qr(torch.randn(n, n))[0]
    opt = torch.optim.Adam(q.parameters(), lr=0.5)  # large steps: generators grow far from 0
    x = torch.randn(32, n)
    losses = []
    for _ in range(200):
        loss = (q(x) - x @ target.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it trained
    assert max(p.abs().max().item() for p in q.parameters()) > 1.0  # and moved far
    with torch.no_grad():
        assert sorth.orthogonality_error(q.dense()) <= orth_atol(torch.float32, n)


def test_orthogonality_at_real_size() -> None:
    """The figure in the closing note: n = 4096, block size 64, float32."""
    q = sorth.GSOrthogonal(4096, block_size=64)
    q.reset_parameters("random", std=0.3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = sorth.orthogonality_error(q.dense())
    assert err <= orth_atol(torch.float32, 4096, c=1.0)  # 4.9e-4; measured ~8e-7


def test_dense_matches_apply_and_gsmatrix() -> None:
    q = sorth.GSOrthogonal(48, block_size=6, dtype=torch.float64)
    q.reset_parameters("random", std=0.4)
    x = torch.randn(7, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(q(x), x @ q.dense().T)
        # b = 6 < r = 8: two factors reach b² = 36 of 48 inputs per output (Theorem 2) ...
        assert q.matrix().density() == pytest.approx(36 / 48)
    assert sorth.min_factors_for_density(48, 6) == 3  # ... and three factors are dense
    assert sorth.GSOrthogonal(48, block_size=6, n_factors=3).matrix().density() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_input_dtypes(dtype: torch.dtype) -> None:
    q = sorth.GSOrthogonal(64, block_size=8)
    q.reset_parameters("random", std=0.2)
    x = torch.randn(4, 64)
    y = q(x.to(dtype))
    assert y.dtype == dtype
    with torch.no_grad():
        ref = x.double() @ q.dense().double().T
    torch.testing.assert_close(y.double(), ref, **tol_vs_float64(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_parameter_dtypes_and_factory_kwargs(dtype: torch.dtype) -> None:
    q = sorth.GSOrthogonal(32, nblocks=4, dtype=dtype)
    assert all(p.dtype == dtype for p in q.parameters())
    q.reset_parameters("random", std=0.2)
    y = q(torch.randn(2, 32, dtype=dtype))
    assert y.dtype == dtype
    meta = sorth.GSOrthogonal(32, nblocks=4, device="meta")
    assert all(p.is_meta for p in meta.parameters())


def test_autocast_bf16() -> None:
    q = sorth.GSOrthogonal(64, block_size=8)
    q.reset_parameters("random", std=0.2)
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    with torch.no_grad():
        torch.testing.assert_close(y.float(), x @ q.dense().T, **tol_vs_float64(torch.bfloat16))


def test_storage_full_and_skew_agree_and_count() -> None:
    skew = sorth.GSOrthogonal(64, block_size=8, storage="skew")
    full = sorth.GSOrthogonal(64, block_size=8, storage="full")
    assert skew.num_parameters == 2 * 8 * (8 * 7 // 2) == 64 * 7  # d(b-1)
    assert full.num_parameters == 2 * 64 * 8  # 2 d b, as the paper counts
    with torch.no_grad():
        for p in full.params:
            p.copy_(torch.randn(p.shape))
        for ps, pf in zip(skew.params, full.params, strict=True):
            ps.copy_(sorth.pack_skew(pf))
        torch.testing.assert_close(skew.dense(), full.dense())


def test_butterfly_default_factors_are_dense() -> None:
    q = sorth.GSOrthogonal(64, nblocks=8, structure="butterfly")
    assert q.n_factors == 4 == sorth.min_butterfly_factors_for_density(64, 8)
    assert q.matrix().density() == 1.0
    g = sorth.GSOrthogonal(64, nblocks=8, structure="gs")
    assert g.matrix().density() == 1.0
    assert g.num_parameters * 2 == q.num_parameters


def test_butterfly_default_factors_capped_by_block_count() -> None:
    q = sorth.GSOrthogonal(768, block_size=64, structure="butterfly")  # r = 12 = 4 * 3
    assert q.n_factors == 3  # dense would need 5, but factor i needs 2**i | 12
    assert q.matrix().density() < 1.0
    with pytest.raises(BlockSizeError, match=r"2\*\*3 to divide the number of blocks"):
        sorth.GSOrthogonal(768, block_size=64, structure="butterfly", n_factors=4)


def test_block_dropout_replaces_blocks_by_identity() -> None:
    q = sorth.GSOrthogonal(64, nblocks=8, structure="oft", block_dropout=0.5)
    q.reset_parameters("random", std=0.5)
    x = torch.randn(3, 64)
    torch.manual_seed(1)
    q.train()
    y = q(x).detach()
    same = [torch.allclose(y[:, i * 8 : (i + 1) * 8], x[:, i * 8 : (i + 1) * 8]) for i in range(8)]
    assert 0 < sum(same) < 8  # some blocks dropped to identity, some not
    with torch.no_grad():
        assert sorth.orthogonality_error(q.dense()) < 1e-5
    q.eval()
    with torch.no_grad():
        torch.testing.assert_close(q(x), x @ q.dense().T)


def test_state_dict_has_no_permutations_and_round_trips(tmp_path) -> None:
    q = sorth.GSOrthogonal(32, nblocks=4, structure="butterfly")
    q.reset_parameters("random", std=0.3)
    sd = q.state_dict()
    assert all(k.startswith("params.") for k in sd)
    save_file(sd, tmp_path / "q.safetensors")
    q2 = sorth.GSOrthogonal(32, nblocks=4, structure="butterfly")
    q2.load_state_dict(load_file(tmp_path / "q.safetensors"))
    x = torch.randn(5, 32)
    torch.testing.assert_close(q2(x), q(x))


def test_repr() -> None:
    r = repr(sorth.GSOrthogonal(32, nblocks=4))
    assert "n=32, nblocks=4, block_size=8, structure='gs'" in r


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"block_size": 6}, BlockSizeError, r"block_size=6 must divide n=64; valid choices here"),
        ({"nblocks": 3, "block_size": 8}, BlockSizeError, "nblocks=3 must divide n=64"),
        ({"nblocks": 4, "block_size": 8}, BlockSizeError, "disagree"),
        ({"block_size": 0}, BlockSizeError, "block_size=0 must be a positive integer"),
        (
            {"block_size": 8, "orthogonal_map": "svd"},
            MethodError,
            "orthogonal_map='svd' is not supported",
        ),
        ({"block_size": 8, "structure": "dense"}, MethodError, "structure='dense'"),
        ({"block_size": 8, "storage": "half"}, MethodError, "storage='half'"),
        ({"block_size": 8, "structure": "oft", "n_factors": 2}, BlockSizeError, "exactly 1 factor"),
        ({"block_size": 8, "n_factors": 0}, BlockSizeError, "n_factors=0"),
        ({"block_size": 8, "block_dropout": 1.0}, BlockSizeError, r"block_dropout=1.0 must be in"),
        ({"nblocks": 16, "structure": "butterfly", "block_size": None}, BlockSizeError, "even"),
        ({"nblocks": 8, "structure": "butterfly", "n_factors": 5}, BlockSizeError, r"2\*\*4"),
    ],
)
def test_bad_input(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        sorth.GSOrthogonal(64 if kwargs.get("nblocks") != 16 else 48, **kwargs)
