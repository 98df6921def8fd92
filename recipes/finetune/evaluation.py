"""Evaluation in the finetune recipe: loss and task metrics, and the best-adapter metric."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recipes.finetune.config import FinetuneConfig


__all__ = ["evaluate", "select_metric"]


def evaluate(
    accelerator: Any, model: Any, loader: Any, task: str, num_labels: int
) -> dict[str, float]:
    """Loss and task metrics over the whole eval set (gathered across processes)."""
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    model.eval()
    losses, preds, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            out = model(**batch)
            n = batch["labels"].shape[0]
            losses.append(accelerator.gather_for_metrics(out.loss.detach().repeat(n)))
            if task == "seq_cls":
                p = out.logits.squeeze(-1) if num_labels == 1 else out.logits.argmax(-1)
                p, y = accelerator.gather_for_metrics((p, batch["labels"]))
                preds.append(p.float().cpu())
                labels.append(y.float().cpu())
    model.train()
    loss = torch.cat(losses).mean().item()
    result = {"loss": loss}
    if task == "causal_lm":
        result["perplexity"] = math.exp(min(loss, 50.0))
        return result
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    if num_labels == 1:
        result["pearson"] = float(np.corrcoef(p, y)[0, 1]) if p.std() > 0 else 0.0
        return result
    average = "binary" if num_labels == 2 else "macro"
    result["accuracy"] = float(accuracy_score(y, p))
    result["f1"] = float(f1_score(y, p, average=average, zero_division=0))
    result["matthews"] = float(matthews_corrcoef(y, p))
    return result


def select_metric(cfg: FinetuneConfig, num_labels: int) -> tuple[str, bool]:
    """The selection metric and whether larger is better."""
    if cfg.task == "causal_lm" or cfg.metric == "loss":
        return "loss", False
    if cfg.metric == "auto":
        return ("pearson" if num_labels == 1 else "accuracy"), True
    return cfg.metric, True
