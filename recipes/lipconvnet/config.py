"""The options of the LipConvNet recipe (:class:`LipConvNetConfig`, one ``--flag`` each).

Its own module, as every recipe's: other recipes (the demo, the comparison) build the options
without importing the run (:mod:`recipes.lipconvnet.train`).
"""

from __future__ import annotations

from dataclasses import dataclass

from recipes.common import option
from recipes.options import (
    OutputOptions,
    OverwriteOptions,
    ProgressOptions,
    ResumeOptions,
    SeedOptions,
)

__all__ = ["LipConvNetConfig"]


@dataclass(frozen=True)
class LipConvNetConfig(
    OutputOptions, OverwriteOptions, ResumeOptions, SeedOptions, ProgressOptions
):
    """Every option of the LipConvNet recipe (one ``--flag`` each)."""

    dataset: str = option(
        "cifar10",
        "cifar10, cifar100 (from --data_dir) or digits (bundled).",
        choices=("cifar10", "cifar100", "digits"),
    )
    data_dir: str = option("", "Folder with CIFAR in the python or binary layout (cifar only).")
    train_samples: int = option(0, "Use at most this many training images (0: all).", low=0)
    test_samples: int = option(0, "Use at most this many test images (0: all).", low=0)
    conv: str = option(
        "gs", "soc (Singla & Feizi) or gs (GS orthogonal convolution).", choices=("soc", "gs")
    )
    groups: int = option(4, "gs: groups of the 3×3 grouped exponential convolution.", low=1)
    groups_1x1: int = option(
        0, "gs: groups of the extra 1×1 convolution (0: none, paper's '-').", low=0
    )
    depth: int = option(15, "Number of conv blocks, a multiple of 5 (paper: 15).", low=5)
    init_channels: int = option(32, "Width of the first stage (paper: 32).", low=2)
    activation: str = option(
        "auto",
        "auto (maxmin for soc, maxmin_permuted for gs), maxmin or maxmin_permuted.",
        choices=("auto", "maxmin", "maxmin_permuted"),
    )
    epochs: int = option(200, "Training epochs.", low=1)
    batch_size: int = option(128, "Per-device batch size.", low=1)
    lr: float = option(
        0.1, "SGD learning rate (×0.1 at 50% and 75% of the epochs).", low=0, low_open=True
    )
    momentum: float = option(0.9, "SGD momentum.", low=0, high=1)
    weight_decay: float = option(5e-4, "SGD weight decay.", low=0)
    augment: str = option(
        "auto",
        "auto (crop+flip; crop only for digits), crop_flip, crop or none.",
        choices=("auto", "crop_flip", "crop", "none"),
    )
    eps: float = option(36 / 255, "ℓ2 radius for the certified accuracy.", low=0, low_open=True)
    checkpoints_total_limit: int = option(2, "Keep at most this many per-epoch checkpoints.", low=1)
