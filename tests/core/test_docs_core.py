"""The core example of docs/guides/core.md runs as written and its comments hold."""

from __future__ import annotations

import re
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "core.md"


def test_core_guide_example(capsys) -> None:
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "docs"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    q, Q = namespace["q"], namespace["Q"]
    assert Q.shape == (1024, 1024)
    assert q.num_parameters == 2 * 32 * 496
    assert q.matrix().density() == 1.0
    err = (Q.double().T @ Q.double() - torch.eye(1024, dtype=torch.float64)).abs().max()
    assert err < 1e-5
    assert capsys.readouterr().out.strip()
