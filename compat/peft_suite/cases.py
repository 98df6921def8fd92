"""sorth's cases for PEFT's generic suite: one row per ``SOrthConfig`` axis.

Rows are ``(test_name, model_id, config_cls, config_kwargs)`` as in PEFT's ``TEST_CASES``. The
``model_id`` names one of PEFT's test models (``MLP`` = Linear 10→20→2, ``MLP2`` = 10→32→2,
``EmbConv1D`` = Embedding(100, 5) + transformers Conv1D(1, 5), ``Conv2d`` = Conv2d(5, 10, 3) on a
3×3 input, ``Conv2d1x1``, ``Conv2dGroups`` = Conv2d(16, 16, 3, groups=8), ``Conv2dGroups2`` =
Conv2d(16, 32, 3, padding=1, groups=2) on 20×20, ``Conv2d2`` = Linear 10→40 + Conv2d(8, 32, 3))
or one of the models below (:data:`EXTRA_MODELS`), which PEFT's models lack:

* ``Conv2dSpatial``: Conv2d(4, 8, 3, stride=(2, 1), padding=1, dilation=(1, 2)) on a 6×6 input,
  so the kernel sees many overlapping patches (PEFT's ``Conv2d`` model has a single patch);
* ``EmbMaxNorm``: Embedding(100, 8, max_norm=1.0) followed by a Linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from sorth.tuner import SOrthConfig

__all__ = ["EXTRA_MODELS", "FAST_CASES", "MULTIPLE_ACTIVE_CASES", "SORTH_CASES"]

C = SOrthConfig


class Conv2dSpatial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 144)
        self.conv2d = nn.Conv2d(4, 8, 3, stride=(2, 1), padding=1, dilation=(1, 2))
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(8 * 3 * 4, 2)
        self.sm = nn.LogSoftmax(dim=-1)
        self.dtype = torch.float

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.relu(self.lin0(X.to(self.dtype))).reshape(-1, 4, 6, 6)
        X = self.relu(self.conv2d(X)).flatten(1)
        return self.sm(self.lin1(X))


class EmbMaxNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 8, max_norm=1.0)
        self.lin0 = nn.Linear(80, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.sm(self.lin0(self.emb(X).flatten(1)))


EXTRA_MODELS: dict[str, type[nn.Module]] = {
    "Conv2dSpatial": Conv2dSpatial,
    "EmbMaxNorm": EmbMaxNorm,
}

SORTH_CASES = [
    # ---- size: default rule (smallest divisor b >= sqrt(n)), block_size, nblocks
    ("MLP default size", "MLP", C, {"target_modules": ["lin0"]}),
    ("MLP default size both layers", "MLP", C, {"target_modules": ["lin0", "lin1"]}),
    ("MLP block_size", "MLP", C, {"target_modules": ["lin0", "lin1"], "block_size": 2}),
    ("MLP nblocks", "MLP", C, {"target_modules": ["lin0", "lin1"], "nblocks": 2}),
    # ---- side
    ("MLP side output", "MLP", C, {"target_modules": ["lin0"], "side": "output", "block_size": 5}),
    ("MLP side both", "MLP", C, {"target_modules": ["lin0"], "side": "both", "block_size": 5}),
    ("MLP side both 2 layers", "MLP", C, {"target_modules": ["lin0", "lin1"], "side": "both"}),
    # ---- structure / n_factors
    ("MLP2 oft", "MLP2", C, {"target_modules": ["lin1"], "structure": "oft", "block_size": 4}),
    ("MLP2 gs 3 factors", "MLP2", C, {"target_modules": ["lin1"], "block_size": 4, "n_factors": 3}),
    (
        "MLP2 butterfly",
        "MLP2",
        C,
        {"target_modules": ["lin1"], "structure": "butterfly", "block_size": 4},
    ),
    (
        "MLP2 butterfly 2 factors",
        "MLP2",
        C,
        {"target_modules": ["lin1"], "structure": "butterfly", "block_size": 2, "n_factors": 2},
    ),
    (
        "MLP2 monarch",
        "MLP2",
        C,
        {"target_modules": ["lin1"], "structure": "monarch", "block_size": 4},
    ),
    # ---- method
    ("MLP expm", "MLP", C, {"target_modules": ["lin0", "lin1"], "orthogonal_map": "expm"}),
    (
        "MLP cayley_neumann",
        "MLP",
        C,
        {"target_modules": ["lin0", "lin1"], "orthogonal_map": "cayley_neumann"},
    ),
    (
        "MLP2 monarch cayley_neumann output",
        "MLP2",
        C,
        {
            "target_modules": ["lin0"],
            "structure": "monarch",
            "orthogonal_map": "cayley_neumann",
            "side": "both",
            "block_size": 2,
        },
    ),
    # ---- storage / scale / dropout (bias: PEFT's own bias tests run on every row, see below)
    ("MLP storage full", "MLP", C, {"target_modules": ["lin0", "lin1"], "storage": "full"}),
    ("MLP no scale", "MLP", C, {"target_modules": ["lin0"], "side": "both", "scale": False}),
    ("MLP module_dropout", "MLP", C, {"target_modules": ["lin0"], "module_dropout": 0.5}),
    ("MLP_LayerNorm", "MLP_LayerNorm", C, {"target_modules": ["lin0", "lin1"]}),
    # ---- targets: regex, all-linear, modules_to_save, exclude_modules
    ("MLP regex", "MLP", C, {"target_modules": r".*lin\d"}),
    ("MLP all-linear", "MLP", C, {"target_modules": "all-linear", "block_size": 2}),
    ("MLP exclude", "MLP", C, {"target_modules": "all-linear", "exclude_modules": ["lin1"]}),
    ("MLP modules_to_save", "MLP", C, {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    # ---- Embedding and transformers Conv1D
    ("EmbConv1D emb", "EmbConv1D", C, {"target_modules": ["emb"], "side": "output"}),
    ("EmbConv1D conv1d", "EmbConv1D", C, {"target_modules": ["conv1d"]}),
    ("EmbConv1D all-linear", "EmbConv1D", C, {"target_modules": "all-linear"}),
    (
        "EmbConv1D conv1d + lin0 one dense block",
        "EmbConv1D",
        C,
        {"target_modules": ["conv1d", "lin0"], "nblocks": 1},
    ),
    (
        "EmbMaxNorm no scale",
        "EmbMaxNorm",
        C,
        {"target_modules": ["emb"], "side": "output", "scale": False},
    ),
    # ---- Conv2d: filter / channels, both sides, kernel 3 and 1x1, groups
    ("Conv2d filter", "Conv2d", C, {"target_modules": ["conv2d"], "block_size": 9}),
    ("Conv2d filter default size", "Conv2d", C, {"target_modules": ["conv2d"]}),
    ("Conv2d channels", "Conv2d", C, {"target_modules": ["conv2d"], "conv_side": "channels"}),
    ("Conv2d both", "Conv2d", C, {"target_modules": ["conv2d"], "side": "both", "block_size": 5}),
    ("Conv2d1x1 output", "Conv2d1x1", C, {"target_modules": ["conv2d"], "side": "output"}),
    ("Conv2dGroups", "Conv2dGroups", C, {"target_modules": ["conv2d"]}),
    (
        "Conv2dGroups2 block_size 8",
        "Conv2dGroups2",
        C,
        {"target_modules": ["conv2d"], "block_size": 8},
    ),
    ("Conv2d2 lin0 + conv2d", "Conv2d2", C, {"target_modules": ["lin0", "conv2d"], "nblocks": 2}),
    ("Conv2dSpatial filter", "Conv2dSpatial", C, {"target_modules": ["conv2d"]}),
    (
        "Conv2dSpatial channels both",
        "Conv2dSpatial",
        C,
        {"target_modules": ["conv2d"], "conv_side": "channels", "side": "both", "block_size": 2},
    ),
    (
        "Conv2dSpatial filter both neumann",
        "Conv2dSpatial",
        C,
        {
            "target_modules": ["conv2d"],
            "side": "both",
            "block_size": 4,
            "orthogonal_map": "cayley_neumann",
        },
    ),
]

# Rows run by default; every other row is marked ``slow`` (``make test`` runs both steps). One
# row per layer type, plus the default size, Double GSOFT, Monarch + Neumann and the grouped conv.
FAST_CASES: frozenset[str] = frozenset(
    {
        "MLP default size both layers",
        "MLP side both",
        "MLP2 monarch cayley_neumann output",
        "MLP modules_to_save",
        "EmbConv1D all-linear",
        "EmbConv1D emb",
        "Conv2dGroups2 block_size 8",
        "Conv2dSpatial filter",
    }
)

# (test_name, tuner_method, config_cls, config_kwargs_1, config_kwargs_2) on PEFT's MLP
MULTIPLE_ACTIVE_CASES = [
    (
        "SOrth Same",
        "sorth",
        C,
        {"target_modules": ["lin0"], "init_weights": False},
        {"target_modules": ["lin0"], "init_weights": False},
    ),
    (
        "SOrth Different",
        "sorth",
        C,
        {"target_modules": ["lin0"], "init_weights": False},
        {"target_modules": ["lin1"], "init_weights": False},
    ),
    (
        "SOrth Same both sides",
        "sorth",
        C,
        {"target_modules": ["lin0"], "side": "both", "init_weights": False},
        {"target_modules": ["lin0"], "side": "both", "block_size": 5, "init_weights": False},
    ),
    (
        "SOrth Same neumann monarch",
        "sorth",
        C,
        {
            "target_modules": ["lin1"],
            "structure": "monarch",
            "orthogonal_map": "cayley_neumann",
            "block_size": 4,
            "init_weights": False,
        },
        {"target_modules": ["lin1"], "structure": "oft", "block_size": 5, "init_weights": False},
    ),
]
