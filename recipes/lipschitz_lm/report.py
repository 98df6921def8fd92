"""Collect ``recipes.lipschitz_lm.train`` runs into one JSON file and a Markdown table.

Each run folder holds ``metrics.json`` and ``model.safetensors``; runs are grouped by (method,
target bound, loss scale) and averaged over seeds. For every run the saved model is attacked
(Adam on pairs of input embeddings, starting from validation windows and from random points),
and the largest ``‖f(x) − f(y)‖ / ‖x − y‖`` found is reported next to the certified bound: the
worst ratio ``empirical / certified`` must stay ≤ 1. Example::

    python -m recipes.lipschitz_lm.report --runs runs/lm --machine "2-vCPU VM, shared" \\
        --output_json docs/measurements/lipschitz_lm.json \\
        --output_markdown docs/measurements/lipschitz_lm.md
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, atomic_file, cli, option, parse_config, save_json

__all__ = ["ReportConfig", "attack_ratio", "main", "markdown", "summarize"]

LABELS = {"baseline": "unconstrained (dense, AdamW)", "spectral": "spectral cap (Muon, hard cap)",
           "gs": "GS-orthogonal (AdamW)"}  # fmt: skip


@dataclass(frozen=True)
class ReportConfig:
    """Options of the report."""

    runs: str = option(
        "",
        "Folder whose sub-folders are training runs (empty: only re-render "
        "--output_markdown from the existing --output_json).",
    )
    output_json: str = option("", "The summary JSON: written from --runs, or read (required).")
    output_markdown: str = option("", "Where to write the Markdown table (optional).")
    machine: str = option("", "Machine description recorded with the figures.")
    attack_steps: int = option(100, "Adam steps of the Lipschitz attack per run.", low=0)


def attack_ratio(model: Any, windows: Any, *, steps: int = 100, norm: str = "l2") -> float:
    """Largest ``‖f(x + δ) − f(x)‖ / ‖δ‖`` found by Adam on ``(x, δ)`` in float64.

    Starts from the embeddings of ``windows`` (``(B, T)`` token ids) and from random points of the
    same norm; ``norm``: ``"l2"`` (whole sequence) or ``"max_token"``.
    """
    import torch

    model = model.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        real = model.embed(windows).double()
    x0 = torch.cat([real, torch.randn(real.shape, generator=gen, dtype=real.dtype)])
    x = x0.clone().requires_grad_()
    delta = (0.1 * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)).requires_grad_()
    opt = torch.optim.Adam([x, delta], lr=0.02)

    def size(z: Any) -> Any:
        return z.flatten(1).norm(dim=1) if norm == "l2" else z.norm(dim=-1).amax(-1)

    best = 0.0
    for _ in range(max(steps, 1)):
        ratio = size(model(inputs_embeds=x + delta) - model(inputs_embeds=x)) / size(delta)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def _ratio(run: dict[str, Any]) -> float:
    return run["empirical_l2_ratio"] / run["certified_bound_l2"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(cfg: ReportConfig) -> dict[str, Any]:
    """Read every run under ``cfg.runs``, attack its model, group and average."""
    import torch
    from safetensors.torch import load_file

    from recipes.lipschitz_lm.train import LMConfig, load_corpus, sample_windows
    from sorth.nn import LipschitzTransformer

    root = Path(cfg.runs).expanduser()
    folders = sorted(p.parent for p in root.glob("*/metrics.json"))
    if not folders:
        raise RecipeError(f"--runs '{cfg.runs}' holds no run folders with metrics.json")
    runs, corpus = [], {}
    for folder in folders:
        m = json.loads((folder / "metrics.json").read_text())
        model = LipschitzTransformer(**m["model_config"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
        lm = LMConfig(**{**m["config"], "batch_size": 4})
        if lm.data_file not in corpus:
            corpus[lm.data_file] = load_corpus(lm.data_file)[1]
        windows, _ = sample_windows(corpus[lm.data_file], lm, torch.Generator().manual_seed(7))
        empirical = attack_ratio(model, windows, steps=cfg.attack_steps)
        c = m["config"]
        runs.append({
            "run": folder.name, "method": c["method"],
            "target_bound": None if c["method"] == "baseline" else c["target_bound"],
            "loss_scale": m["config"]["loss_scale"], "seed": m["config"]["seed"],
            "val_accuracy": m["val_accuracy"], "val_loss": m["val_loss"],
            "certified_bound": m["certified_bound"], "certified_bound_l2": m["certified_bound_l2"],
            "certified_bound_max_token": m["certified_bound_max_token"],
            "empirical_l2_ratio": empirical, "parameters": m["parameters"],
            "seconds_per_step": m["seconds_per_step"], "steps": m["config"]["steps"],
            "tokens_seen": c["steps"] * c["batch_size"] * c["seq_len"],
        })  # fmt: skip
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["target_bound"], r["loss_scale"]), []).append(r)
    rows = []
    for (method, target, scale), rs in groups.items():
        acc = _mean_std([r["val_accuracy"] for r in rs])
        rows.append({
            "method": method, "target_bound": target, "loss_scale": scale, "seeds": len(rs),
            "val_accuracy_mean": acc[0], "val_accuracy_std": acc[1],
            "certified_bound_max": max(r["certified_bound"] for r in rs),
            "certified_bound_mean": statistics.fmean(r["certified_bound"] for r in rs),
            "empirical_over_certified_max": max(map(_ratio, rs)),
            "parameters": rs[0]["parameters"],
            "seconds_per_step_mean": statistics.fmean(r["seconds_per_step"] for r in rs),
        })  # fmt: skip
    order = {"baseline": 0, "spectral": 1, "gs": 2}
    rows.sort(key=lambda r: (order[r["method"]], r["target_bound"] or 0, r["loss_scale"]))
    return {
        "machine": cfg.machine or platform.platform(), "date": time.strftime("%Y-%m-%d"),
        "torch_threads": 1, "rows": rows, "runs": runs,
        "worst_empirical_over_certified": max(map(_ratio, runs)),
    }  # fmt: skip


def markdown(summary: dict[str, Any]) -> str:
    """The docs table (one row per method / target bound / loss scale)."""
    lines = [
        "| method | target bound | loss scale | val. accuracy (3 seeds) | certified bound | "
        "empirical / certified (ℓ2) | parameters | s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        target = "—" if r["target_bound"] is None else f"{r['target_bound']:g}"
        lines.append(
            f"| {LABELS[r['method']]} | {target} | {r['loss_scale']:g} | "
            f"{100 * r['val_accuracy_mean']:.1f} ± {100 * r['val_accuracy_std']:.1f} % | "
            f"{r['certified_bound_max']:.4g} | {r['empirical_over_certified_max']:.3g} | "
            f"{r['parameters']:,} | {r['seconds_per_step_mean']:.3f} |"
        )
    lines.append("")
    lines.append(
        f"Machine: {summary['machine']}; {summary['date']}; one torch thread per run. Worst "
        f"empirical / certified ratio over all runs: "
        f"{summary['worst_empirical_over_certified']:.3g}."
    )
    return "\n".join(lines) + "\n"


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(ReportConfig, argv, __doc__.split("\n\n")[0])
    if not cfg.output_json:
        raise RecipeError("--output_json is required (see --help)")
    if cfg.runs:
        summary = summarize(cfg)
        save_json(summary, cfg.output_json)
    elif Path(cfg.output_json).is_file():
        summary = json.loads(Path(cfg.output_json).read_text())
    else:
        raise RecipeError(
            f"--output_json '{cfg.output_json}' does not exist; pass --runs to create it"
        )
    if cfg.output_markdown:
        with atomic_file(cfg.output_markdown) as tmp:
            tmp.write_text(markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
