"""The prepared GPU check, ``scripts/gpu_check.sh OUT_DIR``: one command, at most 8 minutes.

Runs with the machine's own torch / triton / transformers and sorth from the checkout, and
writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` after every row (atomically), so a
run stopped at any point leaves what it measured. Sections, each with its own time budget
inside a global deadline (a row that would start after its budget is listed as not run):

(a) accuracy: the Triton and torch GS kernels against the dense float64 reference, output and
    every gradient, fp32/fp16/bf16, b ∈ {8, …, 128}, r ≠ b, odd token counts
    (:mod:`recipes.benchmark.gpu_accuracy`);
(b) bandwidth: the fused multiply (and the torch kernel) against a device-to-device copy of the
    same bytes (:func:`recipes.benchmark.gpu.gs_bandwidth`);
(c) training steps: PEFT LoRA, PEFT OFT, sorth GSOFT (Triton and torch kernels) and Double
    GSOFT on a 2-layer Llama at d ∈ {1024, 2048, 4096}, bf16
    (:func:`~recipes.benchmark.gpu.gpu_rows`);
(d) fine-tune: 20 bf16 GSOFT steps on a small Llama built from a config, then merged == unmerged.

``--quick --device cpu`` is the same code on tiny sizes (CI runs it; with ``TRITON_INTERPRET=1``
section (a) also runs the Triton kernel, in Triton's interpreter). Sections (c) and (d) need
PEFT and transformers; where they are missing their rows say so (``skipped: peft not
installed``) and the JSON lists the wheels to carry in (:data:`WHEELS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from recipes.benchmark.gpu_accuracy import accuracy_rows
from recipes.benchmark.gpu_report import markdown

ROOT = Path(__file__).resolve().parents[2]
# section -> (title, seconds on a GPU, seconds with --quick)
SECTIONS = {
    "a": ("accuracy: Triton / torch / dense", 150, 20),
    "b": ("bandwidth: fused multiply vs copy", 45, 8),
    "c": ("training steps", 170, 25),
    "d": ("20-step GSOFT fine-tune + merge", 45, 10),
}
DEADLINE = 440  # seconds for the whole run (scripts/gpu_check.sh kills at 470)
# what sections (c) and (d) import beyond torch; the pure-Python wheels (psutil: one abi3
# wheel) to carry onto a machine without them, at the versions of constraints.txt
WHEELS = (
    *("peft", "transformers", "accelerate", "safetensors", "huggingface_hub", "psutil", "tqdm"),
    *("pyyaml", "packaging", "numpy", "filelock", "fsspec", "regex", "tokenizers"),
)
MODULE_OF = {"pyyaml": "yaml"}


class DeadlineError(BaseException):
    """The global deadline passed (SIGALRM; a BaseException, so that no `except Exception` on
    the way, e.g. a row's error handler, swallows it)."""


@dataclasses.dataclass
class Run:
    out: Path
    device: str
    quick: bool
    start: float
    deadline: float
    res: dict

    def left(self) -> float:
        """Seconds to the global deadline."""
        return self.deadline - (time.monotonic() - self.start)

    def save(self) -> None:
        """Write the JSON and the markdown table (temp file + rename: never half a file)."""
        self.res["elapsed_s"] = round(time.monotonic() - self.start, 1)
        for name, text in (
            ("gpu_check.json", json.dumps(self.res, indent=1, default=str)),
            ("gpu_check.md", markdown(self.res)),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def environment(device: str) -> dict:
    """Versions, the GPU, and which of :data:`WHEELS` this machine lacks."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    env |= {name: _version(name) for name in ("triton", "transformers", "peft", "accelerate")}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                      "sms": p.multi_processor_count, "memory_gb": round(p.total_memory / 1e9, 1),
                      "l2_mb": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)}  # fmt: skip
    env["origins"] = {m: _origin(m) for m in ("sorth", "torch", "triton", "transformers", "peft")}
    wheels = os.environ.get("SORTH_GPU_CHECK_WHEELS", "").split()
    env["carried_in"] = {w: _origin(w.split("-")[0].lower()) for w in wheels}
    missing = [w for w in WHEELS if importlib.util.find_spec(MODULE_OF.get(w, w)) is None]
    pins = _constraints()
    env["missing"] = missing
    env["carry_in"] = [pins.get(w, w) for w in missing]
    return env


def _origin(module: str) -> str | None:
    """Where ``module`` is imported from (the checkout, a carried-in wheel, the machine)."""
    spec = importlib.util.find_spec(module)
    return None if spec is None else spec.origin


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _constraints() -> dict[str, str]:
    """``name -> "name==version"`` of the checkout's constraints.txt (what CI passes with)."""
    pins = {}
    path = ROOT / "constraints.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        if "==" in line and not line.startswith("#"):
            pins[line.split("==")[0].strip().lower().replace("_", "-")] = line.strip()
    return {w: pins.get(w.replace("_", "-"), w) for w in WHEELS}


def _needs(*modules: str) -> str | None:
    """``"skipped: peft not installed (…)"`` if one of ``modules`` is missing, else ``None``."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (f"skipped: {', '.join(absent)} not installed (carry the wheels in: "
            "WHEELS=DIR scripts/gpu_check.sh, see docs/api/gs.md)")  # fmt: skip


def section_a(run: Run, budget_end: Callable[[], float], rows: list) -> None:
    accuracy_rows(run.device, run.quick, budget_end, lambda row: (rows.append(row), run.save()))


def section_b(run: Run, budget_end: Callable[[], float], rows: list) -> None:
    from recipes.benchmark.gpu import gs_bandwidth

    sizes = (128, 256) if run.quick else (1024, 2048, 4096)
    for d in sizes:
        if budget_end() <= 0:
            rows.append({"d": d, "status": "not run: section time spent"})
            continue
        tokens = 64 if run.quick else max(8192, 2**25 // d)  # x is 64 MB in bf16: beyond L2
        rows.append(
            gs_bandwidth(d, tokens, 8 if run.quick else 32, 3 if run.quick else 10, run.device)
        )
        run.save()


def section_c(run: Run, budget_end: Callable[[], float], rows: list) -> None:
    skip = _needs("peft", "transformers")
    sizes = (64, 128) if run.quick else (1024, 2048, 4096)
    if skip:
        rows.extend({"d": d, "status": skip} for d in sizes)
        return
    from recipes.benchmark.cli import parse
    from recipes.benchmark.gpu import gpu_rows

    flags = ["--device", run.device, "--layers", "1" if run.quick else "2"]
    flags += ["--tokens", "16", "--block-size", "8", "--lora-r", "4", "--reps", "2"] if run.quick \
        else ["--tokens", "2048", "--block-size", "32", "--lora-r", "16", "--reps", "10",
              "--warmup", "2"]  # fmt: skip
    s, _ = parse(flags)
    for d in sizes:
        if budget_end() <= 0:
            rows.append({"d": d, "status": "not run: section time spent"})
            continue
        rows.append(
            {"d": d, "tokens": s.batch * s.tokens, "layers": s.layers, "rows": gpu_rows(s, d)}
        )
        run.save()
        if run.device.startswith("cuda"):
            torch.cuda.empty_cache()


def section_d(run: Run, budget_end: Callable[[], float], rows: list) -> None:
    skip = _needs("peft", "transformers")
    if skip:
        rows.append({"status": skip})
        return
    from recipes.benchmark.gpu_finetune import finetune

    rows.append(finetune(run.device, run.quick))


RUNNERS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d}


def _on_alarm(signum, frame) -> None:
    raise DeadlineError


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m recipes.benchmark.gpu_check", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json / .md")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda (the real check) or cpu (the dry run); default: cuda when available",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes (the CPU dry run)")
    p.add_argument("--sections", default="abcd", help="a subset of abcd")
    p.add_argument("--deadline", type=float, default=DEADLINE, help="seconds for the whole run")
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every section budget (e.g. 5 on a loaded CPU, so that no row is skipped)",
    )
    a = p.parse_args(argv)
    if set(a.sections) - set(SECTIONS):
        p.error(f"--sections {a.sections!r}: choose letters from {''.join(SECTIONS)}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(
            f"--device {a.device}: torch {torch.__version__} sees no CUDA GPU; use --device cpu"
        )
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(list(sys.argv[1:] if argv is None else argv))
    a.out.mkdir(parents=True, exist_ok=True)
    run = Run(a.out, a.device, a.quick, time.monotonic(), a.deadline, {"sections": {}})
    run.res["environment"] = environment(a.device)
    run.res["command"] = " ".join(
        ["python -m recipes.benchmark.gpu_check", *(argv or sys.argv[1:])]
    )
    run.save()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(run.left())))
    try:
        for key in a.sections:
            title, gpu_s, quick_s = SECTIONS[key]
            sec = run.res["sections"][key] = {
                "title": title,
                "budget_s": quick_s if a.quick else gpu_s,
                "rows": [],
            }
            t0 = time.monotonic()
            end = min(t0 + sec["budget_s"], run.start + run.deadline)
            try:
                RUNNERS[key](run, lambda end=end: end - time.monotonic(), sec["rows"])
            except DeadlineError:
                sec["error"] = "stopped: the global deadline passed"
                raise
            except Exception as err:  # one section's crash never loses the others
                sec["error"] = f"{type(err).__name__}: {err}"
                sec["traceback"] = traceback.format_exc().splitlines()[-12:]
            finally:
                sec["seconds"] = round(time.monotonic() - t0, 1)
                run.save()
    except DeadlineError:
        run.res["stopped"] = f"global deadline of {a.deadline:.0f} s"
    finally:
        signal.alarm(0)
    from sorth.kernels import triton_checks

    run.res["triton_checks"] = triton_checks()
    run.res["failed"] = _failures(run.res)
    run.save()
    print((a.out / "gpu_check.md").read_text())
    return 1 if run.res["failed"] else 0


def _failures(res: dict) -> list[str]:
    """What failed: accuracy rows, section errors, a fine-tune that did not learn or merge."""
    out = []
    for key, sec in res["sections"].items():
        if sec.get("error"):
            out.append(f"({key}) {sec['error']}")
        out += [f"(a) {r['dtype']} b={r['b']} {r['structure']} M={r['tokens']}"
                for r in sec["rows"] if key == "a" and r.get("pass") is False]  # fmt: skip
        out += [f"(d) {r['status']}" for r in sec["rows"] if key == "d" and r.get("pass") is False]
    return out


if __name__ == "__main__":
    sys.exit(main())
