"""The README's sorth.nn example runs as written and its comments hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_nn_example() -> None:
    text = README.read_text()
    section = text[text.index("## sorth.nn: certified 1-Lipschitz networks") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["L"] == pytest.approx(1 / 0.2507, rel=1e-3)  # "measured, ≈ 1/0.2507"
    assert namespace["radius"].shape == (8,)
    assert namespace["net"].training is False
