"""The LLM recipe under `accelerate launch --multi_gpu --num_processes 2` on CPU (DDP, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_identical_adapters_one_save(tiny_llama_dir, instruction_file, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "recipes.finetune.train", "--model", str(tiny_llama_dir), "--task", "causal_lm",
        "--train_file", str(instruction_file), "--prompt_column", "prompt",
        "--response_column", "response", "--method", "gsoft", "--block_size", "8",
        "--batch_size", "2", "--max_steps", "3", "--lr", "1e-2", "--output_dir", str(out),
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["rank_max_abs_diff"] == 0.0  # every rank ends with the same adapter
    assert [p.name for p in out.iterdir() if p.name.startswith(("adapter", ".adapter"))] == [
        "adapter"
    ]
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "sorth_" in k and v.dim() > 1)
