"""Tiny models and the (name, model, input, config) case matrix (after PEFT's TEST_CASES)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class MLP(nn.Module):
    """Linear 16→32, ReLU, Linear 32→8 (PEFT's MLP, sizes GS-friendly)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 32, bias=bias)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(32, 8, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(self.relu(self.lin0(x)))


class ModelConv1D(nn.Module):
    """transformers Conv1D (GPT-2 layout, weight (in, out)) 16→24, then Linear 24→4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = Conv1D(24, 16)  # Conv1D(nf=out, nx=in)
        self.lin = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.conv1d(x)))


class ModelConv2D(nn.Module):
    """Conv2d with a configurable geometry, then a Conv2d 1×1; inputs 2×C×11×9 > kernel."""

    def __init__(self, **conv: Any) -> None:
        super().__init__()
        conv = {"in_channels": 8, "out_channels": 16, "kernel_size": 3, **conv}
        self.conv = nn.Conv2d(**conv)
        self.head = nn.Conv2d(conv["out_channels"], 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


class ModelEmb(nn.Module):
    """Embedding(50, 16) + Linear(16, 4) on the mean of the token embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0)
        self.lin = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(x).mean(-2))


@dataclass
class Case:
    """One row of the matrix: a model builder, an input builder and SOrthConfig kwargs."""

    name: str
    model: Callable[[], nn.Module]
    inputs: Callable[[], torch.Tensor]
    config: dict[str, Any]

    def __str__(self) -> str:
        return self.name


def mlp_input() -> torch.Tensor:
    return torch.randn(6, 16)


def conv1d_input() -> torch.Tensor:
    return torch.randn(3, 5, 16)


def token_input() -> torch.Tensor:
    return torch.randint(0, 50, (4, 7))


def conv_input(channels: int = 8) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, channels, 11, 9)


def _conv(**kw: Any) -> Callable[[], nn.Module]:
    return lambda: ModelConv2D(**kw)


_LIN = {"target_modules": ["lin0", "lin1"]}
CASES: list[Case] = [
    Case("mlp-gs-b4", MLP, mlp_input, {**_LIN, "block_size": 4}),
    Case("mlp-gs-r2", MLP, mlp_input, {**_LIN, "nblocks": 2}),
    Case("mlp-gs-full", MLP, mlp_input, {**_LIN, "block_size": 4, "storage": "full"}),
    Case("mlp-output", MLP, mlp_input, {**_LIN, "block_size": 4, "side": "output"}),
    Case("mlp-double", MLP, mlp_input, {**_LIN, "block_size": 4, "side": "both"}),
    Case("mlp-noscale", MLP, mlp_input, {**_LIN, "block_size": 8, "scale": False}),
    Case("mlp-expm", MLP, mlp_input, {**_LIN, "block_size": 4, "orthogonal_map": "expm"}),
    Case(
        "mlp-neumann", MLP, mlp_input, {**_LIN, "block_size": 4, "orthogonal_map": "cayley_neumann"}
    ),
    Case("mlp-oft", MLP, mlp_input, {**_LIN, "block_size": 4, "structure": "oft"}),
    Case("mlp-butterfly", MLP, mlp_input, {**_LIN, "block_size": 4, "structure": "butterfly"}),
    Case("mlp-monarch", MLP, mlp_input, {**_LIN, "nblocks": 4, "structure": "monarch"}),
    Case("mlp-gs-3factors", MLP, mlp_input, {**_LIN, "block_size": 4, "n_factors": 3}),
    Case("mlp-nobias", lambda: MLP(bias=False), mlp_input, {**_LIN, "block_size": 4}),
    Case("mlp-regex", MLP, mlp_input, {"target_modules": r".*lin\d", "block_size": 4}),
    Case("conv1d-gs", ModelConv1D, conv1d_input, {"target_modules": ["conv1d"], "block_size": 4}),
    Case(
        "conv1d-double",
        ModelConv1D,
        conv1d_input,
        {"target_modules": ["conv1d", "lin"], "block_size": 4, "side": "both"},
    ),
    Case(
        "emb-output",
        ModelEmb,
        token_input,
        {"target_modules": ["emb", "lin"], "block_size": 4, "side": "output"},
    ),
    Case("conv-k3", _conv(), conv_input(), {"target_modules": ["conv"], "block_size": 8}),
    Case(
        "conv-k3-channels",
        _conv(padding=1),
        conv_input(),
        {"target_modules": ["conv"], "block_size": 4, "conv_side": "channels", "side": "both"},
    ),
    Case(
        "conv-stride-pad",
        _conv(stride=(2, 1), padding=(1, 2)),
        conv_input(),
        {"target_modules": ["conv", "head"], "block_size": 8},
    ),
    Case(
        "conv-dilation-nonsquare",
        _conv(kernel_size=(3, 2), dilation=(2, 1), padding=(1, 0)),
        conv_input(),
        {"target_modules": ["conv"], "block_size": 8, "side": "both"},
    ),
    Case(
        "conv-reflect",
        _conv(padding=1, padding_mode="reflect"),
        conv_input(),
        {"target_modules": ["conv"], "block_size": 4, "conv_side": "channels"},
    ),
    Case(
        "conv-groups",
        _conv(groups=2, padding=1),
        conv_input(),
        {"target_modules": ["conv"], "block_size": 4},
    ),
    Case(
        "conv-1x1-double",
        _conv(kernel_size=1),
        conv_input(),
        {"target_modules": ["conv", "head"], "block_size": 4, "side": "both"},
    ),
]


def adapter_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "sorth_" in n}
