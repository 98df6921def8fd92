"""The README's PEFT quick start runs as written (in a temporary working directory)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_peft_quick_start(tmp_path, monkeypatch) -> None:
    text = README.read_text()
    section = text[text.index("## PEFT adapters") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "sorth-adapter" / "adapter_model.safetensors").exists()
