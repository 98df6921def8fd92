"""What a run writes: ``benchmark.md`` (the tables and the targets with their thresholds) from the
results dict that ``benchmark.json`` holds, and the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from recipes.benchmark.settings import ROWS, Settings
from recipes.benchmark.sweep import loglog_slope
from recipes.benchmark.workloads import LLAMA_TARGETS, UNET_TARGETS


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
    """(target, threshold, measured, met) for every performance target (see docs/benchmarks.md)."""
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
            lines.append(f"| {ROWS[n].display} (`{n}`) | " + " | ".join(cells) + " |")
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
