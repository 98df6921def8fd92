"""Interleaved timing: one call of every function per round, in rotating order, so that machine
load hits all of them alike; medians, and ratios paired per round.

``interleaved`` returns seconds per call, ``{name: [t_1, …, t_reps]}``; ``paired_ratio(xs, refs)``
is ``median_k(xs[k] / refs[k])``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from recipes.benchmark.workloads import Workload


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: str, verbose: bool = False
) -> dict[str, list[float]]:
    """Seconds per call of every function; one call of each per round, order rotating."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for n in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
        if verbose:
            shown = ", ".join(f"{n} {1e3 * times[n][-1]:.0f}" for n in names)
            print(f"  round {rep + 1}/{reps} (ms): {shown}", flush=True)
    return times


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    k = len(ys) // 2
    return ys[k] if len(ys) % 2 else 0.5 * (ys[k - 1] + ys[k])


def paired_ratio(xs: list[float], refs: list[float] | None) -> float | None:
    """``x / ref`` for timings taken in the same interleaved rounds: the median of the per-round
    ratios (a paired estimate: load that drifts between rounds cancels); for series from
    separate loops (HEAVY methods), the ratio of the medians."""
    if not xs or not refs:
        return None
    if len(xs) != len(refs):
        return median(xs) / median(refs)
    return median([x / r for x, r in zip(xs, refs, strict=True)])


def make_step(model: torch.nn.Module, w: Workload) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        model.train()
        w.loss(model, w.batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_infer(model: torch.nn.Module, w: Workload) -> Callable[[], None]:
    def infer() -> None:
        model.eval()
        with torch.no_grad():
            w.loss(model, w.batch)

    return infer
