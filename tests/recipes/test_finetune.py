"""recipes/finetune end to end on tiny RoBERTa / Llama models, plus its bad-input handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipes.finetune.train import main
from sorth.integrations.transformers import from_adapter

ROOT = Path(__file__).resolve().parents[2]


def _cls_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--train_file", str(data), "--output_dir", str(out),
        "--max_steps", "4", "--batch_size", "8", "--lr", "5e-3", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "sizes", "marker"),
    [
        ("gsoft", ["--block_size", "8"], "sorth_"),
        pytest.param("double_gsoft", ["--nblocks", "4"], "sorth_", marks=pytest.mark.slow),
        ("lora", ["--rank", "4"], "lora_B"),
        pytest.param("peft_oft", ["--block_size", "16"], "oft_", marks=pytest.mark.slow),
    ],
)
def test_seq_cls_trains_saves_and_reloads(
    tiny_roberta_dir, sentiment_file, tmp_path, method, sizes, marker
):
    out = tmp_path / method
    result = main(
        _cls_args(
            tiny_roberta_dir,
            sentiment_file,
            out,
            "--method",
            method,
            *sizes,
            "--eval_before",
            "--export_merged",
        )
    )
    assert result["num_labels"] == 2
    assert result["trainable_parameters"] < result["total_parameters"] / 2
    assert [h["step"] for h in result["history"]] == [0, 4]
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    adapter = [v for k, v in weights.items() if marker in k]
    assert adapter, f"no {marker} tensors saved: {sorted(weights)[:5]}"
    # the identity/zero init moved: some adapter tensor is non-zero (LoRA B, skew generators)
    assert any(v.abs().max() > 0 for v in adapter if v.dim() > 1 or marker != "sorth_")
    assert (out / "best" / "adapter_config.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["step"] == 4
    # reload base + adapter (unmerged) and the merged export: same logits
    model, tok = from_adapter(out / "adapter", task="seq_cls")
    merged = type(model.get_base_model()).from_pretrained(out / "merged").eval()
    batch = tok(["good great movie", "bad awful plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(**batch).logits, merged(**batch).logits, atol=1e-4, rtol=1e-4
        )


def test_causal_lm_checkpoint_resume(tiny_llama_dir, instruction_file, tmp_path):
    args = [
        "--model", str(tiny_llama_dir), "--task", "causal_lm",
        "--train_file", str(instruction_file),
        "--prompt_column", "prompt", "--response_column", "response", "--method", "gsoft",
        "--block_size", "8", "--batch_size", "4", "--lr", "1e-2", "--checkpointing_steps", "2",
        "--eval_steps", "2", "--output_dir", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    first = main([*args, "--max_steps", "4"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert first["history"][-1]["loss"] < first["history"][0]["loss"]  # it learns the response
    resumed = main([*args, "--max_steps", "6", "--resume_from_checkpoint", "latest"])
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6]
    assert resumed["history"][:2] == first["history"]  # history carried over from checkpoint-4
    model, tok = from_adapter(tmp_path / "adapter", task="causal_lm", merge=True)
    ids = tok("question what is a dog", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def _error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "Traceback" not in err
    return err


def test_bad_input_one_line_errors(capsys, tiny_roberta_dir, sentiment_file, tmp_path):
    out = tmp_path / "never"
    base = _cls_args(tiny_roberta_dir, sentiment_file, out)
    missing = _error(capsys, [*base[:1], str(tmp_path / "no-model"), *base[2:]])
    assert "does not exist" in missing
    assert "unreachable" in _error(capsys, [*base[:1], "no-such-org/no-such-model", *base[2:]])
    assert "missing ['stars']" in _error(capsys, [*base, "--label_column", "stars"])
    assert "--lr=-1.0 is out of range" in _error(capsys, [*base, "--lr", "-1"])
    assert "invalid choice" in _error(capsys, [*base, "--method", "dora"])
    assert "--model is required" in _error(capsys, ["--train_file", str(sentiment_file)])
    assert not out.exists()  # nothing half-written


def test_script_exit_status_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.finetune.train", "--model", str(tmp_path / "missing"),
         "--train_file", "x.jsonl", "--output_dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: model '{tmp_path / 'missing'}' does not exist (no such local folder)"
    ]


def test_help_documents_every_flag():
    from dataclasses import fields

    from recipes.finetune.config import FinetuneConfig

    proc = subprocess.run(
        [sys.executable, "-m", "recipes.finetune.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0
    for f in fields(FinetuneConfig):
        assert f"--{f.name}" in proc.stdout
