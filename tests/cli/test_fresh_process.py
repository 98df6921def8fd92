"""Commands and loaders run the way users run them: each in a fresh interpreter with nothing
imported first (this pytest process has PEFT imported already, which hides import-order bugs).

Regression for Note [registration]: a look-up of ``peft`` between ``import sorth`` and ``import
peft`` (sorth's own ``require()`` does one, so does transformers' ``from_pretrained``) consumed
the one-shot hook without registering, and ``sorth merge`` / ``from_adapter`` failed with
``KeyError: 'SORTH'`` on every sorth adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SORTH = Path(sys.executable).with_name("sorth")
PROBE = [[3, 1, 4, 1, 5, 9, 2, 6]]
TIMEOUT = 300


def _fresh(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter, outside the checkout (so only the install is seen)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, check=False, cwd=cwd, timeout=TIMEOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def llama_dir(tiny_llama_dir: Path) -> Path:
    """A tiny Llama with a real tokenizer (``from_adapter`` loads one)."""
    return tiny_llama_dir


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """A GSOFT adapter (b = 8) on q/v, moved away from the identity."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import sorth

    torch.manual_seed(1)
    config = sorth.SOrthConfig(
        target_modules=["q_proj", "v_proj"], block_size=8, init_weights=False, init_std=0.3
    )
    out = tmp_path_factory.mktemp("gsoft")
    get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapted_logits(llama_dir: Path, adapter_dir: Path) -> list:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor(PROBE)).logits
        plain = AutoModelForCausalLM.from_pretrained(llama_dir).eval()(torch.tensor(PROBE)).logits
        assert (logits - plain).abs().max() > 1e-3  # the adapter does something
        return logits.tolist()


def _close(got: list, want: list) -> None:
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)


def test_sorth_merge_in_a_fresh_process(
    tmp_path: Path, llama_dir: Path, adapter_dir: Path, adapted_logits: list
) -> None:
    out = tmp_path / "merged"
    done = subprocess.run(
        [SORTH, "merge", "--base", llama_dir, "--adapter", adapter_dir, "--out", out],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    load = """
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
        with torch.no_grad():
            print(json.dumps(m(torch.tensor(json.loads(sys.argv[2]))).logits.tolist()))
    """
    got = _fresh(load, str(out), json.dumps(PROBE), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    _close(json.loads(got.stdout.strip().splitlines()[-1]), adapted_logits)


@pytest.mark.parametrize("merge", [False, True])
def test_from_adapter_in_a_fresh_process(
    tmp_path: Path, llama_dir: Path, adapter_dir: Path, adapted_logits: list, merge: bool
) -> None:
    code = f"""
        import json, sys, torch
        from sorth.integrations.transformers import from_adapter
        model, _ = from_adapter(sys.argv[1], task="causal_lm", base_model=sys.argv[2],
                                merge={merge})
        with torch.no_grad():
            print(json.dumps(model.eval()(torch.tensor(json.loads(sys.argv[3]))).logits.tolist()))
    """
    got = _fresh(code, str(adapter_dir), str(llama_dir), json.dumps(PROBE), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    _close(json.loads(got.stdout.strip().splitlines()[-1]), adapted_logits)


@pytest.mark.parametrize(
    "between",
    [
        "import importlib.util; importlib.util.find_spec('peft')",
        "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(base)",
        "import importlib.util; importlib.util.find_spec('peft'); importlib.util.find_spec('peft')",
    ],
    ids=["find_spec", "transformers_from_pretrained", "two_lookups"],
)
def test_import_sorth_then_anything_then_peft(
    tmp_path: Path, llama_dir: Path, adapter_dir: Path, adapted_logits: list, between: str
) -> None:
    code = f"""
        import json, sys, torch
        import sorth
        base, adapter = sys.argv[1], sys.argv[2]
        assert "peft" not in sys.modules
        {between}
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        with torch.no_grad():
            print(json.dumps(model.eval()(torch.tensor(json.loads(sys.argv[3]))).logits.tolist()))
    """
    got = _fresh(code, str(llama_dir), str(adapter_dir), json.dumps(PROBE), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    _close(json.loads(got.stdout.strip().splitlines()[-1]), adapted_logits)


def test_the_hook_leaves_once_peft_is_imported(tmp_path: Path) -> None:
    code = """
        import sys
        import sorth
        hooks = lambda: [f for f in sys.meta_path if type(f).__module__ == "sorth._peft_hook"]
        assert len(hooks()) == 1
        import importlib.util; importlib.util.find_spec("peft")
        assert len(hooks()) == 1, "a look-up must not disarm the hook"
        import peft
        from peft.utils import PeftType
        assert "SORTH" in PeftType.__members__
        assert hooks() == [], "the hook stays in sys.meta_path after peft was imported"
        print("ok")
    """
    got = _fresh(code, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "ok"


def test_from_adapter_without_a_recorded_base_is_one_line(
    tmp_path: Path, adapter_dir: Path
) -> None:
    # an adapter on a base built in memory records base_model_name_or_path = null: from_adapter
    # asked the hub for a model called "None" (retries, then a traceback) instead of one line
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    code = """
        import sys
        from sorth.integrations.transformers import from_adapter
        try:
            from_adapter(sys.argv[1], task="causal_lm")
        except ValueError as err:
            print("refused:", err)
    """
    got = _fresh(code, str(folder), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert "records no base model" in got.stdout
    assert "pass base_model=PATH" in got.stdout
