"""Aggregate finished cells into ``summary.json``, Markdown tables and PNG plots.

Spam: per (method, budget) the learning rate with the best validation accuracy of the first
seed (ties: lower validation loss) is chosen; every seed trained at that lr is reported on the
test split: per-seed accuracy, mean ± sample std (ddof 1), mean s/step, max peak RSS.
LipConvNet: per variant, clean and certified accuracy over the seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from recipes.common import atomic_file

__all__ = ["aggregate_lipschitz", "aggregate_spam", "markdown", "plot", "summary_table"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cells(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("**/cell.json"))]


def aggregate_spam(
    root: Path, methods: dict[str, str], budgets: list[int], seeds: list[int]
) -> list[dict[str, Any]]:
    """One row per (method, budget) with finished cells (``methods``: name -> label)."""
    rows = []
    for method, label in methods.items():
        for budget in budgets:
            cells = _cells(root / method / f"budget-{budget}")
            sweep = [c for c in cells if c["seed"] == seeds[0]]
            if not sweep:
                continue
            best = max(sweep, key=lambda c: (c["val_accuracy"], -c["val_loss"]))
            final = sorted((c for c in cells if c["lr"] == best["lr"]), key=lambda c: c["seed"])
            mean, std = _mean_std([c["test_accuracy"] for c in final])
            rows.append({
                "method": method, "label": label, "budget": budget, "sizes": best["sizes"],
                "trainable_parameters": best["trainable_parameters"],
                "lr": best["lr"], "lr_sweep": {f"{c['lr']:g}": c["val_accuracy"] for c in sweep},
                "seeds": [c["seed"] for c in final],
                "test_accuracy": [c["test_accuracy"] for c in final],
                "test_accuracy_mean": mean, "test_accuracy_std": std,
                "complete": sorted(c["seed"] for c in final) == sorted(seeds),
                "seconds_per_step": statistics.fmean(c["seconds_per_step"] for c in final),
                "peak_rss_mb": max(c["peak_rss_mb"] for c in final),
                "steps": best["steps"], "n_test": best["n_test"],
                "curve": [{"step": h["step"], "val_accuracy": h["accuracy"]}
                          for h in best["history"] if "accuracy" in h],
            })  # fmt: skip
    return rows


def aggregate_lipschitz(root: Path, variants: dict[str, str]) -> list[dict[str, Any]]:
    """One row per LipConvNet variant with finished seeds (``variants``: name -> label)."""
    rows = []
    for variant, label in variants.items():
        cells = sorted(_cells(root / variant), key=lambda c: c["seed"])
        if not cells:
            continue
        clean, cert = (
            _mean_std([c["clean_accuracy"] for c in cells]),
            _mean_std([c["certified_accuracy"] for c in cells]),
        )
        rows.append({
            "variant": variant, "label": label, "seeds": [c["seed"] for c in cells],
            "trainable_parameters": cells[0]["trainable_parameters"],
            "clean_accuracy": [c["clean_accuracy"] for c in cells],
            "certified_accuracy": [c["certified_accuracy"] for c in cells],
            "clean_mean": clean[0], "clean_std": clean[1],
            "certified_mean": cert[0], "certified_std": cert[1], "eps": cells[0]["eps"],
            "epochs": cells[0]["epochs"],
            "seconds_per_step": statistics.fmean(c["seconds_per_step"] for c in cells),
            "peak_rss_mb": max(c["peak_rss_mb"] for c in cells),
        })  # fmt: skip
    return rows


def _pm(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown(spam: list[dict[str, Any]], lipschitz: list[dict[str, Any]]) -> str:
    """The two result tables as GitHub Markdown."""
    out = []
    if spam:
        out += [
            "| method | budget | size | trainable | lr (swept) | test acc (mean ± std) | per seed "
            "| s/step | peak RSS MB |",
            "|---|---:|---|---:|---:|---|---|---:|---:|",
        ]
        for r in sorted(spam, key=lambda r: (r["budget"], -r["test_accuracy_mean"])):
            size = ", ".join(f"{k}={v}" for k, v in r["sizes"].items())
            seeds = " / ".join(f"{a:.3f}" for a in r["test_accuracy"])
            mark = "" if r["complete"] else " (incomplete)"
            out.append(
                f"| {r['label']} | {r['budget']:,} | {size} | {r['trainable_parameters']:,} | "
                f"{r['lr']:g} (of {', '.join(sorted(r['lr_sweep'], key=float))}) | "
                f"{_pm(r['test_accuracy_mean'], r['test_accuracy_std'])}{mark} | "
                f"{seeds} | {r['seconds_per_step']:.2f} | {r['peak_rss_mb']:.0f} |"
            )
    if lipschitz:
        eps = lipschitz[0]["eps"]
        out += [
            "" if spam else None,
            f"| LipConvNet | params | clean acc | certified acc (ε = {eps * 255:.0f}/255) "
            "| seeds | s/step |",
            "|---|---:|---|---|---:|---:|",
        ]
        for r in lipschitz:
            out.append(
                f"| {r['label']} | {r['trainable_parameters']:,} | "
                f"{_pm(r['clean_mean'], r['clean_std'])} | "
                f"{_pm(r['certified_mean'], r['certified_std'])} | {len(r['seeds'])} | "
                f"{r['seconds_per_step']:.3f} |"
            )
    return "\n".join(line for line in out if line is not None) + "\n"


def summary_table(summary: dict[str, Any]) -> str:
    """The short table of a ``summary.json``: one row per method, test accuracy per budget.

    The README's evidence table is this table of ``docs/measurements/compare_summary.json``
    (a test checks it). Rows follow ``summary["config"]["methods"]``; per budget the trainable
    count and the test accuracy (mean ± std over seeds); ``–`` where a method has no row at a
    budget (a size that is closest to both budgets runs once).
    """
    rows = {(r["method"], r["budget"]): r for r in summary["spam"]}
    budgets = sorted({b for _, b in rows})
    methods = [m for m in summary["config"]["methods"] if any((m, b) in rows for b in budgets)]
    head = "".join(f" trainable (~{b / 1e6:g}M) | test acc (~{b / 1e6:g}M) |" for b in budgets)
    out = [f"| method |{head}", "|---|" + "---:|---|" * len(budgets)]
    for method in methods:
        label = next(rows[method, b]["label"] for b in budgets if (method, b) in rows)
        cells = []
        for budget in budgets:
            r = rows.get((method, budget))
            if r is None:
                cells.append(" – | – |")
                continue
            mark = "" if r["complete"] else " (incomplete)"
            acc = _pm(r["test_accuracy_mean"], r["test_accuracy_std"])
            cells.append(f" {r['trainable_parameters']:,} | {acc}{mark} |")
        out.append(f"| {label} |" + "".join(cells))
    return "\n".join(out) + "\n"


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot(
    spam: list[dict[str, Any]], lipschitz: list[dict[str, Any]], out: Path, title: str
) -> list[Path]:
    """``compare.png`` (accuracy vs parameters + s/step), ``curves.png``, ``lipschitz.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if spam:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(3, 2))
        labels = list(dict.fromkeys(r["label"] for r in spam))
        for i, label in enumerate(labels):
            rows = sorted((r for r in spam if r["label"] == label), key=lambda r: r["budget"])
            style = "-o" if label.startswith("sorth") else "--s"
            ax.errorbar([r["trainable_parameters"] for r in rows],
                        [r["test_accuracy_mean"] for r in rows],
                        yerr=[r["test_accuracy_std"] for r in rows], fmt=style, capsize=3,
                        color=f"C{i}", label=label)  # fmt: skip
            for j, r in enumerate(rows):
                bx.barh(i + 0.4 * j - 0.2, r["seconds_per_step"], 0.38, color=f"C{i}",
                        alpha=1.0 if j else 0.55)  # fmt: skip
        ax.set(xscale="log", xlabel="trainable parameters (adapter + head)",
               ylabel="test accuracy (mean ± std over seeds)", title=title)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        bx.set(yticks=range(len(labels)), yticklabels=labels, xlabel="seconds per step",
               title="time per step (light: small budget)")  # fmt: skip
        bx.invert_yaxis()
        bx.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        _save(fig, out / "compare.png")
        written.append(out / "compare.png")
        budgets = sorted({r["budget"] for r in spam})
        fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
        for ax, budget in zip(axes[0], budgets, strict=True):
            for i, label in enumerate(labels):
                for r in (r for r in spam if r["label"] == label and r["budget"] == budget):
                    c = r["curve"]
                    ax.plot([h["step"] for h in c], [h["val_accuracy"] for h in c],
                            "-o" if label.startswith("sorth") else "--s", ms=3,
                            color=f"C{i}", label=f"{label} (lr {r['lr']:g})")  # fmt: skip
            ax.set(xlabel="optimizer step", ylabel="validation accuracy (seed 0, best lr)",
                   title=f"budget ~{budget:,} trainable")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, out / "curves.png")
        written.append(out / "curves.png")
    if lipschitz:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
        x = [r["trainable_parameters"] for r in lipschitz]
        ax.errorbar(
            x,
            [r["clean_mean"] for r in lipschitz],
            yerr=[r["clean_std"] for r in lipschitz],
            fmt="o",
            capsize=3,
            label="clean",
        )
        ax.errorbar(x, [r["certified_mean"] for r in lipschitz],
                    yerr=[r["certified_std"] for r in lipschitz], fmt="s", capsize=3,
                    label=f"certified (ε = {lipschitz[0]['eps'] * 255:.0f}/255)")  # fmt: skip
        for r in lipschitz:
            ax.annotate(r["label"], (r["trainable_parameters"], r["clean_mean"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
        ax.set(xlabel="parameters", ylabel="test accuracy (mean ± std)",
               title="LipConvNet, sklearn digits")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        bx.barh(range(len(lipschitz)), [r["seconds_per_step"] for r in lipschitz])
        bx.set(yticks=range(len(lipschitz)), yticklabels=[r["label"] for r in lipschitz],
               xlabel="seconds per step", title="time per step")  # fmt: skip
        bx.invert_yaxis()
        fig.tight_layout()
        _save(fig, out / "lipschitz.png")
        written.append(out / "lipschitz.png")
    return written
