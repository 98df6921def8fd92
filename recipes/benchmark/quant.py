"""``--quant 4bit`` / ``8bit``: LoRA, PEFT OFT, GSOFT and Double GSOFT on a bitsandbytes base
(QGSOFT): training step, step memory, and the merge error of the logits.
"""

from __future__ import annotations

import warnings

import torch

from recipes.benchmark.adapters import wrap
from recipes.benchmark.memory import memory_in_fresh_process
from recipes.benchmark.settings import ROWS, Settings
from recipes.benchmark.timing import interleaved, make_step, median, paired_ratio
from recipes.benchmark.workloads import Workload, make_workload

QUANT_METHODS = ("lora", "peft_oft", "gsoft", "double_gsoft")


def _logits(model: torch.nn.Module, w: Workload) -> torch.Tensor:
    """Logits in train mode (no dropout anywhere here, so the same function as eval): with
    bitsandbytes' training kernels, so that a merge error measures the re-quantization of the
    merged weight only: in eval mode on CPU, bitsandbytes repacks 4-bit weights (and PEFT's
    merge then dequantizes that layout as the standard one: LoRA's merge error was 131%), and
    LLM.int8() quantizes the activations, which differ before (``A·x``) and after merging."""
    model.train()
    with torch.no_grad():
        return model(input_ids=w.batch["input_ids"]).logits.float()


def run_quant(s: Settings, argv: list[str], merge_steps: int = 10) -> dict:
    """GSOFT / Double GSOFT against PEFT LoRA and OFT on a quantized base: training step time
    (interleaved rounds, paired ratios to LoRA), the step's peak memory (fresh process per
    method, as :func:`run_main`), and the merge error ``‖merged − unmerged‖ / ‖unmerged‖`` of the
    logits after ``merge_steps`` more AdamW steps at lr 1e-3 (with the adapter's effect
    ``‖unmerged − base‖ / ‖base‖`` beside it: the error of re-quantizing grows with it)."""
    torch.manual_seed(s.seed)
    w = make_workload(s)
    methods = [n for n in s.methods if n in QUANT_METHODS]
    models = {n: wrap(n, w, s) for n in methods}
    rows: dict[str, dict] = {}
    for n, model in models.items():
        label, what = ROWS[n].display, ROWS[n].what
        what = what.format(b=s.block_size, m=0, lora_r=s.lora_r)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows[n] = {"label": label, "what": what, "trainable_params": trainable}
    steps = {n: make_step(m, w) for n, m in models.items()}
    print(f"timing training steps on the {s.quant} base ({s.reps} interleaved rounds) ...")
    for n, t in interleaved(steps, s.reps, s.warmup, s.device, verbose=True).items():
        rows[n]["train_step_ms"] = 1e3 * median(t)
        rows[n]["train_step_all_ms"] = [1e3 * x for x in t]
    for r in rows.values():
        r["train_x_lora"] = paired_ratio(r["train_step_all_ms"], rows["lora"]["train_step_all_ms"])
    base = _logits(w.model, w)
    for n, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        model.train()
        for _ in range(merge_steps):
            w.loss(model, w.batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        unmerged = _logits(model, w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = _logits(model.merge_and_unload(), w)
        rows[n]["effect"] = ((unmerged - base).norm() / base.norm()).item()
        rows[n]["merge_error"] = ((merged - unmerged).norm() / unmerged.norm()).item()
    del models, steps
    if s.memory:
        print("peak memory of a training step, one fresh process per method ...", flush=True)
        for n in methods:
            mem = memory_in_fresh_process(n, argv)
            if mem:
                rows[n].update(mem)
    return {"rows": rows, "merge_steps": merge_steps}
