"""Benchmark: sorth (GSOFT, Double GSOFT, butterfly, OFT) against PEFT's LoRA, OFT and BOFT.

One process builds a Llama-style model from a config (or a small diffusers UNet with ``--unet``),
wraps a copy of it with every method, and measures, **interleaved** (one repetition of every
method, in rotating order, before the next repetition, so that machine load hits all methods
alike) and reported as medians:

* a full training step (forward + backward + ``AdamW.step`` + ``zero_grad``);
* inference unmerged, and merged (``merge_adapter()``) against the bare base model;
* the peak memory of a training step: CUDA allocator peak on GPU; on CPU the peak RSS of a
  **fresh process** (``VmHWM`` reset after a warm-up step, ``MALLOC_MMAP_THRESHOLD_`` fixed so
  freed activations go back to the OS), reported as the increase over the RSS before the step;
* trainable parameters and the size of the saved adapter (``save_pretrained``).

Every figure is also given as a ratio to LoRA. PEFT's BOFT silently drops to one butterfly factor
when its CUDA extension is missing (shared/peft_anchors.md §2.3 D5): the number of factors it
really built is read back from ``boft_R`` and the row is marked. ``peft_boft_shim`` runs PEFT's
own m-factor BOFT code on CPU by providing a pure-torch stand-in for the missing ``fbd_cuda``
extension (dense block-diagonal, exactly what the kernel computes), so that sorth's butterfly is
compared with BOFT *of the same structure*.

It also times the GS multiply alone against one ``torch.bmm`` of the same FLOPs, and sweeps the
hidden size ``d`` (step time per method, and the cost of one GS rotation per token, which grows
like ``O(d·b)`` while the frozen matmul grows like ``O(d²)``) into a PNG plot.

Writes ``benchmark.md``, ``benchmark.json`` and ``step_time_vs_d.png`` into ``--out``::

    python recipes/benchmark.py --out benchmark-results          # defaults below
    python recipes/benchmark.py --hidden 512 --tokens 128 --sweep 256,512 --reps 3   # quicker
    python recipes/benchmark.py --unet                           # small SD-style UNet
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sorth.integrations.methods import METHODS as REGISTRY
from sorth.integrations.methods import make_peft_config

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmarked configuration: a method of the registry (``sorth.integrations.methods``),
    what its table row says, and config fields that differ from the registry's defaults."""

    method: str
    what: str
    overrides: tuple[tuple[str, object], ...] = ()
    label: str | None = None


# row name -> Row; every name is a registry method, or one with a documented override
ROWS: dict[str, Row] = {
    "lora": Row("lora", "r={lora_r}"),
    "peft_oft": Row("peft_oft", "b={b}, exact Cayley"),
    "peft_oft_neumann": Row("peft_oft_neumann", "b={b}, Cayley-Neumann (5 terms)"),
    "peft_boft": Row("peft_boft", "b={b}, m={m} requested"),
    "peft_boft_shim": Row(
        "peft_boft", "b={b}, m={m} (pure-torch fbd_cuda stand-in)", label="PEFT BOFT + CPU fbd"
    ),
    "gsoft": Row("gsoft", "gs, b={b}, dense, with scale s"),
    "gsoft_noscale": Row("gsoft", "gs, b={b}, dense, scale=False", (("scale", False),)),
    "double_gsoft": Row("double_gsoft", "gs both sides, b={b}"),
    "butterfly": Row("butterfly", "BOFT structure, b={b}, m = 1 + log2 r"),
    "oft": Row("oft", "block-diagonal, b={b}"),
}
# name -> (label, what it is)
METHODS: dict[str, tuple[str, str]] = {
    name: (row.label or REGISTRY[row.method].label, row.what) for name, row in ROWS.items()
}
DEFAULT_METHODS = tuple(METHODS)
HEAVY = ("peft_boft_shim",)  # O(m·d³) per step: timed in a short separate loop
SWEEP_METHODS = ("lora", "peft_oft", "gsoft", "double_gsoft", "butterfly", "oft", "peft_boft")


@dataclasses.dataclass(frozen=True)
class Settings:
    hidden: int
    layers: int
    tokens: int
    batch: int
    block_size: int
    lora_r: int
    methods: tuple[str, ...]
    reps: int
    warmup: int
    heavy_reps: int
    heavy_memory: bool
    threads: int | None
    sweep: tuple[int, ...]
    sweep_tokens: int
    sweep_layers: int
    sweep_reps: int
    sweep_boft_max: int
    unet: bool
    out: Path
    memory: bool
    seed: int
    device: str
    quant: str = ""  # "4bit" / "8bit": bitsandbytes base (run_quant)


