"""The GPU table (``--gpu-sizes``, by default on with ``--device cuda``): LoRA, PEFT OFT and sorth
GSOFT with each of its GS kernels at every ``d``, and the GS multiply against its roofline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recipes.benchmark.adapters import wrap
from recipes.benchmark.settings import Settings
from recipes.benchmark.timing import interleaved, make_step, median, paired_ratio
from recipes.benchmark.workloads import llama_workload

# `--device cuda`: LoRA, PEFT OFT and sorth GSOFT with each of its kernels (Note [Triton GS]),
# bf16 base model under bf16 autocast, at every d of --gpu-sizes (the main table, `comparison`,
# is left alone: the two GSOFT rows are the method "gsoft" run under sorth.kernels.use_kernel).
GPU_ROWS = {  # row -> (method, sorth kernel, label)
    "lora": ("lora", "auto", "PEFT LoRA r={lora_r}"),
    "peft_oft": ("peft_oft", "auto", "PEFT OFT b={b}"),
    "gs_triton": ("gsoft", "auto", "sorth GSOFT b={b}, kernel {kernel}"),
    "gs_torch": ("gsoft", "torch", "sorth GSOFT b={b}, torch kernel"),
}


def _under(kernel: str, fn: Callable[[], None], device: str) -> Callable[[], None]:
    """``fn`` with sorth's GS kernel ``kernel`` and, on CUDA, bf16 autocast."""
    from sorth.kernels import use_kernel

    def run() -> None:
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
        with use_kernel(kernel), amp:
            fn()

    return run


def gs_bandwidth(d: int, tokens: int, b: int, reps: int, device: str) -> dict:
    """Time of the GSOFT multiply (bf16) against a copy moving the same bytes (the roofline:
    forward reads x and writes y, 2 passes; forward + backward 5 passes = 2.5 copies)."""
    import sorth
    from sorth.kernels import select_kernel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    q = sorth.GSOrthogonal(d, block_size=b, device=device)
    q.reset_parameters("random", std=0.1)
    with torch.no_grad():
        A = q.matrix(dtype=dtype)
    x = torch.randn(tokens, d, device=device, dtype=dtype)
    xg, gy, y = x.clone().requires_grad_(), torch.randn_like(x), torch.empty_like(x)
    fs = [f.detach().clone().requires_grad_() for f in A.factors]

    def fwd() -> None:
        with torch.no_grad():
            A.apply(x)

    def fwd_bwd() -> None:
        type(A)._trusted(fs, A.perms, A.plan).apply(xg).backward(gy)

    t = interleaved({"fwd": fwd, "fb": fwd_bwd, "copy": lambda: y.copy_(x)}, reps, 3, device)
    med = {k: median(v) for k, v in t.items()}
    return {
        "d": d,
        "kernel": select_kernel(x, A.factors),
        "fwd_ms": 1e3 * med["fwd"],
        "fwd_bwd_ms": 1e3 * med["fb"],
        "copy_ms": 1e3 * med["copy"],
        "fwd_of_roofline": med["copy"] / med["fwd"],
        "fwd_bwd_of_roofline": 2.5 * med["copy"] / med["fb"],
    }


def run_gpu(s: Settings, sizes: tuple[int, ...]) -> dict:
    """Step time, tok/s and peak memory (CUDA allocator) per row of GPU_ROWS at every d."""
    from sorth.kernels import select_kernel

    out: dict = {"sizes": {}, "tokens": s.batch * s.tokens, "layers": s.layers}
    probe = torch.zeros(1, 8, device=s.device, dtype=torch.bfloat16)
    kernel = select_kernel(probe, [torch.zeros(1, 8, 8, device=s.device, dtype=probe.dtype)] * 2)
    for d in sizes:
        print(f"gpu table d={d} ...", flush=True)
        torch.manual_seed(s.seed)
        w = llama_workload(d, s.layers, s.tokens, s.batch, s.device)
        if s.device.startswith("cuda"):
            w.model.to(torch.bfloat16)
        steps = {
            row: _under(k, make_step(wrap(m, w, s), w), s.device)
            for row, (m, k, _) in GPU_ROWS.items()
        }
        t = interleaved(steps, s.reps, s.warmup, s.device, verbose=True)
        rows = {}
        for row, (_, _, label) in GPU_ROWS.items():
            ms = median(t[row])
            rows[row] = {
                "label": label.format(lora_r=s.lora_r, b=s.block_size, kernel=kernel),
                "step_ms": 1e3 * ms,
                "tok_per_s": out["tokens"] / ms,
                "x_lora": paired_ratio(t[row], t["lora"]),
                "x_peft_oft": paired_ratio(t[row], t["peft_oft"]),
            }
            if s.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                steps[row]()
                torch.cuda.synchronize()
                rows[row]["step_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        del steps
        out["sizes"][d] = rows
        out.setdefault("multiply", []).append(
            gs_bandwidth(d, s.batch * s.tokens, s.block_size, max(10, 2 * s.reps), s.device)
        )
    return out
