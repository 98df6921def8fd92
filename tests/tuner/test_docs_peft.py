"""The examples of docs/guides/peft.md run as written and their comments hold."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sorth.tuner.layer import SOrthLayer

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "peft.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_guide_has_the_examples_it_describes() -> None:
    assert len(_blocks()) == 2


def test_train_save_reload_merge(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "docs"}
    exec(compile(_blocks()[0], f"{PAGE}[0]", "exec"), scope)
    assert (tmp_path / "sorth-adapter" / "adapter_model.safetensors").exists()
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    diff = float(re.match(r"tensor\(([-+.e0-9]+)", printed).group(1))
    assert diff < 1e-5  # "~1e-7 in float32"


def test_several_adapters_and_mixed_batches(capsys) -> None:
    scope: dict = {"__name__": "docs"}
    exec(compile(_blocks()[1], f"{PAGE}[1]", "exec"), scope)
    mixed, base, both = scope["mixed"], scope["base"], scope["both"]
    # row 0 went through "default", which differs from the base model and from "two_sided"
    assert (mixed[0] - base[0]).abs().max() > 1e-3
    assert (mixed[0] - mixed[1]).abs().max() > 1e-3
    assert (both - base).abs().max() > 1e-3
    model = scope["model"]
    assert not any(m.merged for m in model.modules() if isinstance(m, SOrthLayer))  # unmerged
    with torch.no_grad():  # unmerged by the exact inverse: float32 rounding
        torch.testing.assert_close(model(input_ids=scope["ids"]).logits, both)