# ------------------------------------------------------------------------------ models
def llama_config(d: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=d,
        intermediate_size=(8 * d // 3 + 63) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, d // 64),
        num_key_value_heads=max(1, d // 64),
        vocab_size=1024,
        max_position_embeddings=max(2048, d),
    )


@dataclasses.dataclass
class Workload:
    """A base model, a batch, the loss of one training step and the adapted module names."""

    model: torch.nn.Module
    batch: dict[str, torch.Tensor]
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    targets: list[str]
    widths: list[int]  # feature sizes the adapters act on (for BOFT's factor count)


def llama_workload(d: int, layers: int, tokens: int, batch: int, device: str) -> Workload:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(d, layers)).to(device)
    ids = torch.randint(0, 1024, (batch, tokens), device=device)

    def loss(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(input_ids=b["input_ids"], labels=b["input_ids"]).loss

    return Workload(model, {"input_ids": ids}, loss, LLAMA_TARGETS, [d])


def unet_workload(batch: int, device: str) -> Workload:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(320, 640),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=8,
    ).to(device)
    b = {
        "sample": torch.randn(batch, 4, 32, 32, device=device),
        "timestep": torch.tensor([500] * batch, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, 1024, device=device),
        "noise": torch.randn(batch, 4, 32, 32, device=device),
    }

    def loss(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m(b["sample"], b["timestep"], encoder_hidden_states=b["encoder_hidden_states"])
        return F.mse_loss(out.sample, b["noise"])

    return Workload(model, b, loss, UNET_TARGETS, [320, 640, 1024])


def butterfly_factors(widths: list[int], b: int) -> int:
    """``m = 1 + log2 r`` for BOFT, capped so that ``2**(m-1)`` divides every block count."""
    ms = []
    for w in widths:
        r = w // b
        ms.append(min(1 + int(math.log2(r)), (r & -r).bit_length()))
    return min(ms)


class _CpuFbd:
    """Pure-torch stand-in for PEFT's ``fbd_cuda`` (dense block-diagonal of ``(m, r, b, b)``)."""

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*f.unbind(0)) for f in blocks])]

    @staticmethod
    def backward(grad: torch.Tensor, blocks: torch.Tensor) -> list[torch.Tensor]:
        m, r, b, _ = blocks.shape
        idx = torch.arange(r, device=grad.device)
        g = grad.reshape(m, r, b, r, b)[:, idx, :, idx, :]  # (r, m, b, b): diagonal blocks
        return [g.permute(1, 0, 2, 3).contiguous()]


def peft_config(name: str, w: Workload, s: Settings):
    row = ROWS[name]
    m = butterfly_factors(w.widths, s.block_size) if row.method == "peft_boft" else 2
    return make_peft_config(
        row.method, w.targets, block_size=s.block_size, rank=s.lora_r, boft_factors=m,
        **dict(row.overrides),
    )  # fmt: skip


def wrap(name: str, w: Workload, s: Settings) -> torch.nn.Module:
    """``get_peft_model`` on a deep copy of the base model (same weights for every method)."""
    import peft.tuners.boft.layer as boft_layer
    from peft import get_peft_model

    base = copy.deepcopy(w.model)
    previous = boft_layer._FBD_CUDA
    if name == "peft_boft_shim":
        previous = boft_layer._FBD_CUDA = _CpuFbd()  # stays: FastBlockDiag looks it up per call
    elif name == "peft_boft" and isinstance(previous, _CpuFbd):
        boft_layer._FBD_CUDA = None  # as shipped: PEFT tries to build fbd_cuda itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, peft_config(name, w, s))
    boft_layer._FBD_CUDA = previous
    return model


def boft_factors(model: torch.nn.Module) -> int | None:
    """Butterfly factors PEFT's BOFT really built (``boft_R`` is ``(m, r, b, b)``)."""
    for mod in model.modules():
        table = getattr(mod, "boft_R", None)
        if isinstance(table, torch.nn.ParameterDict) and len(table):
            return int(next(iter(table.values())).shape[0])
    return None


def sorth_factors(model: torch.nn.Module) -> int | None:
    for mod in model.modules():
        table = getattr(mod, "sorth_in", None)
        if isinstance(table, torch.nn.ModuleDict) and len(table):
            return int(next(iter(table.values())).n_factors)
    return None


