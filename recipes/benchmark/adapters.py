"""One adapter per row: ``get_peft_model`` on a deep copy of the base model, and what was built.

PEFT's BOFT silently drops to one butterfly factor when its CUDA extension ``fbd_cuda`` is
missing; :class:`_CpuFbd` is a pure-torch stand-in for it (the dense block-diagonal of the
``(m, r, b, b)`` blocks), and :func:`boft_factors` reads back the ``m`` really built.
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from pathlib import Path

import torch

from recipes.benchmark.settings import ROWS, Settings
from recipes.benchmark.workloads import Workload
from sorth.integrations.methods import make_peft_config


def butterfly_factors(widths: list[int], b: int) -> int:
    """``m = 1 + log2 r`` for BOFT, capped so that ``2**(m-1)`` divides every block count."""
    ms = []
    for w in widths:
        r = w // b
        ms.append(min(1 + int(math.log2(r)), (r & -r).bit_length()))
    return min(ms)


class _CpuFbd:
    """Pure-torch stand-in for PEFT's ``fbd_cuda`` (dense block-diagonal of ``(m, r, b, b)``)."""

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*f.unbind(0)) for f in blocks])]

    @staticmethod
    def backward(grad: torch.Tensor, blocks: torch.Tensor) -> list[torch.Tensor]:
        m, r, b, _ = blocks.shape
        idx = torch.arange(r, device=grad.device)
        g = grad.reshape(m, r, b, r, b)[:, idx, :, idx, :]  # (r, m, b, b): diagonal blocks
        return [g.permute(1, 0, 2, 3).contiguous()]


def peft_config(name: str, w: Workload, s: Settings):
    row = ROWS[name]
    m = butterfly_factors(w.widths, s.block_size) if row.method == "peft_boft" else 2
    return make_peft_config(
        row.method, w.targets, block_size=s.block_size, rank=s.lora_r, boft_factors=m,
        **dict(row.overrides),
    )  # fmt: skip


def wrap(name: str, w: Workload, s: Settings) -> torch.nn.Module:
    """``get_peft_model`` on a deep copy of the base model (same weights for every method)."""
    import peft.tuners.boft.layer as boft_layer
    from peft import get_peft_model

    base = copy.deepcopy(w.model)
    previous = boft_layer._FBD_CUDA
    if name == "peft_boft_shim":
        previous = boft_layer._FBD_CUDA = _CpuFbd()  # stays: FastBlockDiag looks it up per call
    elif name == "peft_boft" and isinstance(previous, _CpuFbd):
        boft_layer._FBD_CUDA = None  # as shipped: PEFT tries to build fbd_cuda itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, peft_config(name, w, s))
    boft_layer._FBD_CUDA = previous
    return model


def boft_factors(model: torch.nn.Module) -> int | None:
    """Butterfly factors PEFT's BOFT really built (``boft_R`` is ``(m, r, b, b)``)."""
    for mod in model.modules():
        table = getattr(mod, "boft_R", None)
        if isinstance(table, torch.nn.ParameterDict) and len(table):
            return int(next(iter(table.values())).shape[0])
    return None


def sorth_factors(model: torch.nn.Module) -> int | None:
    for mod in model.modules():
        table = getattr(mod, "sorth_in", None)
        if isinstance(table, torch.nn.ModuleDict) and len(table):
            return int(next(iter(table.values())).n_factors)
    return None


def checkpoint_bytes(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
