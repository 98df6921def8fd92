"""Section (d) of the GPU check: a 20-step bf16 GSOFT fine-tune of a small Llama, then merge.

The Llama is built from a config (no download) in bf16; sorth GSOFT on q/k/v/o, trained under
bf16 autocast for 20 AdamW steps on one fixed batch (it must memorize: the loss falls), then
``merge_and_unload()`` must give the logits of the unmerged adapter, within the bf16 tolerance
of the dispatch's first-use check (``max |Δ| / max |logits|``).
"""

from __future__ import annotations

import time

import torch

from recipes.benchmark.gpu import gs_kernel
from recipes.benchmark.timing import median
from recipes.benchmark.workloads import LLAMA_TARGETS, llama_config
from sorth.kernels import CHECK_TOLERANCE

STEPS = 20


def finetune(device: str, quick: bool) -> dict:
    """Train, merge and compare; the row of section (d)."""
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from sorth.integrations.methods import make_peft_config

    d, layers, batch, tokens, b = (64, 1, 2, 16, 8) if quick else (1024, 2, 4, 512, 32)
    low = torch.bfloat16
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config(d, layers)).to(device=device, dtype=low)
    model = get_peft_model(base, make_peft_config("gsoft", LLAMA_TARGETS, block_size=b))
    ids = torch.randint(0, 1024, (batch, tokens), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    amp = torch.autocast(torch.device(device).type, dtype=low)
    losses, seconds = [], []
    model.train()
    for _ in range(STEPS):
        t0 = time.perf_counter()
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())  # syncs: the step's time is complete
        seconds.append(time.perf_counter() - t0)
    kernel = gs_kernel(model, device)
    model.eval()
    with torch.no_grad(), amp:
        unmerged = model(input_ids=ids).logits.float()
        merged = model.merge_and_unload()(input_ids=ids).logits.float()
    merge_err = float((merged - unmerged).abs().max() / unmerged.abs().max())
    tol = CHECK_TOLERANCE[low]
    learned = losses[-1] < losses[0]
    ok = learned and merge_err <= tol
    status = "pass" if ok else ("FAIL: loss did not fall" if not learned else "FAIL: merge")
    return {
        "d": d, "layers": layers, "tokens": batch * tokens, "block_size": b, "steps": STEPS,
        "kernel": kernel, "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
        "step_ms": 1e3 * median(seconds[2:]), "tok_per_s": batch * tokens / median(seconds[2:]),
        "merge_rel_err": merge_err, "tolerance": tol, "pass": ok, "status": status,
    }  # fmt: skip
