"""Peak memory of one training step, measured in a fresh process per method.

The parent re-runs ``python -m recipes.benchmark <same flags> --probe-memory NAME`` (from the
folder that holds ``recipes/``); the child builds the workload and the adapter, runs a warm-up
step, then one measured step, and prints ``{"peak_mb": …, "step_mb": …}`` as its last line:
on CUDA the allocator peak, on CPU ``VmHWM`` after resetting it (``/proc/self/clear_refs``), with
``step_mb`` the increase over the memory before the step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from recipes.benchmark.adapters import wrap
from recipes.benchmark.settings import Settings
from recipes.benchmark.timing import make_step
from recipes.benchmark.workloads import make_workload

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds recipes/


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def probe_memory(name: str, s: Settings) -> dict[str, float]:
    """Run in a fresh process: peak of one training step (after a warm-up step)."""
    torch.manual_seed(s.seed)
    w = make_workload(s)
    model = wrap(name, w, s) if name != "base" else w.model
    step = make_step(model, w)
    step()  # warm-up: optimizer state exists from here on
    if s.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            "step_mb": (torch.cuda.max_memory_allocated() - before) / 2**20,
        }
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()
    peak = _status_kb("VmHWM")
    return {"peak_mb": peak / 1024, "step_mb": (peak - before) / 1024}


def memory_in_fresh_process(name: str, argv: list[str]) -> dict[str, float] | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", __package__, *argv, "--probe-memory", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode:
        print(f"  memory probe for {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
