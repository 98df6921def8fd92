"""The main table: every method on one workload (``--no-main`` skips it).

Per method: trainable parameters, checkpoint size, training step, inference unmerged and merged
(against the bare base model), each timed in interleaved rounds and given as a ratio paired per
round to LoRA (and PEFT OFT); and the peak memory of a step, in a fresh process per method.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from recipes.benchmark.adapters import (
    boft_factors,
    butterfly_factors,
    checkpoint_bytes,
    sorth_factors,
    wrap,
)
from recipes.benchmark.memory import memory_in_fresh_process
from recipes.benchmark.settings import HEAVY, ROWS, Settings
from recipes.benchmark.timing import interleaved, make_infer, make_step, median, paired_ratio
from recipes.benchmark.workloads import make_workload


def run_main(s: Settings, argv: list[str]) -> dict:
    torch.manual_seed(s.seed)
    w = make_workload(s)
    models: dict[str, torch.nn.Module] = {}
    rows: dict[str, dict] = {}
    b = s.block_size
    m_req = butterfly_factors(w.widths, b)
    for name in s.methods:
        print(f"building {name} ...", flush=True)
        model = wrap(name, w, s)
        models[name] = model
        label, what = ROWS[name].display, ROWS[name].what
        row = {
            "label": label,
            "what": what.format(b=b, m=m_req, lora_r=s.lora_r),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "checkpoint_bytes": checkpoint_bytes(model),
            "notes": [],
        }
        if name.startswith("peft_boft"):
            got = boft_factors(model)
            row["butterfly_factors"] = got
            msg = f"{name}: PEFT BOFT built {got} butterfly factor(s), {m_req} requested"
            print(("  OK  " if got == m_req else "  !!  ") + msg)
            if got != m_req:
                row["notes"].append(f"only m={got} of {m_req} (fbd_cuda fallback)")
        if name == "butterfly":
            row["butterfly_factors"] = sorth_factors(model)
        rows[name] = row

    def timed(kind: str, fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
        """Interleaved rounds; HEAVY methods (dense d×d per step) get their own short loop."""
        light = {n: f for n, f in fns.items() if n not in HEAVY}
        heavy = {n: f for n, f in fns.items() if n in HEAVY}
        print(f"timing {kind} ({reps} interleaved rounds) ...", flush=True)
        out = interleaved(light, reps, s.warmup, s.device, verbose=True)
        for n, f in heavy.items():
            print(f"timing {kind} of {n} ({s.heavy_reps} rounds, not interleaved) ...", flush=True)
            out[n] = interleaved({n: f}, s.heavy_reps, 1, s.device, verbose=True)[n]
            note = f"timed in {s.heavy_reps} separate rounds (not interleaved)"
            if note not in rows[n]["notes"]:
                rows[n]["notes"].append(note)
        return out

    steps = {n: make_step(m, w) for n, m in models.items()}
    for n, t in timed("training steps", steps, s.reps).items():
        rows[n]["train_step_ms"] = 1e3 * median(t)
        rows[n]["train_step_all_ms"] = [1e3 * x for x in t]
    infers = {n: make_infer(m, w) for n, m in models.items()}
    for n, t in timed("inference (unmerged)", infers, 2 * s.reps).items():
        rows[n]["infer_unmerged_ms"] = 1e3 * median(t)
        rows[n]["infer_unmerged_all_ms"] = [1e3 * x for x in t]
    for m in models.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.merge_adapter()
    merged = {n: make_infer(m, w) for n, m in models.items()}
    merged["base"] = make_infer(w.model, w)
    tm = timed("inference (merged; and the bare base model)", merged, 2 * s.reps)
    base_all = [1e3 * x for x in tm.pop("base")]
    base_infer = median(base_all)
    for n, t in tm.items():
        rows[n]["infer_merged_ms"] = 1e3 * median(t)
        rows[n]["infer_merged_all_ms"] = [1e3 * x for x in t]
    del models, steps, infers, merged
    ref = rows.get("lora", {})
    for r in rows.values():
        r["train_x_lora"] = paired_ratio(r["train_step_all_ms"], ref.get("train_step_all_ms"))
        r["infer_unmerged_x_lora"] = paired_ratio(
            r["infer_unmerged_all_ms"], ref.get("infer_unmerged_all_ms")
        )
        r["infer_merged_x_base"] = paired_ratio(r["infer_merged_all_ms"], base_all)
        if "peft_oft" in rows:
            r["train_x_peft_oft"] = paired_ratio(
                r["train_step_all_ms"], rows["peft_oft"]["train_step_all_ms"]
            )

    if s.memory:
        print("peak memory of a training step, one fresh process per method ...", flush=True)
        from concurrent.futures import ThreadPoolExecutor

        names = [n for n in s.methods if n not in HEAVY or s.heavy_memory]
        with ThreadPoolExecutor(max_workers=3) as pool:  # RSS does not depend on CPU contention
            for n, mem in zip(names, pool.map(lambda n: memory_in_fresh_process(n, argv), names),
                              strict=True):  # fmt: skip
                if mem:
                    rows[n].update(mem)
    return {"rows": rows, "base_infer_ms": base_infer, "butterfly_m": m_req}
