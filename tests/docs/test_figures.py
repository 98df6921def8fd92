"""The documentation figures: regenerated from code, current in the repo, and showing true facts.

Every figure in docs/figures is drawn by sorth.plotting; these tests redraw them, compare them
with the committed files, and check the data behind each picture against the paper's results
(Theorem 2 for density, Proposition 1 for block ranks, P_(k,n) in the scatter convention).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sorth
from sorth import plotting

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"


def _pixels(path: Path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_docs_figures_are_current(tmp_path: Path) -> None:
    written = plotting.write_docs_figures(tmp_path)
    assert sorted(p.name for p in written) == sorted(plotting.DOCS_FIGURES)
    committed = sorted(p.name for p in FIGURES.glob("*.png"))
    assert committed == sorted(plotting.DOCS_FIGURES), "run `make figures` and commit docs/figures"
    for new in written:
        old = _pixels(FIGURES / new.name)
        fresh = _pixels(new)
        assert old.shape == fresh.shape, f"{new.name} changed size: run `make figures`"
        differing = (abs(old - fresh).max(axis=-1) > 0.1).mean()
        assert differing < 0.005, f"{new.name}: {differing:.1%} of pixels differ; `make figures`"


def test_every_figure_is_used_in_the_docs_and_every_image_exists() -> None:
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    used = set(re.findall(r"figures/([\w.-]+\.png)", pages))
    assert used == set(plotting.DOCS_FIGURES)
    assert all((FIGURES / name).is_file() for name in used)


def test_saving_is_deterministic(tmp_path: Path) -> None:
    fig = plotting.plot_structure([{"n": 12, "nblocks": 3}])
    a = plotting.save_figure(fig, tmp_path / "a.png").read_bytes()
    b = plotting.save_figure(fig, tmp_path / "b.png").read_bytes()
    assert a[:8] == b"\x89PNG\r\n\x1a\n"
    assert a == b
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


@pytest.mark.parametrize(("n", "r"), [(12, 3), (16, 4), (32, 8), (24, 2)])
def test_structure_panels_are_pt_l_p_r_and_q(n: int, r: int) -> None:
    b = n // r
    panels = plotting.structure_data(n, nblocks=r)
    assert [p.kind for p in panels] == ["perm", "factor", "perm", "factor", "product"]
    Pt, L, P, R, Q = (p.mask for p in panels)
    expected_P = sorth.permutation_matrix(sorth.gs_permutation(r, n)) > 0
    assert torch.equal(P, expected_P)
    assert torch.equal(Pt, expected_P.T)
    blocks = torch.block_diag(*[torch.ones(b, b)] * r) > 0
    assert torch.equal(L, blocks)
    assert torch.equal(R, blocks)
    # Q's support is the boolean product Pᵀ L P R, and dense iff b >= r (Theorem 2, m = 2)
    product = (Pt.double() @ L.double() @ P.double() @ R.double()) > 0
    assert torch.equal(Q, product)
    assert bool(Q.all()) == (b >= r)


@pytest.mark.parametrize(
    "gs",
    [
        sorth.GSMatrix.gsoft(torch.ones(4, 3, 3), torch.ones(4, 3, 3)),
        sorth.GSMatrix.gs(torch.ones(4, 3, 3), torch.ones(2, 6, 6)),
        sorth.GSMatrix.butterfly([torch.ones(8, 2, 2)] * 3),
        sorth.GSMatrix.shuffled([torch.ones(9, 3, 3)] * 3),
        sorth.GSMatrix.monarch(torch.ones(4, 2, 3), torch.ones(3, 4, 2)),
        sorth.GSMatrix([torch.ones(2, 6, 4), torch.ones(4, 3, 3)]),
    ],
)
def test_chain_support_equals_core_support(gs: sorth.GSMatrix) -> None:
    """The figures' support is the core's, and both are where the all-ones product is > 0."""
    assert torch.equal(plotting.chain_support(gs), gs.support())
    assert torch.equal(gs.support(), gs.to(torch.float64).to_dense() > 0)


@pytest.mark.parametrize(("n", "b"), [*plotting.DENSITY_CASES, (64, 4), (64, 8)])
def test_density_curves_follow_theorem_2(n: int, b: int) -> None:
    c = plotting.density_curves(n, b)
    assert c.gs_needed == sorth.min_factors_for_density(n, b)
    gs = dict(zip(c.factors, c.gs, strict=True))
    assert gs[c.gs_needed] == 1.0
    if c.gs_needed > 1:
        assert gs[c.gs_needed - 1] < 1.0  # optimal: one factor fewer is never dense
    assert all(x <= y for x, y in zip(c.gs, c.gs[1:], strict=False))  # more factors, more mixing
    bf = dict(zip(c.factors, c.butterfly, strict=True))
    if bf.get(c.butterfly_needed) is not None:
        assert bf[c.butterfly_needed] == 1.0
        assert bf[c.butterfly_needed - 1] < 1.0
    # at every m the GS chain is at least as dense as the butterfly
    assert all(d is None or g >= d for g, d in zip(c.gs, c.butterfly, strict=True))


def test_density_curve_of_the_papers_example() -> None:
    c = plotting.density_curves(1024, 32)
    assert (c.gs_needed, c.butterfly_needed) == (2, 6)
    assert c.gs[:2] == [1 / 32, 1.0]
    assert c.butterfly[:6] == [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]


def test_block_ranks_reach_proposition_1() -> None:
    cases = plotting._rank_cases()
    for d in cases:
        assert torch.equal(d.numeric, d.bound), d.title
    paper = cases[0].bound  # k_L = 4 blocks 3×3, k_R = 2 blocks 6×6: A_00 = u0 v2ᵀ + u2 v4ᵀ
    assert paper.tolist() == [[2, 1], [2, 1], [1, 2], [1, 2]]
    assert set(cases[1].bound.flatten().tolist()) == {3}  # r = 2, b = 6: b / r
    assert set(cases[2].bound.flatten().tolist()) == {2}  # r = 4, b = 8: b / r
    assert set(cases[3].bound.flatten().tolist()) == {0, 1}  # b < r
    # every row i of R lands in exactly one block: the ranks add up to the inner size
    assert [int(d.bound.sum()) for d in cases] == [12, 12, 32, 32]


def test_too_large_to_draw_is_a_clear_error() -> None:
    with pytest.raises(sorth.BlockSizeError, match="n=8192 is too large to draw"):
        plotting.structure_data(8192, nblocks=8)


def test_import_sorth_does_not_import_matplotlib() -> None:
    code = "import sys, sorth, sorth.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
