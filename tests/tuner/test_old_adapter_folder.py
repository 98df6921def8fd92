"""Adapter folders saved before the orthogonal map was called ``orthogonal_map`` still load.

``tests/data/adapter_method_keyword`` was written by an earlier sorth (its README says how): its
``adapter_config.json`` names the orthogonal map ``"method": "expm"`` (Note [old adapter
folders] in :mod:`sorth.tuner.config`). It must load with the same map and give the outputs the
old code computed; saved again, it is written with ``orthogonal_map``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file

from sorth.cli import main as sorth_cli
from sorth.tuner import SOrthConfig
from tests._tolerances import tol
from tests.tuner._models import MLP

OLD = Path(__file__).resolve().parents[1] / "data" / "adapter_method_keyword"


def _base() -> MLP:
    base = MLP()
    base.load_state_dict(load_file(OLD / "base_model.safetensors"))
    return base


def test_the_folder_is_in_the_old_format() -> None:
    saved = json.loads((OLD / "adapter_config.json").read_text())
    assert saved["method"] == "expm"
    assert "orthogonal_map" not in saved


def test_old_folder_loads_with_its_map_and_the_old_outputs() -> None:
    expected = load_file(OLD / "expected.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT's own loader: no warning for a saved file
        model = PeftModel.from_pretrained(_base(), OLD).eval()
    assert model.peft_config["default"].orthogonal_map == "expm"
    with torch.no_grad():
        y = model(expected["input"])
    torch.testing.assert_close(y, expected["output"], **tol(torch.float32))


def test_old_folder_through_the_base_peft_config() -> None:
    """``PeftConfig.from_pretrained`` (transformers' ``load_adapter`` path) bypasses
    ``SOrthConfig.check_kwargs``; the keyword still arrives, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="orthogonal_map="):
        cfg = PeftConfig.from_pretrained(str(OLD))
    assert isinstance(cfg, SOrthConfig)
    assert cfg.orthogonal_map == "expm"


def test_resaved_folder_uses_the_new_name(tmp_path: Path) -> None:
    model = PeftModel.from_pretrained(_base(), OLD)
    model.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert saved["orthogonal_map"] == "expm"
    assert "method" not in saved


def test_inspect_names_each_word_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``method`` is the adapter (registry name), ``orthogonal_map`` the map of its blocks."""
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    assert sorth_cli(["inspect", str(folder)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "structure=" in x)
    assert line.count("method=") == 1
    assert "method=double_gsoft" in line
    assert line.count("orthogonal_map=") == 1
    assert "orthogonal_map=expm" in line


def test_method_keyword_is_deprecated_not_removed() -> None:
    with pytest.warns(DeprecationWarning, match=r"SOrthConfig\(method=\.\.\.\) is deprecated"):
        cfg = SOrthConfig(target_modules=["lin0"], block_size=4, method="cayley_neumann")
    assert cfg.orthogonal_map == "cayley_neumann"
    with pytest.warns(DeprecationWarning, match="SOrthConfig.method is deprecated"):
        assert cfg.method == "cayley_neumann"
    with pytest.raises(ValueError, match="disagree; pass only orthogonal_map="):
        SOrthConfig(target_modules=["lin0"], orthogonal_map="expm", method="cayley_neumann")
