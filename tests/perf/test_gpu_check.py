"""The prepared GPU check's CPU dry run, so that it cannot rot before a GPU runs it.

``scripts/gpu_check.sh OUT --quick --device cpu`` in a fresh process (nothing pre-imported,
sorth from the checkout via PYTHONPATH as on the GPU machine), with the Triton kernel in Triton's
interpreter; then, in this process: a machine without PEFT gets "skipped" rows and the wheels to
carry in, and a run stopped by its deadline still leaves a valid JSON and markdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("triton")

from recipes.benchmark import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_section(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"  # a carried-in wheel: unpacked onto PYTHONPATH by the script
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "gpucheckprobe-0.1-py3-none-any.whl", "w") as whl:
        whl.writestr("gpucheckprobe/__init__.py", "")
    env = dict(os.environ, PYTHON=sys.executable, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["WHEELS"] = str(wheels)
    env.pop("PYTHONPATH", None)  # the script puts the checkout there itself
    out = subprocess.run(
        [str(ROOT / "scripts/gpu_check.sh"), str(tmp_path), "--quick", "--device", "cpu",
         "--budget-scale", "10"],  # budgets fit an idle CPU; no row may be skipped here
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["failed"] == []
    assert "stopped" not in res
    origins = res["environment"]["origins"]
    assert origins["sorth"] == str(ROOT / "sorth" / "__init__.py")  # the checkout, no install
    [(wheel, origin)] = res["environment"]["carried_in"].items()
    assert wheel == "gpucheckprobe-0.1-py3-none-any.whl"
    assert "sorth-gpu-deps" in origin
    secs = res["sections"]
    assert list(secs) == ["a", "b", "c", "d"]
    assert not any(s.get("error") for s in secs.values())
    ran = [r for r in secs["a"]["rows"] if r["pass"] is not None]
    assert {r["dtype"] for r in ran} == {"bfloat16", "float16", "float32"}
    for r in ran:  # both kernels ran (Triton in the interpreter) and are within tolerance
        assert r["status"] == "pass"
        assert max(r["triton"] + r["torch"]) <= r["tolerance"]
    assert [r["d"] for r in secs["b"]["rows"]] == [128, 256]
    assert all(r["fwd_of_roofline"] > 0 for r in secs["b"]["rows"])
    for size in secs["c"]["rows"]:
        assert set(size["rows"]) == {"lora", "peft_oft", "gs_triton", "gs_torch", "double_gsoft"}
        assert all(r["step_ms"] > 0 and r["tok_per_s"] > 0 for r in size["rows"].values())
    [ft] = secs["d"]["rows"]
    assert ft["pass"]
    assert ft["loss_last"] < ft["loss_first"]
    md = (tmp_path / "gpu_check.md").read_text()
    for key in "abcd":
        assert f"## ({key})" in md
    assert "| bfloat16 | 32 | 12 | gsoft 384×384 | 37 |" in md
    assert md in out.stdout  # the table is also printed


def test_without_peft_the_rows_say_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # find_spec("peft") -> None
    status = gpu_check.main(
        ["--out", str(tmp_path), "--quick", "--device", "cpu", "--sections", "cd"]
    )
    assert status == 0
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = [*res["sections"]["c"]["rows"], *res["sections"]["d"]["rows"]]
    assert len(rows) == 3
    assert all(r["status"].startswith("skipped: peft not installed") for r in rows)
    assert "peft" in res["environment"]["missing"]
    assert "peft==0.21.2" in res["environment"]["carry_in"]
    assert "skipped: peft not installed" in (tmp_path / "gpu_check.md").read_text()


def test_a_run_stopped_by_its_deadline_keeps_what_it_measured(tmp_path: Path) -> None:
    status = gpu_check.main(
        [
            "--out",
            str(tmp_path),
            "--quick",
            "--device",
            "cpu",
            "--sections",
            "ab",
            "--deadline",
            "2",
        ]
    )
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["stopped"] == "global deadline of 2 s"
    assert status == 1  # the stopped section is listed as failed
    assert res["sections"]["a"]["error"] == "stopped: the global deadline passed"
    assert "b" not in res["sections"]
    assert "**Stopped early: global deadline of 2 s.**" in (tmp_path / "gpu_check.md").read_text()
