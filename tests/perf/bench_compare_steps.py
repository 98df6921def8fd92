"""Seconds per training step of every row of a ``recipes.compare`` run, measured side by side.

Not a test (pytest does not collect it). The cells' own s/step are wall-clock times of
processes that shared the machine; this rebuilds each (method, size) row of ``summary.json``
on MiniLM-L6 and times one AdamW step of batch ``16 × max_length`` tokens (the run's shape) in
interleaved rounds (one step of every row per round, rotating order), printing the median and
the median of the per-round ratios to LoRA at the same budget::

    python -m tests.perf.bench_compare_steps outputs/compare/summary.json --threads 1 --reps 5
"""

from __future__ import annotations

import argparse
import importlib
import json
import warnings
from pathlib import Path

import torch


def _step(row: dict, model_dir: str, targets: list[str], length: int, batch: int):
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    from sorth.integrations.peft import make_peft_config

    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    cfg = make_peft_config(row["method"], targets, modules_to_save=["classifier"],
                           task_type="SEQ_CLS", **row["sizes"])  # fmt: skip
    model = get_peft_model(base, cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 30000, (batch, length))
    labels = torch.randint(0, 2, (batch,))

    def step() -> None:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    import transformers

    from recipes.spam import minilm_dir

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    bench = importlib.import_module("recipes.benchmark")  # interleaved rounds, paired ratios
    summary = json.loads(a.summary.read_text())
    cfg = summary["config"]
    model_dir = cfg["model"] or str(minilm_dir())
    rows = {f"{r['method']}@{r['budget']}": r for r in summary["spam"]}
    steps = {key: _step(r, model_dir, cfg["target_modules"], cfg["max_length"], cfg["batch_size"])
             for key, r in rows.items()}  # fmt: skip
    times = bench.interleaved(steps, a.reps, 1, "cpu")
    print(f"| method | budget | s/step ({a.threads} thread, median of {a.reps}) | × LoRA |")
    print("|---|---:|---:|---:|")
    for key, r in sorted(rows.items(), key=lambda kv: (kv[1]["budget"], kv[1]["label"])):
        lora = times.get(f"lora@{r['budget']}")
        ratio = bench.paired_ratio(times[key], lora)
        shown = "–" if ratio is None else f"{ratio:.2f}×"
        print(f"| {r['label']} | {r['budget']:,} | {bench.median(times[key]):.2f} | {shown} |")


if __name__ == "__main__":
    main()
