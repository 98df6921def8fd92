"""One comparison cell: a finetune run (method, budget, seed, lr), resumable by ``cell.json``.

A cell trains with :func:`recipes.finetune.train.run` (the one training loop), evaluating on the
validation split; the final adapter is then reloaded from disk and scored once on the test
split. ``cell.json`` is written atomically last, so a cell whose ``cell.json`` exists is done
and is skipped on a rerun; an interrupted cell is simply run again.

Peak memory is the process's peak resident set size during the training run (Linux
``VmHWM``, reset before the run through ``/proc/self/clear_refs``); it includes Python, torch
and the frozen model, so differences between methods are what matter.
"""

from __future__ import annotations

import hashlib
import json
import resource
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, save_json
from recipes.finetune.train import FinetuneConfig
from recipes.finetune.train import run as run_finetune

__all__ = [
    "cell_dir",
    "finished_cell",
    "interrupted",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_cell",
    "score_adapter",
]


def finished_cell(done: Path, key: str) -> dict[str, Any] | None:
    """The record in ``done`` (a finished cell's ``cell.json``) if its settings are ``key``;
    ``None`` if the cell has not finished; a one-line error if it ran with other settings."""
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    if record.get("fingerprint") != key:
        raise RecipeError(
            f"{done} was run with other settings ({record.get('fingerprint')}); "
            "use another --output_dir or delete that cell"
        )
    return record


def interrupted(folder: Path) -> bool:
    """Whether a cell's run started (its recipe claimed ``folder/run``: ``run.json``) but the
    cell never finished (no ``cell.json``, checked first by :func:`finished_cell`), e.g. the
    process was killed: the rerun replaces that run (``overwrite_output_dir``) instead of
    stopping at the recipe's refusal of a folder that already holds a run."""
    return (folder / "run" / "run.json").is_file()


def cell_dir(root: Path, method: str, budget: int, seed: int, lr: float) -> Path:
    """``root/<method>/budget-<B>/seed<s>-lr<lr>``."""
    return root / method / f"budget-{budget}" / f"seed{seed}-lr{lr:g}"


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux); ``False`` if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since the last :func:`reset_peak_rss`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def score_adapter(
    model_dir: str, adapter_dir: Path, test_file: str, max_length: int, batch_size: int = 64
) -> tuple[float, int]:
    """``(accuracy, n)`` of the saved adapter (reloaded on a fresh base model) on ``test_file``.

    Labels are the integers 0/1 of the JSONL rows, which the finetune recipe maps to themselves
    (its label names are the sorted strings ``"0"``, ``"1"``).
    """
    import torch
    import transformers

    from sorth.integrations.peft import load_adapter

    transformers.utils.logging.set_verbosity_error()
    rows = [json.loads(line) for line in Path(test_file).read_text().splitlines() if line]
    tok = transformers.AutoTokenizer.from_pretrained(adapter_dir)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    base.config.pad_token_id = tok.pad_token_id
    model = load_adapter(base, adapter_dir).eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            enc = tok([r["text"] for r in chunk], truncation=True, max_length=max_length,
                      padding=True, return_tensors="pt")  # fmt: skip
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor([int(r["label"]) for r in chunk])).sum())
    return correct / len(rows), len(rows)


def _fingerprint(cfg: FinetuneConfig, test_file: str) -> str:
    """What decides a cell's result: the training options and the data files' content."""
    fields = {k: v for k, v in asdict(cfg).items()
              if k not in {"output_dir", "progress", "eval_steps"}}  # fmt: skip
    fields["test_file"] = test_file
    for name in ("train_file", "eval_file", "test_file"):  # the split's content, not its path
        fields[name] = hashlib.sha256(Path(fields[name]).read_bytes()).hexdigest()[:16]
    return json.dumps(fields, sort_keys=True, default=str)


def run_cell(
    base: FinetuneConfig, folder: Path, test_file: str, **overrides: Any
) -> dict[str, Any]:
    """Run (or load, if done) one cell of ``base`` + ``overrides``; return its record.

    ``base.eval_file`` is the validation split (curves, lr choice); ``test_file`` is scored once.
    """
    done = folder / "cell.json"
    cfg = replace(base, output_dir=str(folder / "run"), **overrides)
    key = _fingerprint(cfg, test_file)
    record = finished_cell(done, key)
    if record is not None:
        return record
    if interrupted(folder):  # run it again (the key above is the settings' own)
        cfg = replace(cfg, overwrite_output_dir=True)
    exact_peak = reset_peak_rss()
    result = run_finetune(cfg)
    peak = peak_rss_mb()
    hist = [h for h in result["history"] if h["step"] > 0]
    acc, n_test = score_adapter(cfg.model, folder / "run" / "adapter", test_file, cfg.max_length)
    record = {
        "fingerprint": key,
        "method": cfg.method,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "sizes": {
            k: overrides[k] for k in ("block_size", "rank", "boft_factors") if k in overrides
        },
        "trainable_parameters": result["trainable_parameters"],
        "total_parameters": result["total_parameters"],
        "steps": hist[-1]["step"] if hist else 0,
        "seconds_per_step": result["seconds_per_step"],
        "peak_rss_mb": peak,
        "peak_rss_exact": exact_peak,
        "val_accuracy": hist[-1]["accuracy"] if hist else float("nan"),
        "val_loss": hist[-1]["loss"] if hist else float("nan"),
        "test_accuracy": acc,
        "n_test": n_test,
        "history": result["history"],
    }
    save_json(record, done)
    return record
