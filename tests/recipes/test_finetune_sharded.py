"""recipes/finetune with ``--fsdp`` / ``--deepspeed`` under ``torchrun`` on 2 CPU processes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipes.finetune.train import main
from tests._tolerances import tol
from tests.integrations.test_distributed import NEEDS_DEEPSPEED, free_port, run_bounded


def _recipe(out: Path, model: Path, data: Path, *extra: str) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "recipes.finetune.train",
        "--model", str(model), "--task", "causal_lm", "--train_file", str(data),
        "--prompt_column", "prompt", "--response_column", "response", "--method", "gsoft",
        "--block_size", "8", "--batch_size", "2", "--max_steps", "4", "--lr", "1e-2",
        "--checkpointing_steps", "2", "--output_dir", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    returncode, output = run_bounded(cmd, env)
    assert returncode == 0, output[-4000:]


@pytest.mark.slow
def test_fsdp_recipe_trains_saves_and_resumes(tiny_llama_dir, instruction_file, tmp_path):
    out = tmp_path / "run"
    _recipe(out, tiny_llama_dir, instruction_file, "--fsdp")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["sharding"] == "fsdp2"
    whole = load_file(out / "adapter" / "adapter_model.safetensors")
    # what a run killed after its step-2 checkpoint leaves behind, then resumed
    for name in ("adapter", "best", "metrics.json", "checkpoints/checkpoint-4"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    _recipe(out, tiny_llama_dir, instruction_file, "--fsdp", "--resume_from_checkpoint", "latest",
            "--export_merged")  # fmt: skip
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert sorted(whole) == sorted(resumed)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], **tol(torch.float32), msg=key)
    assert (out / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_deepspeed_zero3_recipe_trains_and_saves(tiny_llama_dir, instruction_file, tmp_path):
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": False}}))
    out = tmp_path / "run"
    _recipe(out, tiny_llama_dir, instruction_file, "--deepspeed", str(config))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sharding"] == "deepspeed"
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "params" in k)
    assert (out / "checkpoints" / "checkpoint-4" / "state.json").is_file()


def test_fsdp_and_deepspeed_exclude_each_other(tiny_llama_dir, instruction_file, tmp_path):
    argv = [
        "--model", str(tiny_llama_dir), "--task", "causal_lm", "--train_file",
        str(instruction_file), "--output_dir", str(tmp_path), "--fsdp", "--deepspeed", "x",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