# ------------------------------------------------------------------------------ timing
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


def checkpoint_bytes(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))


# ------------------------------------------------------------------------------ memory
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
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--probe-memory", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        print(f"  memory probe for {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ GS kernel
def gs_kernel_throughput(d: int, tokens: int, b: int, reps: int, device: str) -> dict:
    """GSOFT multiply ``Pᵀ L P R x`` against one ``bmm`` of the same FLOPs (``2·N·d·b`` MACs)."""
    import sorth

    r = d // b
    q = sorth.GSOrthogonal(d, block_size=b, device=device)
    q.reset_parameters("random", std=0.1)
    with torch.no_grad():
        A = q.matrix()
    x = torch.randn(tokens, d, device=device)
    hb = torch.randn(2 * r, tokens, b, device=device)
    blocks = torch.randn(2 * r, b, b, device=device)
    fs = [f.detach().clone().requires_grad_() for f in A.factors]
    xg = x.clone().requires_grad_()
    hg = hb.clone().requires_grad_()
    bg = blocks.clone().requires_grad_()
    gy, gh = torch.randn_like(x), torch.randn_like(hb)

    def gs_fwd() -> None:
        with torch.no_grad():
            A.apply(x)

    def bmm_fwd() -> None:
        with torch.no_grad():
            torch.bmm(hb, blocks)

    def gs_fwd_bwd() -> None:
        type(A)._trusted(fs, A.perms, A.plan).apply(xg).backward(gy)

    def bmm_fwd_bwd() -> None:
        torch.bmm(hg, bg).backward(gh)

    t = interleaved(
        {"gs": gs_fwd, "bmm": bmm_fwd, "gs_fb": gs_fwd_bwd, "bmm_fb": bmm_fwd_bwd},
        reps,
        3,
        device,
    )
    med = {k: median(v) for k, v in t.items()}
    return {
        "d": d,
        "tokens": tokens,
        "block_size": b,
        "gs_fwd_ms": 1e3 * med["gs"],
        "bmm_fwd_ms": 1e3 * med["bmm"],
        "fwd_throughput_vs_bmm": med["bmm"] / med["gs"],
        "gs_fwd_bwd_ms": 1e3 * med["gs_fb"],
        "bmm_fwd_bwd_ms": 1e3 * med["bmm_fb"],
        "fwd_bwd_throughput_vs_bmm": med["bmm_fb"] / med["gs_fb"],
    }


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


# ------------------------------------------------------------------------------ runs
def make_workload(
    s: Settings, d: int | None = None, layers: int | None = None, tokens: int | None = None
) -> Workload:
    if s.unet:
        return unet_workload(s.batch, s.device)
    if s.quant:
        return quant_workload(s)
    return llama_workload(d or s.hidden, layers or s.layers, tokens or s.tokens, s.batch, s.device)


def run_main(s: Settings, argv: list[str]) -> dict:
    torch.manual_seed(s.seed)
    w = make_workload(s)
    models: dict[str, torch.nn.Module] = {}
    rows: dict[str, dict] = {}
    b = s.block_size
    m_req = butterfly_factors(w.widths, b)
    for name in s.methods:
        print(f"building {name} ...", flush=True)
        model = wrap(name, w, s)
        models[name] = model
        label, what = METHODS[name]
        row = {
            "label": label,
            "what": what.format(b=b, m=m_req, lora_r=s.lora_r),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "checkpoint_bytes": checkpoint_bytes(model),
            "notes": [],
        }
        if name.startswith("peft_boft"):
            got = boft_factors(model)
            row["butterfly_factors"] = got
            msg = f"{name}: PEFT BOFT built {got} butterfly factor(s), {m_req} requested"
            print(("  OK  " if got == m_req else "  !!  ") + msg)
            if got != m_req:
                row["notes"].append(f"only m={got} of {m_req} (fbd_cuda fallback, D5)")
        if name == "butterfly":
            row["butterfly_factors"] = sorth_factors(model)
        rows[name] = row

    def timed(kind: str, fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
        """Interleaved rounds; HEAVY methods (dense d×d per step) get their own short loop."""
        light = {n: f for n, f in fns.items() if n not in HEAVY}
        heavy = {n: f for n, f in fns.items() if n in HEAVY}
        print(f"timing {kind} ({reps} interleaved rounds) ...", flush=True)
        out = interleaved(light, reps, s.warmup, s.device, verbose=True)
        for n, f in heavy.items():
            print(f"timing {kind} of {n} ({s.heavy_reps} rounds, not interleaved) ...", flush=True)
            out[n] = interleaved({n: f}, s.heavy_reps, 1, s.device, verbose=True)[n]
            note = f"timed in {s.heavy_reps} separate rounds (not interleaved)"
            if note not in rows[n]["notes"]:
                rows[n]["notes"].append(note)
        return out

    steps = {n: make_step(m, w) for n, m in models.items()}
    for n, t in timed("training steps", steps, s.reps).items():
        rows[n]["train_step_ms"] = 1e3 * median(t)
        rows[n]["train_step_all_ms"] = [1e3 * x for x in t]
    infers = {n: make_infer(m, w) for n, m in models.items()}
    for n, t in timed("inference (unmerged)", infers, 2 * s.reps).items():
        rows[n]["infer_unmerged_ms"] = 1e3 * median(t)
        rows[n]["infer_unmerged_all_ms"] = [1e3 * x for x in t]
    for m in models.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.merge_adapter()
    merged = {n: make_infer(m, w) for n, m in models.items()}
    merged["base"] = make_infer(w.model, w)
    tm = timed("inference (merged; and the bare base model)", merged, 2 * s.reps)
    base_all = [1e3 * x for x in tm.pop("base")]
    base_infer = median(base_all)
    for n, t in tm.items():
        rows[n]["infer_merged_ms"] = 1e3 * median(t)
        rows[n]["infer_merged_all_ms"] = [1e3 * x for x in t]
    del models, steps, infers, merged
    ref = rows.get("lora", {})
    for r in rows.values():
        r["train_x_lora"] = paired_ratio(r["train_step_all_ms"], ref.get("train_step_all_ms"))
        r["infer_unmerged_x_lora"] = paired_ratio(
            r["infer_unmerged_all_ms"], ref.get("infer_unmerged_all_ms")
        )
        r["infer_merged_x_base"] = paired_ratio(r["infer_merged_all_ms"], base_all)
        if "peft_oft" in rows:
            r["train_x_peft_oft"] = paired_ratio(
                r["train_step_all_ms"], rows["peft_oft"]["train_step_all_ms"]
            )

    if s.memory:
        print("peak memory of a training step, one fresh process per method ...", flush=True)
        from concurrent.futures import ThreadPoolExecutor

        names = [n for n in s.methods if n not in HEAVY or s.heavy_memory]
        with ThreadPoolExecutor(max_workers=3) as pool:  # RSS does not depend on CPU contention
            for n, mem in zip(names, pool.map(lambda n: memory_in_fresh_process(n, argv), names),
                              strict=True):  # fmt: skip
                if mem:
                    rows[n].update(mem)
    return {"rows": rows, "base_infer_ms": base_infer, "butterfly_m": m_req}


# --------------------------------------------------------------- quantized base (QGSOFT)
QUANT_METHODS = ("lora", "peft_oft", "gsoft", "double_gsoft")


def quant_workload(s: Settings) -> Workload:
    """The Llama workload saved and reloaded with bitsandbytes (``--quant 4bit``: NF4, compute
    dtype float32 on CPU, bfloat16 on GPU; ``8bit``: LLM.int8()), then
    ``prepare_model_for_kbit_training`` (without gradient checkpointing)."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    w = llama_workload(s.hidden, s.layers, s.tokens, s.batch, "cpu")
    gpu = s.device.startswith("cuda")
    quant = BitsAndBytesConfig(
        load_in_4bit=s.quant == "4bit",
        load_in_8bit=s.quant == "8bit",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16 if gpu else torch.float32,
    )
    with tempfile.TemporaryDirectory() as tmp:
        w.model.save_pretrained(tmp)
        model = LlamaForCausalLM.from_pretrained(
            tmp, quantization_config=quant, device_map={"": s.device} if gpu else "cpu"
        )
    w.model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    w.batch = {k: v.to(s.device) for k, v in w.batch.items()}
    return w


def _logits(model: torch.nn.Module, w: Workload) -> torch.Tensor:
    """Logits in train mode (no dropout anywhere here, so the same function as eval): with
    bitsandbytes' training kernels, so that a merge error measures the re-quantization of the
    merged weight only: in eval mode on CPU, bitsandbytes repacks 4-bit weights (and PEFT's
    merge then dequantizes that layout as the standard one: LoRA's merge error was 131%), and
    LLM.int8() quantizes the activations, which differ before (``A·x``) and after merging."""
    model.train()
    with torch.no_grad():
        return model(input_ids=w.batch["input_ids"]).logits.float()


def run_quant(s: Settings, argv: list[str], merge_steps: int = 10) -> dict:
    """GSOFT / Double GSOFT against PEFT LoRA and OFT on a quantized base: training step time
    (interleaved rounds, paired ratios to LoRA), the step's peak memory (fresh process per
    method, as :func:`run_main`), and the merge error ``‖merged − unmerged‖ / ‖unmerged‖`` of the
    logits after ``merge_steps`` more AdamW steps at lr 1e-3 (with the adapter's effect
    ``‖unmerged − base‖ / ‖base‖`` beside it: the error of re-quantizing grows with it)."""
    torch.manual_seed(s.seed)
    w = make_workload(s)
    methods = [n for n in s.methods if n in QUANT_METHODS]
    models = {n: wrap(n, w, s) for n in methods}
    rows: dict[str, dict] = {}
    for n, model in models.items():
        label, what = METHODS[n]
        what = what.format(b=s.block_size, m=0, lora_r=s.lora_r)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows[n] = {"label": label, "what": what, "trainable_params": trainable}
    steps = {n: make_step(m, w) for n, m in models.items()}
    print(f"timing training steps on the {s.quant} base ({s.reps} interleaved rounds) ...")
    for n, t in interleaved(steps, s.reps, s.warmup, s.device, verbose=True).items():
        rows[n]["train_step_ms"] = 1e3 * median(t)
        rows[n]["train_step_all_ms"] = [1e3 * x for x in t]
    for r in rows.values():
        r["train_x_lora"] = paired_ratio(r["train_step_all_ms"], rows["lora"]["train_step_all_ms"])
    base = _logits(w.model, w)
    for n, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        model.train()
        for _ in range(merge_steps):
            w.loss(model, w.batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        unmerged = _logits(model, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = _logits(model.merge_and_unload(), w)
        rows[n]["effect"] = ((unmerged - base).norm() / base.norm()).item()
        rows[n]["merge_error"] = ((merged - unmerged).norm() / unmerged.norm()).item()
    del models, steps
    if s.memory:
        print("peak memory of a training step, one fresh process per method ...", flush=True)
        for n in methods:
            mem = memory_in_fresh_process(n, argv)
            if mem:
                rows[n].update(mem)
    return {"rows": rows, "merge_steps": merge_steps}


def quant_table(q: dict, s: Settings) -> list[str]:
    rows, lora = q["rows"], q["rows"].get("lora", {})
    kind = "NF4 4-bit" if s.quant == "4bit" else "int8 (LLM.int8())"
    lines = [
        f"Quantized base: bitsandbytes {kind} Llama d={s.hidden}, {s.layers} layers, "
        f"{s.batch}×{s.tokens} tokens; targets {', '.join(LLAMA_TARGETS)}; b={s.block_size}; "
        f"medians of {s.reps} interleaved rounds; merge error ‖merged − unmerged‖/‖unmerged‖ "
        f"of the logits after {q['merge_steps']} AdamW steps at lr 1e-3 (adapter effect: "
        "‖unmerged − base‖/‖base‖), bitsandbytes training kernels.",
        "",
        "| method | structure | trainable | train step ms | ×LoRA | step memory MB | ×LoRA | "
        "adapter effect | merge error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows.items():
        mem = (
            f"{r['step_mb']:.0f} | {_ratio(r['step_mb'], lora.get('step_mb'))}"
            if "step_mb" in r
            else "– | –"
        )
        lines.append(
            f"| {r['label']} (`{n}`) | {r['what']} | {r['trainable_params']:,} | "
            f"{r['train_step_ms']:.0f} | {_times(r.get('train_x_lora'))} | {mem} | "
            f"{100 * r['effect']:.1f}% | {100 * r['merge_error']:.2f}% |"
        )
    return [*lines, ""]


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
        ax1.plot(ds, [pts[d] for d in ds], marker="o", label=METHODS[n][0] + f" ({n})")
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


# ------------------------------------------------------------------------------ GPU
# `--device cuda`: LoRA, PEFT OFT and sorth GSOFT with each of its kernels (Note [Triton GS]),
# bf16 base model under bf16 autocast, at every d of --gpu-sizes (the method table above is
# left alone: the two GSOFT rows are the method "gsoft" run under sorth.kernels.use_kernel).
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


def gpu_table(g: dict) -> list[str]:
    lines = [
        f"GPU table (Llama, {g['layers']} layer(s), {g['tokens']} tokens, bf16 autocast; "
        "×ratios paired per round):",
        "",
        "| d | method | step ms | tok/s | ×LoRA | ×PEFT OFT | step memory MB | ×LoRA |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, rows in g["sizes"].items():
        lora_mb = rows["lora"].get("step_mb")
        for r in rows.values():
            mb = r.get("step_mb")
            lines.append(
                f"| {d} | {r['label']} | {r['step_ms']:.1f} | {r['tok_per_s']:,.0f} | "
                f"{_times(r['x_lora'])} | {_times(r['x_peft_oft'])} | "
                f"{'–' if mb is None else f'{mb:.0f}'} | {_ratio(mb, lora_mb)} |"
            )
    lines += ["", "| d | GS multiply kernel | fwd ms | fwd+bwd ms | copy ms | fwd / roofline "
              "| fwd+bwd / roofline |", "|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for k in g["multiply"]:
        lines.append(
            f"| {k['d']} | {k['kernel']} | {k['fwd_ms']:.3f} | {k['fwd_bwd_ms']:.3f} | "
            f"{k['copy_ms']:.3f} | {k['fwd_of_roofline']:.0%} | {k['fwd_bwd_of_roofline']:.0%} |"
        )
    return [*lines, ""]


# ------------------------------------------------------------------------------ report
def _times(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _ratio(x: float | None, ref: float | None) -> str:
    return _times(None if x is None or not ref else x / ref)


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1_5_15": load,
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def targets(res: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, threshold, measured, met) for every target of the issue."""
    rows, out = res.get("main", {}).get("rows", {}), []

    def get(n: str, k: str) -> float | None:
        return rows.get(n, {}).get(k)

    def add(name: str, thr: str, val: float | None, ok: Callable[[float], bool], fmt: str = "×"):
        shown = "not measured" if val is None else f"{val:.2f}{fmt}"
        out.append((name, thr, shown, None if val is None else bool(ok(val))))

    add("GSOFT training step / LoRA", "≤ 1.10×", get("gsoft", "train_x_lora"), lambda v: v <= 1.10)
    add(
        "GSOFT training step / PEFT OFT (same b)",
        "≤ 1.15×",
        get("gsoft", "train_x_peft_oft"),
        lambda v: v <= 1.15,
    )
    bf = get("butterfly", "train_step_ms")
    for n in ("peft_boft_shim", "peft_boft"):
        pb = get(n, "train_step_ms")
        note = "" if n == "peft_boft_shim" else " (as shipped: fewer factors, see notes)"
        add(
            f"speed-up of sorth butterfly over {n}{note}",
            "≥ 5×",
            pb / bf if pb and bf else None,
            lambda v: v >= 5,
        )
    add(
        "GSOFT merged inference / base model",
        "≤ 1.02×",
        get("gsoft", "infer_merged_x_base"),
        lambda v: v <= 1.02,
    )
    add(
        "GSOFT unmerged inference / LoRA",
        "≤ 1.10×",
        get("gsoft", "infer_unmerged_x_lora"),
        lambda v: v <= 1.10,
    )
    lm, gm = get("lora", "step_mb"), get("gsoft", "step_mb")
    add(
        "GSOFT training-step memory / LoRA (peak RSS increase of the step)",
        "≤ 1.10×",
        gm / lm if gm and lm else None,
        lambda v: v <= 1.10,
    )
    nm = get("gsoft_noscale", "step_mb")
    add(
        "  … the same for GSOFT with scale=False (LoRA has no scale)",
        "≤ 1.10×",
        nm / lm if nm and lm else None,
        lambda v: v <= 1.10,
    )
    k = res.get("kernel")
    add(
        "GS multiply throughput / one bmm of the same FLOPs (forward)",
        "≥ 0.50",
        k["fwd_throughput_vs_bmm"] if k else None,
        lambda v: v >= 0.5,
        "",
    )
    sw = res.get("sweep")
    if sw and len(sw["rotation"]) > 1:
        rot = sw["rotation"]
        slope = loglog_slope([r["d"] for r in rot], [r["rotation_us_per_token"] for r in rot])
        add(
            "per-token cost of a GSOFT rotation ∝ d^slope (fixed b)",
            "slope ≈ 1 (O(d·b))",
            slope,
            lambda v: v < 1.5,
            "",
        )
    return out


def main_table(main: dict, s: Settings) -> list[str]:
    rows = main["rows"]
    lora = rows.get("lora", {})
    what = (
        "diffusers UNet (320/640 channels, 32×32 latents, cross-attention 1024)"
        if s.unet
        else f"Llama d={s.hidden}, {s.layers} layers, {s.batch}×{s.tokens} tokens"
    )
    lines = [
        f"Workload: {what}; targets {', '.join(LLAMA_TARGETS if not s.unet else UNET_TARGETS)}; "
        f"block size b={s.block_size}; medians of {s.reps} (training) and {2 * s.reps} "
        f"(inference) interleaved rounds after {s.warmup} warm-up round(s); every ×ratio is "
        "the median of the per-round ratios (paired: load that drifts between rounds cancels).",
        "",
        "| method | structure | trainable | checkpoint | train step ms | ×LoRA | "
        "infer unmerged ms | ×LoRA | infer merged ms | ×base | step memory MB | ×LoRA | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = main["base_infer_ms"]
    for n, r in rows.items():
        notes = "; ".join(r["notes"])
        if "butterfly_factors" in r:
            notes = (f"m={r['butterfly_factors']}; " + notes).strip("; ")
        lines.append(
            f"| {r['label']} (`{n}`) | {r['what']} | {r['trainable_params']:,} | "
            f"{r['checkpoint_bytes'] / 2**20:.2f} MB | {r['train_step_ms']:.0f} | "
            f"{_times(r.get('train_x_lora'))} | {r['infer_unmerged_ms']:.0f} | "
            f"{_times(r.get('infer_unmerged_x_lora'))} | "
            f"{r['infer_merged_ms']:.0f} | {_times(r.get('infer_merged_x_base'))} | "
            + (
                f"{r['step_mb']:.0f} | {_ratio(r['step_mb'], lora.get('step_mb'))} | "
                if "step_mb" in r
                else "– | – | "
            )
            + f"{notes} |"
        )
    lines += [f"| bare base model | – | – | – | – | – | – | – | {base:.0f} | 1.00× | – | – | |", ""]
    if "step_mb" in lora:
        lines.append(
            "Step memory: increase of the peak RSS during one training step over the RSS "
            "before it, in a fresh process per method (peak RSS of the process, for LoRA: "
            f"{lora['peak_mb']:.0f} MB)."
        )
        lines.append("")
    return lines


def markdown(res: dict, s: Settings) -> str:
    mc = res["machine"]
    lines = [
        f"Machine: {mc['processor']}, {mc['cpu_count']} CPU cores, torch {mc['torch']} "
        f"({mc['cuda'] or 'CPU, no GPU'}), {mc['torch_threads']} threads; "
        f"load average {mc['loadavg_1_5_15']} at {mc['time_utc']}.",
        "",
    ]
    if "main" in res:
        lines += main_table(res["main"], s)
    k = res.get("kernel")
    if k:
        lines += [
            f"GS multiply (GSOFT `Pᵀ L P R x`, d={k['d']}, {k['tokens']} tokens, "
            f"b={k['block_size']}): forward {k['gs_fwd_ms']:.2f} ms vs one `torch.bmm` of the "
            f"same FLOPs {k['bmm_fwd_ms']:.2f} ms → **{k['fwd_throughput_vs_bmm']:.0%}** of its "
            f"throughput; forward+backward {k['gs_fwd_bwd_ms']:.2f} vs {k['bmm_fwd_bwd_ms']:.2f} "
            f"ms → {k['fwd_bwd_throughput_vs_bmm']:.0%}.",
            "",
        ]
    sw = res.get("sweep")
    if sw:
        ds = sorted({d for pts in sw["steps"].values() for d in pts})
        lines += [
            f"Sweep (Llama, {sw['layers']} layer(s), {sw['tokens']} tokens; training step ms; "
            "plot `step_time_vs_d.png`):",
            "",
            "| method | " + " | ".join(f"d={d}" for d in ds) + " |",
            "|---|" + "---:|" * len(ds),
        ]
        for n, pts in sw["steps"].items():
            cells = [f"{pts[d]:.0f}" if d in pts else "–" for d in ds]
            lines.append(f"| {METHODS[n][0]} (`{n}`) | " + " | ".join(cells) + " |")
        rot = sw["rotation"]
        lines += [
            "| GSOFT rotation, µs/token | "
            + " | ".join(f"{r['rotation_us_per_token']:.2f}" for r in rot)
            + " |",
            "| frozen d×d matmul, µs/token | "
            + " | ".join(f"{r['frozen_linear_us_per_token']:.2f}" for r in rot)
            + " |",
            "",
        ]
    if "gpu" in res:
        lines += gpu_table(res["gpu"])
    lines += ["| target | threshold | measured | met |", "|---|---|---|---|"]
    for name, thr, val, ok in targets(res):
        lines.append(
            f"| {name} | {thr} | {val} | {'–' if ok is None else ('yes' if ok else 'no')} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ CLI
def parse(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (lora is the reference)",
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--heavy-reps", type=int, default=2, help=f"rounds for {HEAVY}")
    p.add_argument("--heavy-memory", action="store_true", help=f"memory probe also for {HEAVY}")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--sweep", default="512,1024,2048,4096", help="hidden sizes; '' to skip")
    p.add_argument("--sweep-tokens", type=int, default=128)
    p.add_argument("--sweep-layers", type=int, default=1)
    p.add_argument("--sweep-reps", type=int, default=3)
    p.add_argument(
        "--sweep-boft-max",
        type=int,
        default=1024,
        help="largest d for PEFT BOFT in the sweep (it builds dense d×d matrices)",
    )
    p.add_argument("--unet", action="store_true", help="a small diffusers UNet instead of Llama")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-kernel", dest="kernel", action="store_false")
    p.add_argument("--no-main", dest="main", action="store_false", help="only kernel and sweep")
    p.add_argument("--out", type=Path, default=Path("benchmark-results"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--gpu-sizes",
        default="1024,2048,4096" if torch.cuda.is_available() else "",
        help="hidden sizes of the GPU table (LoRA, PEFT OFT, GSOFT Triton/torch); '' to skip",
    )
    p.add_argument(
        "--quant",
        choices=("", "4bit", "8bit"),
        default="",
        help="only: LoRA, PEFT OFT, GSOFT, Double GSOFT on a bitsandbytes base (run_quant)",
    )
    p.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    methods = tuple(m for m in a.methods.split(",") if m)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if "lora" not in methods:
        methods = ("lora", *methods)
    s = Settings(
        hidden=a.hidden, layers=a.layers, tokens=a.tokens, batch=a.batch,
        block_size=a.block_size, lora_r=a.lora_r, methods=methods, reps=a.reps,
        warmup=a.warmup, heavy_reps=a.heavy_reps, heavy_memory=a.heavy_memory, threads=a.threads,
        sweep=tuple(int(d) for d in a.sweep.split(",") if d), sweep_tokens=a.sweep_tokens,
        sweep_layers=a.sweep_layers, sweep_reps=a.sweep_reps, sweep_boft_max=a.sweep_boft_max,
        unet=a.unet, out=a.out, memory=a.memory, seed=a.seed, device=a.device, quant=a.quant,
    )  # fmt: skip
    return s, a


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    s, a = parse(argv)
    if s.threads:
        torch.set_num_threads(s.threads)
    if a.probe_memory:
        with contextlib.redirect_stdout(sys.stderr):
            mem = probe_memory(a.probe_memory, s)
        print(json.dumps(mem))
        return mem
    s.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"settings": {k: str(v) for k, v in dataclasses.asdict(s).items()}}
    res["machine"] = machine()
    print(f"machine: {res['machine']}")
    if s.quant:  # a separate, self-contained run
        res["quant"] = run_quant(s, argv)
        md = "\n".join([*markdown(res, s).splitlines()[:2], *quant_table(res["quant"], s)])
        (s.out / f"benchmark-{s.quant}.json").write_text(json.dumps(res, indent=1, default=str))
        (s.out / f"benchmark-{s.quant}.md").write_text(md)
        print(md)
        return res
    if a.main:
        res["main"] = run_main(s, argv)
    if a.kernel:
        res["kernel"] = gs_kernel_throughput(
            s.hidden, s.tokens * s.batch, s.block_size, max(s.reps * 4, 10), s.device
        )
    if a.gpu_sizes:
        res["gpu"] = run_gpu(s, tuple(int(d) for d in a.gpu_sizes.split(",")))
    if s.sweep:
        res["sweep"] = run_sweep(s)
        plot(res["sweep"], s.out / "step_time_vs_d.png", s.block_size)
    res["machine_end"] = machine()
    res["targets"] = [dict(zip(("target", "threshold", "measured", "met"), t, strict=True))
                      for t in targets(res)]  # fmt: skip
    (s.out / "benchmark.json").write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res, s)
    (s.out / "benchmark.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
