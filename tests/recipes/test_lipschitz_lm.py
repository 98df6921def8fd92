"""recipes/lipschitz_lm end to end on a small real text: train (three methods), certify, save,
rebuild, report (attacked models never beat their certificate), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from recipes.lipschitz_lm.report import main as report
from recipes.lipschitz_lm.train import main as train
from sorth.nn import LipschitzTransformer

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dim", "16", "--heads", "2", "--depth", "1", "--seq_len", "8", "--batch_size", "4",
        "--steps", "6", "--eval_every", "3", "--val_batches", "2", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """A real English text: this repository's README prose (no download)."""
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text((ROOT / "docs" / "index.md").read_text(encoding="utf-8") * 3, encoding="utf-8")
    return path


@pytest.mark.parametrize(("method", "target"), [("baseline", 2.0), ("spectral", 2.0), ("gs", 10.0)])
def test_train_certify_save(method, target, text, tmp_path) -> None:
    out = tmp_path / method
    args = ["--method", method, "--target_bound", str(target), "--data_file", str(text)]
    result = train([*TINY, *args, "--output_dir", str(out)])
    assert [h["step"] for h in result["history"]] == [3, 6]
    assert 0.0 <= result["val_accuracy"] <= 1.0
    if method != "baseline":
        assert result["certified_bound"] <= target * (1 + 1e-6)
    net = LipschitzTransformer(**json.loads((out / "model_config.json").read_text())).eval()
    net.load_state_dict(load_file(out / "model.safetensors"))
    assert net.lipschitz_bound(seq_len=8).value == pytest.approx(
        result["certified_bound"], rel=1e-6
    )
    assert (out / "run.json").is_file()
    with pytest.raises(SystemExit) as info:  # a finished run is not overwritten silently
        train([*TINY, *args, "--output_dir", str(out)])
    assert info.value.code == 2


def test_report_attacks_and_renders_from_json(text, tmp_path) -> None:
    for method in ("gs", "spectral"):
        train([*TINY, "--method", method, "--data_file", str(text), "--output_dir",
               str(tmp_path / "runs" / method)])  # fmt: skip
    js, md = tmp_path / "s.json", tmp_path / "s.md"
    summary = report(["--runs", str(tmp_path / "runs"), "--output_json", str(js),
                      "--output_markdown", str(md), "--attack_steps", "10"])  # fmt: skip
    assert summary["worst_empirical_over_certified"] <= 1.0
    assert [r["method"] for r in summary["rows"]] == ["spectral", "gs"]
    first = md.read_text()
    md.unlink()
    report(["--output_json", str(js), "--output_markdown", str(md)])  # re-render only
    assert md.read_text() == first


def test_bad_input(capsys, tmp_path, text) -> None:
    cases = [
        (["--data_file", str(tmp_path / "missing.txt")], "scripts/get_shakespeare.sh"),
        (["--data_file", str(text), "--heads", "3"], "heads=3 must divide dim=16"),
        (["--data_file", str(text), "--method", "x"], "invalid choice"),
        (["--data_file", str(text), "--target_bound", "0"], "out of range"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as info:
            train([*TINY, *extra, "--output_dir", str(tmp_path / "out")])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_runs_as_a_command_in_a_fresh_process(text, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.lipschitz_lm.train", *TINY, "--data_file", str(text),
         "--output_dir", str(tmp_path / "cli")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "certified bound" in proc.stdout
