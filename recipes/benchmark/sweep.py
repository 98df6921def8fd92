"""The hidden-size sweep (``--sweep``; ``''`` skips it): the training step of every method at each
``d``, and the cost of one GSOFT rotation per token, ``O(d·b)``, against the frozen ``d × d``
matmul, ``O(d²)``; ``loglog_slope`` fits the exponent, ``plot`` draws ``step_time_vs_d.png``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from recipes.benchmark.adapters import wrap
from recipes.benchmark.settings import ROWS, SWEEP_METHODS, Settings
from recipes.benchmark.timing import interleaved, make_step, median
from recipes.benchmark.workloads import make_workload


def rotation_cost_per_token(d: int, tokens: int, b: int, reps: int, device: str) -> dict:
    """One GSOFT rotation (Cayley + multiply, forward + backward) vs the frozen ``d × d`` matmul."""
    import sorth

    q = sorth.GSOrthogonal(d, block_size=b, device=device)
    q.reset_parameters("random", std=0.1)
    x = torch.randn(tokens, d, device=device, requires_grad=True)
    W = torch.randn(d, d, device=device) / math.sqrt(d)
    g = torch.randn(tokens, d, device=device)

    def rot() -> None:
        q(x).backward(g)

    def frozen() -> None:
        F.linear(x, W).backward(g)

    t = interleaved({"rot": rot, "frozen": frozen}, reps, 2, device)
    return {
        "d": d,
        "rotation_us_per_token": 1e6 * median(t["rot"]) / tokens,
        "frozen_linear_us_per_token": 1e6 * median(t["frozen"]) / tokens,
    }


def run_sweep(s: Settings) -> dict:
    out: dict = {"steps": {}, "rotation": [], "tokens": s.sweep_tokens, "layers": s.sweep_layers}
    for d in s.sweep:
        print(f"sweep d={d} ...", flush=True)
        torch.manual_seed(s.seed)
        sw = dataclasses.replace(s, unet=False)
        w = make_workload(sw, d=d, layers=s.sweep_layers, tokens=s.sweep_tokens)
        names = [
            n
            for n in SWEEP_METHODS
            if n in s.methods and (n != "peft_boft" or d <= s.sweep_boft_max)
        ]
        steps = {n: make_step(wrap(n, w, sw), w) for n in names}
        for n, t in interleaved(steps, s.sweep_reps, 1, s.device).items():
            out["steps"].setdefault(n, {})[d] = 1e3 * median(t)
        del steps
        out["rotation"].append(
            rotation_cost_per_token(d, s.sweep_tokens, s.block_size, s.sweep_reps * 2, s.device)
        )
    return out


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (c - my) for a, c in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den if den else float("nan")


def plot(sweep: dict, path: Path, b: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, pts in sweep["steps"].items():
        ds = sorted(pts)
        ax1.plot(ds, [pts[d] for d in ds], marker="o", label=ROWS[n].display + f" ({n})")
    ax1.set(xscale="log", yscale="log", xlabel="hidden size d", ylabel="training step (ms)")
    ax1.set_title(f"Llama, {sweep['layers']} layer(s), {sweep['tokens']} tokens, b={b}")
    ax1.legend(fontsize=7)
    rot = sweep["rotation"]
    ds = [r["d"] for r in rot]
    ax2.plot(ds, [r["rotation_us_per_token"] for r in rot], marker="o", label="GSOFT rotation")
    ax2.plot(ds, [r["frozen_linear_us_per_token"] for r in rot], marker="s", label="frozen d×d")
    ax2.set(xscale="log", yscale="log", xlabel="hidden size d", ylabel="µs per token (fwd+bwd)")
    ax2.set_title(f"per-token cost: O(d·b) vs O(d²), b={b}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
