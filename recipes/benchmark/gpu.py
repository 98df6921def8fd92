"""The GPU table (``--gpu-sizes``, by default on with ``--device cuda``): LoRA, PEFT OFT, sorth
GSOFT with each of its GS kernels and Double GSOFT at every ``d``, and the GS multiply against
its roofline (also sections (b) and (c) of ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from recipes.benchmark.adapters import wrap
from recipes.benchmark.settings import Settings
from recipes.benchmark.timing import interleaved, make_step, median, paired_ratio
from recipes.benchmark.workloads import llama_workload

# `--device cuda`: LoRA, PEFT OFT, sorth GSOFT with each of its kernels (Note [Triton GS]) and
# Double GSOFT, bf16 base model under bf16 autocast, at every d of --gpu-sizes (the main table,
# `comparison`, is left alone: the two GSOFT rows are the method "gsoft" run under
# sorth.kernels.use_kernel; "kernel" is what ran, after the first-use check).
GPU_ROWS = {  # row -> (method, sorth kernel, label)
    "lora": ("lora", "auto", "PEFT LoRA r={lora_r}"),
    "peft_oft": ("peft_oft", "auto", "PEFT OFT b={b}"),
    "gs_triton": ("gsoft", "auto", "sorth GSOFT b={b}, kernel {kernel}"),
    "gs_torch": ("gsoft", "torch", "sorth GSOFT b={b}, torch kernel"),
    "double_gsoft": ("double_gsoft", "auto", "sorth Double GSOFT b={b}, kernel {kernel}"),
}


def _under(kernel: str, fn: Callable[[], None], device: str) -> Callable[[], None]:
    """``fn`` with sorth's GS kernel ``kernel`` and, on CUDA, bf16 autocast."""
    from sorth.kernels import use_kernel

    def run() -> None:
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
        with use_kernel(kernel), amp:
            fn()

    return run


def device_times(
    fns: dict[str, Callable[[], object]], rounds: int, inner: int, device: str
) -> dict[str, list[float]]:
    """Seconds per call of every function: per round, ``inner`` calls of each (order rotating)
    between two CUDA events (``time.perf_counter`` on a CPU), after one warm-up round."""
    cuda = device.startswith("cuda")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(rounds + 1):
        for n in names[rnd % len(names) :] + names[: rnd % len(names)]:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                torch.cuda.synchronize()
                start.record()
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[n]()
            if cuda:
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                seconds = time.perf_counter() - t0
            if rnd:  # round 0 warms up (compiles, first-use checks)
                times[n].append(seconds / inner)
    return times


