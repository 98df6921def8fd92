"""Registration with PEFT (Note [registration]): both import orders, idempotence, the error a
user sees without ``import sorth``, config round trip, lazy exports."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import sorth
from sorth.tuner import SOrthConfig, SOrthModel, register
from tests.tuner._models import MLP

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so import order is under test control)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("adapter"))
    torch.manual_seed(0)
    cfg = SOrthConfig(target_modules=["lin0"], block_size=4, init_weights=False)
    get_peft_model(MLP(), cfg).save_pretrained(path)
    return path


LOAD = """
from peft import PeftModel
from tests.tuner._models import MLP
m = PeftModel.from_pretrained(MLP(), {path!r})
print(type(m.base_model).__name__)
"""


def test_import_sorth_before_peft(saved: str) -> None:
    code = "import sys, sorth\nassert 'peft' not in sys.modules\n" + LOAD.format(path=saved)
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SOrthModel"


def test_from_sorth_import_sorthconfig_first(saved: str) -> None:
    # `from sorth import SOrthConfig` imports sorth.tuner, which imports peft: the hook must
    # not register a half-imported sorth.tuner (it registers itself when done), and no warning.
    code = "import warnings\nwarnings.simplefilter('error')\nfrom sorth import SOrthConfig\n"
    out = _run(code + LOAD.format(path=saved))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SOrthModel"


def test_without_sorth_then_import_sorth_after_peft(saved: str) -> None:
    # Without `import sorth` PEFT cannot know the method: it raises KeyError 'SORTH' (the README
    # says so). Importing sorth after PEFT registers at once, and the same load then works.
    code = f"""
        import peft
        from peft import PeftModel
        from tests.tuner._models import MLP
        try:
            PeftModel.from_pretrained(MLP(), {saved!r})
        except KeyError as err:
            print("KeyError", err)
        import sorth
        m = PeftModel.from_pretrained(MLP(), {saved!r})
        print(type(m.base_model).__name__)
    """
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["KeyError", "'SORTH'", "SOrthModel"]


def test_plain_import_does_not_import_peft() -> None:
    out = _run(
        "import sys, sorth\n"
        "print(','.join(m for m in ('peft', 'transformers', 'diffusers') if m in sys.modules))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_register_is_idempotent() -> None:
    register()
    register()
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.SORTH] is SOrthConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.SORTH] is SOrthModel
    assert PeftType("SORTH") is PeftType.SORTH
    assert pickle.loads(pickle.dumps(PeftType.SORTH)) is PeftType.SORTH
    assert list(PeftType).count(PeftType.SORTH) == 1


def test_lazy_exports() -> None:
    assert sorth.SOrthConfig is SOrthConfig
    assert sorth.SOrthModel is SOrthModel
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sorth.nope


def test_config_round_trip(tmp_path) -> None:
    cfg = SOrthConfig(
        target_modules=["lin0"],
        nblocks=2,
        structure="butterfly",
        side="both",
        orthogonal_map="expm",
        storage="full",
        module_dropout=0.1,
        conv_side="channels",
        scale=False,
    )
    cfg.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SOrthConfig)
    assert loaded.to_dict() == cfg.to_dict()


def test_target_modules_none_uses_defaults() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg), SOrthConfig(block_size=8))
    assert model.peft_config["default"].target_modules == {"q_proj", "v_proj"}
