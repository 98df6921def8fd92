"""The README's quick start runs as written (in a temporary working directory), and the
getting-started page shows the same code."""

from __future__ import annotations

import re
from pathlib import Path

from peft import PeftModel

from sorth.tuner.layer import SOrthLayer

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _quick_start() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quick_start(tmp_path, monkeypatch) -> None:
    code = _quick_start()
    assert len(code.strip().splitlines()) <= 15
    assert code.index("get_peft_model(") < code.index("save_pretrained(")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), scope)
    assert (tmp_path / "gsoft-adapter" / "adapter_model.safetensors").exists()
    assert not isinstance(scope["merged"], PeftModel)
    assert not any(isinstance(m, SOrthLayer) for m in scope["merged"].modules())


def test_getting_started_shows_the_readme_quick_start() -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert f"```python\n{_quick_start()}```" in page
