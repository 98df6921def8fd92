"""A short tour of the core on real layer sizes: ``python -m sorth.tour``.

For each feature size it builds GSOFT (``Pᵀ L P R``), OFT (block-diagonal) and BOFT's block
butterfly with the same block size, moves them away from the identity, and prints their
parameter counts, structural density (Theorem 2), orthogonality error, and the time of the
structured multiply relative to one dense ``n × n`` matmul measured side by side.
"""

from __future__ import annotations

import argparse
import time

import torch

from sorth.gs import min_butterfly_factors_for_density, min_factors_for_density
from sorth.orthogonal import orthogonality_error
from sorth.parametrizations import GSOrthogonal

__all__ = ["main", "run"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(sizes: tuple[int, ...], block_size: int, tokens: int, repeats: int) -> list[dict]:
    """Build each structure at each size; return one row of measurements per (size, structure)."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in sizes:
        x = torch.randn(tokens, n, generator=gen)
        W = torch.randn(n, n, generator=gen) / n**0.5
        for structure in ("gs", "oft", "butterfly"):
            q = GSOrthogonal(n, block_size=block_size, structure=structure)
            q.reset_parameters("random", std=0.3, generator=gen)
            with torch.no_grad():
                err = orthogonality_error(q.dense()).item()
                density = q.matrix().density()
                q(x)  # warm-up
                t_q = _median_time(lambda q=q, x=x: q(x), repeats)
                t_w = _median_time(lambda W=W, x=x: x @ W.T, repeats)
            rows.append(
                {
                    "n": n,
                    "structure": structure,
                    "factors": q.n_factors,
                    "params": q.num_parameters,
                    "density": density,
                    "orth_error": err,
                    "time_vs_dense_matmul": t_q / t_w,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sorth.tour", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1024, 4096])
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512, help="rows of the input batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"sorth core tour: block size {args.block_size}, {args.tokens} tokens, float32, CPU")
    header = (
        f"{'n':>6} {'structure':>10} {'factors':>7} {'params':>9} {'density':>8} "
        f"{'max|QᵀQ−I|':>11} {'time / dense matmul':>20}"
    )
    print(header)
    for r in run(tuple(args.sizes), args.block_size, args.tokens, args.repeats):
        print(
            f"{r['n']:>6} {r['structure']:>10} {r['factors']:>7} {r['params']:>9,} "
            f"{r['density']:>8.3f} {r['orth_error']:>11.2e} {r['time_vs_dense_matmul']:>20.3f}"
        )
    for n in args.sizes:
        print(
            f"n={n}: GS needs {min_factors_for_density(n, args.block_size)} factor(s) to be dense, "
            f"the butterfly {min_butterfly_factors_for_density(n, args.block_size)} (Theorem 2)."
        )


if __name__ == "__main__":
    main()
