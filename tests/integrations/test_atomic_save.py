"""Issue 14: saving an adapter over an existing one is atomic; stale temp folders are cleaned."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import sorth
from sorth.integrations.io import atomic_dir, clean_stale, save_pretrained_atomic


def _model(seed: int):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    config = sorth.SOrthConfig(target_modules=["q_proj"], block_size=8, init_weights=False)
    return get_peft_model(LlamaForCausalLM(cfg), config)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_failed_save_keeps_the_previous_adapter(tmp_path: Path, monkeypatch) -> None:
    """Regression: plain save_pretrained over an adapter destroyed it when the save failed."""
    folder = tmp_path / "adapter"
    save_pretrained_atomic(_model(0), folder)
    before = _files(folder)
    assert "adapter_model.safetensors" in before
    newer = _model(1)

    def broken(path, **kwargs):
        Path(path, "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(newer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(newer, folder)
    assert _files(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp left
    save_pretrained_atomic(_model(1), folder)
    assert _files(folder) != before


def test_sigkill_mid_write_leaves_the_adapter_and_the_next_save_cleans(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    save_pretrained_atomic(_model(0), folder)
    before = _files(folder)
    script = textwrap.dedent(f"""
        import os, signal
        from sorth.integrations.io import atomic_dir
        with atomic_dir({str(folder)!r}) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    stale = [p.name for p in tmp_path.iterdir() if p.name != "adapter"]
    assert len(stale) == 1
    assert stale[0].startswith(".adapter.tmp-")
    assert _files(folder) == before
    save_pretrained_atomic(_model(1), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_clean_stale_keeps_live_writers_and_rolls_back_an_interrupted_swap(tmp_path) -> None:
    final = tmp_path / "adapter"
    dead, live = _dead_pid(), os.getppid()
    (tmp_path / f".adapter.tmp-{dead}-abc").mkdir()
    (tmp_path / f".adapter.tmp-{live}-def").mkdir()  # another save in progress
    old = tmp_path / f".adapter.old-{dead}"
    old.mkdir()
    (old / "adapter_config.json").write_text("{}")
    (tmp_path / ".other.tmp-1-x").mkdir()  # another target: not ours to touch
    removed = clean_stale(final)
    assert [p.name for p in removed] == [f".adapter.tmp-{dead}-abc"]
    assert (final / "adapter_config.json").read_text() == "{}"  # the previous version is back
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".adapter.tmp-" + f"{live}-def",
        ".other.tmp-1-x",
        "adapter",
    ]
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("new")
    assert (final / "x").read_text() == "new"


def test_atomic_writes_through_a_symlink_replace_its_target(tmp_path: Path) -> None:
    """Regression: the swap renamed a symlinked folder (or file) itself, leaving the target
    stale, a real folder where the link was and a `.<name>.old-<pid>` link behind."""
    from sorth.integrations.io import atomic_file

    disk = tmp_path / "disk"
    (disk / "adapter").mkdir(parents=True)
    (disk / "adapter" / "stale.txt").write_text("old")
    (tmp_path / "adapter").symlink_to(disk / "adapter")
    model = _model(0)
    save_pretrained_atomic(model, tmp_path / "adapter")
    assert (tmp_path / "adapter").is_symlink()
    assert sorted(p.name for p in (disk / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    (disk / "notes.txt").write_text("old")
    (tmp_path / "notes.txt").symlink_to(disk / "notes.txt")
    with atomic_file(tmp_path / "notes.txt") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "notes.txt").is_symlink()
    assert (disk / "notes.txt").read_text() == "new"
    assert [p.name for d in (tmp_path, disk) for p in d.iterdir() if p.name.startswith(".")] == []
