"""``gpu_check.md``: the GPU check's results (``gpu_check.json``) as markdown tables.

Written after every row, so it renders partial results: a section still running shows the
rows it has, a section not reached says so.
"""

from __future__ import annotations

ROOFLINE_TARGET = 0.70  # fused multiply ≥ 70% of the copy bandwidth
STEP_TARGETS = {"x_lora": 1.10, "x_peft_oft": 0.90}  # GSOFT (Triton) step ≤ these ratios


def _e(errs: object) -> str:
    """``out/∂x/∂R/∂L`` relative errors, or the row's error text."""
    if isinstance(errs, list):
        return " / ".join(f"{e:.1e}" for e in errs)
    return str(errs).replace("|", "\\|")[:80]


def _f(v: object, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _header(res: dict) -> list[str]:
    env = res.get("environment", {})
    gpu = env.get("gpu") or {}
    lines = [
        "# sorth GPU check",
        "",
        f"Device {env.get('device')} {gpu.get('name', '')} (sm {gpu.get('capability', '–')}, "
        f"{gpu.get('sms', '–')} SMs, {gpu.get('memory_gb', '–')} GB, "
        f"L2 {gpu.get('l2_mb', '–')} MB); "
        f"python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
        f"triton {env.get('triton')}, transformers {env.get('transformers')}, "
        f"peft {env.get('peft')}, accelerate {env.get('accelerate')}; {env.get('time_utc')}; "
        f"{res.get('elapsed_s', 0):.0f} s.",
        "",
    ]
    if env.get("missing"):
        lines += [f"Missing here: {', '.join(env['missing'])} (carry in: "
                  f"`{' '.join(env.get('carry_in', []))}`).", ""]  # fmt: skip
    if res.get("stopped"):
        lines += [f"**Stopped early: {res['stopped']}.**", ""]
    if "failed" in res:
        lines += [f"Failed: {'; '.join(res['failed']) or 'nothing'}.", ""]
    return lines


def _accuracy(rows: list[dict]) -> list[str]:
    lines = [
        "Errors are `max |kernel − dense float64| / max |dense|` of output / ∂x / ∂R / ∂L.",
        "",
        "| dtype | b | r | structure | tokens | Triton | torch | tolerance | result |",
        "|---|---:|---:|---|---:|---|---|---:|---|",
    ]
    lines += [
        f"| {r['dtype']} | {r['b']} | {r['r']} | {r['structure']} {r['n_out']}×{r['n_in']} | "
        f"{r['tokens']} | {_e(r.get('triton', '–'))} | {_e(r.get('torch', '–'))} | "
        f"{r['tolerance']:g} | {r['status']} |"
        for r in rows
    ]
    return lines


def _bandwidth(rows: list[dict]) -> list[str]:
    lines = [
        "Roofline: time of `y.copy_(x)` (same bytes as the forward; forward + backward = 2.5 "
        f"copies) over the multiply's time; target ≥ {ROOFLINE_TARGET:.0%} for the fused kernel.",
        "",
        "| d | tokens | kernel | fwd ms | fwd GB/s | copy GB/s | fwd / roofline | fwd+bwd / "
        "roofline | torch fwd / roofline | torch fwd+bwd / roofline |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "fwd_ms" not in r:
            lines.append(f"| {r['d']} | | {r.get('status', '')} | | | | | | | |")
            continue
        lines.append(
            f"| {r['d']} | {r['tokens']} | {r['kernel']} | {r['fwd_ms']:.3f} | "
            f"{r['fwd_gb_per_s']:.0f} | {r['copy_gb_per_s']:.0f} | {r['fwd_of_roofline']:.0%} | "
            f"{r['fwd_bwd_of_roofline']:.0%} | {r['torch_fwd_of_roofline']:.0%} | "
            f"{r['torch_fwd_bwd_of_roofline']:.0%} |"
        )
    return lines


def _steps(rows: list[dict]) -> list[str]:
    lines = [
        f"Targets: sorth GSOFT (Triton) step ≤ {STEP_TARGETS['x_lora']}× LoRA and ≤ "
        f"{STEP_TARGETS['x_peft_oft']}× PEFT OFT; ratios are paired per round.",
        "",
        "| d | method | kernel | step ms | tok/s | ×LoRA | ×PEFT OFT | step MB | peak MB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in rows:
        if "rows" not in size:
            lines.append(f"| {size['d']} | {size.get('status', '')} | | | | | | | |")
            continue
        lines += [
            f"| {size['d']} | {r['label']} | {r['kernel'] or '–'} | {r['step_ms']:.1f} | "
            f"{r['tok_per_s']:,.0f} | {_f(r['x_lora'], '.2f')}× | "
            f"{_f(r['x_peft_oft'], '.2f')}× | {_f(r.get('step_mb'), '.0f')} | "
            f"{_f(r.get('peak_mb'), '.0f')} |"
            for r in size["rows"].values()
        ]
    return lines


def _finetune(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        if "loss_first" not in r:
            lines.append(r.get("status", ""))
            continue
        lines.append(
            f"Llama d={r['d']}, {r['layers']} layer(s), {r['tokens']} tokens/step, GSOFT b="
            f"{r['block_size']} ({r['kernel']} kernel): loss {r['loss_first']:.3f} → "
            f"{r['loss_last']:.3f} in {r['steps']} steps, {r['step_ms']:.1f} ms/step "
            f"({r['tok_per_s']:,.0f} tok/s); merged vs unmerged logits {r['merge_rel_err']:.1e} "
            f"(tolerance {r['tolerance']:g}): **{r['status']}**."
        )
    return lines


TABLES = {"a": _accuracy, "b": _bandwidth, "c": _steps, "d": _finetune}


def markdown(res: dict) -> str:
    """The whole report: header, one part per section, the first-use check verdicts."""
    lines = _header(res)
    for key, sec in res.get("sections", {}).items():
        took = f", {sec['seconds']:.0f} s" if "seconds" in sec else ", running"
        lines += [f"## ({key}) {sec['title']} (budget {sec['budget_s']:.0f} s{took})", ""]
        if sec["rows"]:
            lines += TABLES[key](sec["rows"])
        if sec.get("error"):
            lines += ["", f"**Error: {sec['error']}**"]
        lines.append("")
    checks = res.get("triton_checks")
    if checks is not None:
        lines += ["## First-use checks of the Triton kernel (what `auto` decided)", ""]
        lines += [f"- {k}: {v}" for k, v in checks.items()] or ["- none ran"]
        lines.append("")
    return "\n".join(lines)
