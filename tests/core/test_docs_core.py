"""The README's core quick start runs as written and its comments hold."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_core_quick_start(capsys) -> None:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), namespace)
    q, Q = namespace["q"], namespace["Q"]
    assert Q.shape == (1024, 1024)
    assert q.num_parameters == 2 * 32 * 496
    assert q.matrix().density() == 1.0
    err = (Q.double().T @ Q.double() - torch.eye(1024, dtype=torch.float64)).abs().max()
    assert err < 1e-5
    assert capsys.readouterr().out.strip()
