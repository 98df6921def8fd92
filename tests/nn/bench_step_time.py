"""Side-by-side time per training step of LipConvNet-15: SOC vs GS-SOC, same width.

Not a test (pytest does not collect it). Every configuration runs one step in turn, so all of
them see the same machine load; the median over ``--reps`` rounds is reported.

    python -m tests.nn.bench_step_time --reps 8 --threads 1 --configs soc "gs:4,-" "gs:4,2"
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sorth.nn as snn


def _parse(spec: str) -> tuple[str, tuple[int, int | None]]:
    if spec == "soc":
        return "soc", (4, None)
    a, b = spec.split(":")[1].split(",")
    return "gs", (int(a), None if b == "-" else int(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["soc", "gs:4,-", "gs:4,2"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=15)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    nets, opts = {}, {}
    for spec in args.configs:
        conv, groups = _parse(spec)
        gen = torch.Generator().manual_seed(0)
        nets[spec] = snn.LipConvNet(
            args.depth, conv, groups, init_channels=args.width, num_classes=100, generator=gen
        )
        opts[spec] = torch.optim.SGD(nets[spec].parameters(), lr=0.01, momentum=0.9)

    def step(spec: str) -> float:
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(nets[spec](x), y)
        opts[spec].zero_grad()
        loss.backward()
        opts[spec].step()
        return time.perf_counter() - t

    for spec in nets:  # warm-up, including the first power-iteration refresh
        step(spec)
        step(spec)
    times: dict[str, list[float]] = {spec: [] for spec in nets}
    for _ in range(args.reps):
        for spec in nets:
            times[spec].append(step(spec))
    ref = statistics.median(times[args.configs[0]])
    for spec, ts in times.items():
        med = statistics.median(ts)
        n = sum(p.numel() for p in nets[spec].parameters())
        print(f"{spec:8s} {n / 1e6:6.2f}M params  median {med:.3f} s/step  "
              f"speed-up vs {args.configs[0]} {ref / med:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
