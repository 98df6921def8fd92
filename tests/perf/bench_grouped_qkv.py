"""Issue 15's untried CPU lever, measured: q/k/v's three GSOFT rotations of one input in one call.

Not a test (pytest does not collect it). In attention, ``q_proj``, ``k_proj`` and ``v_proj``
read the same ``x``; with input-side GSOFT each computes its own ``Q_a x = Pᵀ L_a P R_a x``
(two ``bmm`` and the shuffles per adapter). Grouped, the three are one GS chain of
``(3n) × n``: the first factor stacks the ``R_a`` blocks along the output rows (``(k, 3b, b)``:
``x`` is read once), a gather puts each adapter's rows into its own ``P``-shuffled segment, the
second factor stacks the ``L_a`` (``(3k, b, b)``), and a last gather applies each ``Pᵀ``; the
output ``(M, 3n)`` splits into the three rotated inputs. This times forward + backward (into
``x`` and all six factors) of the grouped chain against the three separate calls, interleaved,
and prints the median of the per-round ratios::

    python -m tests.perf.bench_grouped_qkv --n 1024 --block 32 --tokens 512 --threads 1

It checks the grouped chain against the separate calls before timing.
"""

from __future__ import annotations

import argparse
import importlib

import torch

from sorth import GSMatrix, GSOrthogonal, gs_apply
from sorth.permutations import invert_permutation


def _gather_index(P: torch.Tensor | None, n: int, b: int) -> torch.Tensor:
    """``g`` with ``(P x)[i] = x[g[i]]``, read off the kernel itself (identity blocks)."""
    eye = torch.eye(b, dtype=torch.float64).expand(n // b, b, b).contiguous()
    return gs_apply(torch.arange(n, dtype=torch.float64)[None], [eye], [None, P])[0].long()


def grouped_chain(mats: list[GSMatrix], n: int, b: int) -> tuple[list[torch.Tensor], list]:
    """Factors and permutations of the ``(A·n) × n`` chain ``[Q_1; …; Q_A]``."""
    A = len(mats)
    mid, out = (_gather_index(mats[0].perms[i], n, b) for i in (1, 2))
    g_mid = torch.cat([(mid // b) * (A * b) + a * b + mid % b for a in range(A)])
    g_out = torch.cat([a * n + out for a in range(A)])
    R = torch.cat([m.factors[0] for m in mats], dim=1)  # (k, A·b, b)
    L = torch.cat([m.factors[1] for m in mats], dim=0)  # (A·k, b, b)
    x = torch.randn(3, n, dtype=torch.float64)
    ref = torch.cat([GSMatrix([f.double() for f in m.factors], m.perms) @ x for m in mats], -1)
    inverse = [None, invert_permutation(g_mid), invert_permutation(g_out)]
    for perms in ([None, g_mid, g_out], inverse):
        y = gs_apply(x, [R.double(), L.double()], perms)  # the kernels' scatter convention
        if torch.allclose(y, ref, atol=1e-9):
            return [R, L], perms
    raise AssertionError("the grouped chain does not reproduce the separate rotations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bench = importlib.import_module("recipes.benchmark")  # interleaved rounds, paired ratios
    mats = []
    for _ in range(a.adapters):
        rot = GSOrthogonal(a.n, block_size=a.block)
        for p in rot.parameters():
            p.data.normal_(0, 0.1)
        Q = rot.matrix()
        mats.append(GSMatrix([f.detach().requires_grad_() for f in Q.factors], Q.perms))
    factors, perms = grouped_chain(mats, a.n, a.block)
    factors = [f.detach().requires_grad_() for f in factors]
    x = torch.randn(a.tokens, a.n, requires_grad=True)

    def separate() -> None:
        sum((gs_apply(x, m.factors, m.perms) ** 2).sum() for m in mats).backward()

    def grouped() -> None:
        (gs_apply(x, factors, perms) ** 2).sum().backward()

    t = bench.interleaved({"separate": separate, "grouped": grouped}, a.reps, 2, "cpu")
    sep, grp = (1e3 * bench.median(t[k]) for k in ("separate", "grouped"))
    ratio = bench.paired_ratio(t["grouped"], t["separate"])
    print(f"n={a.n} b={a.block} tokens={a.tokens} adapters={a.adapters} threads={a.threads}: "
          f"separate {sep:.2f} ms, grouped {grp:.2f} ms, ratio {ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