def gs_bandwidth(d: int, tokens: int, b: int, reps: int, device: str) -> dict:
    """The GSOFT multiply (bf16 on CUDA) by the kernel "auto" runs and by the torch kernel,
    against a device-to-device copy of ``x`` (the roofline: the forward reads ``x`` and writes
    ``y``, the bytes of one copy; forward + backward also read ``x`` and ``∂ℓ/∂y`` and write
    ``∂ℓ/∂x``: 2.5 copies). ``reps`` rounds of 10 calls each on CUDA, 1 on a CPU."""
    import sorth
    from sorth.kernels import select_kernel, use_kernel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    q = sorth.GSOrthogonal(d, block_size=b, device=device)
    q.reset_parameters("random", std=0.1)
    with torch.no_grad():
        A = q.matrix(dtype=dtype)
    x = torch.randn(tokens, d, device=device, dtype=dtype)
    xg, gy, y = x.clone().requires_grad_(), torch.randn_like(x), torch.empty_like(x)
    fs = [f.detach().clone().requires_grad_() for f in A.factors]
    trained = type(A)._trusted(fs, A.perms, A.plan)

    def fwd(kernel: str) -> Callable[[], None]:
        def run() -> None:
            with use_kernel(kernel), torch.no_grad():
                A.apply(x)

        return run

    def fwd_bwd(kernel: str) -> Callable[[], None]:
        def run() -> None:
            with use_kernel(kernel):
                trained.apply(xg).backward(gy)

        return run

    fns = {"fwd": fwd("auto"), "fb": fwd_bwd("auto"), "copy": lambda: y.copy_(x)}
    fns |= {"torch_fwd": fwd("torch"), "torch_fb": fwd_bwd("torch")}
    inner = 10 if device.startswith("cuda") else 1
    med = {k: median(v) for k, v in device_times(fns, reps, inner, device).items()}
    gb = 2 * x.numel() * x.element_size() / 1e9  # one copy: read x, write y
    return {
        "d": d,
        "tokens": tokens,
        "block_size": b,
        "dtype": str(dtype).removeprefix("torch."),
        "kernel": select_kernel(x, A.factors, A.plan),  # after the first-use check
        "fwd_ms": 1e3 * med["fwd"],
        "fwd_bwd_ms": 1e3 * med["fb"],
        "copy_ms": 1e3 * med["copy"],
        "copy_gb_per_s": gb / med["copy"],
        "fwd_gb_per_s": gb / med["fwd"],
        "fwd_of_roofline": med["copy"] / med["fwd"],
        "fwd_bwd_of_roofline": 2.5 * med["copy"] / med["fb"],
        "torch_fwd_ms": 1e3 * med["torch_fwd"],
        "torch_fwd_bwd_ms": 1e3 * med["torch_fb"],
        "torch_fwd_of_roofline": med["copy"] / med["torch_fwd"],
        "torch_fwd_bwd_of_roofline": 2.5 * med["copy"] / med["torch_fb"],
    }


def gpu_rows(s: Settings, d: int) -> dict:
    """Step time, tok/s, ratios and peak memory (CUDA allocator) of every GPU_ROWS row at ``d``
    (a Llama of ``s.layers`` layers, bf16 on CUDA, ``s.batch × s.tokens`` tokens per step)."""
    torch.manual_seed(s.seed)
    w = llama_workload(d, s.layers, s.tokens, s.batch, s.device)
    if s.device.startswith("cuda"):
        w.model.to(torch.bfloat16)
    models = {row: wrap(m, w, s) for row, (m, _, _) in GPU_ROWS.items()}
    steps = {row: _under(GPU_ROWS[row][1], make_step(m, w), s.device) for row, m in models.items()}
    t = interleaved(steps, s.reps, s.warmup, s.device, verbose=True)
    tokens = s.batch * s.tokens
    rows = {}
    for row, (_, kernel, label) in GPU_ROWS.items():
        ms = median(t[row])
        ran = gs_kernel(models[row], s.device) if kernel == "auto" else kernel
        rows[row] = {
            "label": label.format(lora_r=s.lora_r, b=s.block_size, kernel=ran),
            "kernel": ran,
            "step_ms": 1e3 * ms,
            "tok_per_s": tokens / ms,
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
            rows[row]["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return rows


def gs_kernel(model: torch.nn.Module, device: str) -> str | None:
    """The GS kernel a sorth adapter of ``model`` runs (after its first-use check), or None."""
    from sorth.kernels import select_kernel

    for mod in model.modules():
        table = getattr(mod, "sorth_in", None)
        if isinstance(table, torch.nn.ModuleDict) and len(table):
            q = next(iter(table.values()))
            A = q.matrix(dtype=torch.bfloat16 if device.startswith("cuda") else None)
            x = torch.zeros(1, A.shape[1], device=A.device, dtype=A.dtype)
            return select_kernel(x, A.factors, A.plan)
    return None


def run_gpu(s: Settings, sizes: tuple[int, ...]) -> dict:
    """:func:`gpu_rows` at every d, and the GS multiply against its roofline there."""
    out: dict = {"sizes": {}, "tokens": s.batch * s.tokens, "layers": s.layers}
    for d in sizes:
        print(f"gpu table d={d} ...", flush=True)
        out["sizes"][d] = gpu_rows(s, d)
        out.setdefault("multiply", []).append(
            gs_bandwidth(d, s.batch * s.tokens, s.block_size, max(10, 2 * s.reps), s.device)
        )
    return out
