"""Smoke test of ``recipes.benchmark`` on tiny sizes: it runs and writes its outputs.

No timing is asserted (CI machines are noisy); only that every figure is produced.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    return importlib.import_module("recipes.benchmark")  # a module of the checkout's recipes


TINY = ["--hidden", "64", "--layers", "1", "--tokens", "8", "--block-size", "8"]
TINY += ["--reps", "1", "--warmup", "0", "--threads", "1"]


def test_benchmark_writes_table_json_and_plot(tmp_path: Path) -> None:
    bench = _benchmark()
    methods = "lora,peft_oft,peft_boft,peft_boft_shim,gsoft,double_gsoft,butterfly,oft"
    argv = [*TINY, "--methods", methods, "--no-memory", "--out", str(tmp_path)]
    argv += ["--sweep", "32,64", "--sweep-tokens", "4", "--sweep-reps", "1"]
    bench.main(argv)
    res = json.loads((tmp_path / "benchmark.json").read_text())
    rows = res["main"]["rows"]
    assert list(rows) == methods.split(",")
    for row in rows.values():
        for key in ("train_step_ms", "infer_unmerged_ms", "infer_merged_ms", "trainable_params"):
            assert row[key] > 0
        assert row["checkpoint_bytes"] > 0
    assert rows["peft_boft_shim"]["butterfly_factors"] == 4  # 1 + log2(64 / 8)
    assert rows["butterfly"]["butterfly_factors"] == 4
    if rows["peft_boft"]["butterfly_factors"] != 4:  # no fbd_cuda: PEFT fell back (D5)
        assert "fbd_cuda fallback" in rows["peft_boft"]["notes"][0]
    assert set(res["sweep"]["steps"]["gsoft"]) == {"32", "64"}
    assert res["kernel"]["fwd_throughput_vs_bmm"] > 0
    table = (tmp_path / "benchmark.md").read_text()
    assert "| target | threshold | measured | met |" in table
    assert "sorth GSOFT (`gsoft`)" in table
    assert (tmp_path / "step_time_vs_d.png").stat().st_size > 0
    lora = rows["lora"]["train_step_all_ms"]
    for row in rows.values():  # ×LoRA is the paired ratio of the same rounds
        want = bench.paired_ratio(row["train_step_all_ms"], lora)
        assert row["train_x_lora"] == pytest.approx(want)
    assert rows["lora"]["train_x_lora"] == 1.0


def test_paired_ratio_cancels_load_drift() -> None:
    bench = _benchmark()
    ref = [1.0, 2.0, 4.0, 1.0, 3.0]  # load drifts between rounds
    assert bench.paired_ratio([1.1 * t for t in ref], ref) == pytest.approx(1.1)
    assert bench.median([1.1 * t for t in ref]) / bench.median(ref) == pytest.approx(1.1)
    drift = [1.1 * t for t in [1.0, 2.0, 4.0, 4.0, 3.0]]  # one round hit only one method
    assert bench.paired_ratio(drift, ref) == pytest.approx(1.1)
    assert bench.paired_ratio([2.0], ref) == pytest.approx(2.0 / 2.0)  # unpaired: medians
    assert bench.paired_ratio([], ref) is None
    assert bench.paired_ratio([1.0], None) is None


@pytest.mark.slow
def test_memory_probe_runs_in_a_fresh_process(tmp_path: Path) -> None:
    bench = _benchmark()
    mem = bench.memory_in_fresh_process("gsoft", [*TINY, "--out", str(tmp_path)])
    assert mem is not None
    assert mem["peak_mb"] > 0
    assert mem["step_mb"] >= 0


def test_gpu_table_runs_on_cpu(tmp_path: Path) -> None:
    """The ``--device cuda`` table's code path (here on CPU: both GSOFT rows use torch)."""
    bench = _benchmark()
    argv = [*TINY, "--no-main", "--no-kernel", "--sweep", "", "--out", str(tmp_path)]
    bench.main([*argv, "--device", "cpu", "--gpu-sizes", "32,64"])
    res = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(res["gpu"]["sizes"]) == {"32", "64"}
    for rows in res["gpu"]["sizes"].values():
        assert set(rows) == {"lora", "peft_oft", "gs_triton", "gs_torch", "double_gsoft"}
        assert all(r["step_ms"] > 0 and r["tok_per_s"] > 0 for r in rows.values())
        assert rows["lora"]["x_lora"] == 1.0
    assert [k["kernel"] for k in res["gpu"]["multiply"]] == ["torch", "torch"]
    md = (tmp_path / "benchmark.md").read_text()
    assert "GPU table" in md
    assert "| 64 | sorth GSOFT b=8, torch kernel |" in md
