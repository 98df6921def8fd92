"""The sorth.nn example of docs/guides/nn.md runs as written and its comments hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "nn.md"


def test_nn_guide_example() -> None:
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "docs"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    assert namespace["L"] == pytest.approx(1 / 0.2507, rel=1e-3)  # "measured, ≈ 1/0.2507"
    assert namespace["radius"].shape == (8,)
    assert namespace["net"].training is False
