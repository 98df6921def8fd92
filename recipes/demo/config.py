"""The options of the demo (:class:`DemoConfig`) and the sizes it runs each adapter at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recipes.common import option
from recipes.options import OutputOptions, OverwriteOptions, SeedOptions

__all__ = ["DEFAULT_OUTPUT_DIR", "SHORT_COMPARE", "SPAM_SIZES", "DemoConfig"]

DEFAULT_OUTPUT_DIR = "outputs/demo"  # an empty --output_dir

# method (a name of sorth.integrations.methods.METHODS) -> its size on MiniLM; similar budgets
# (see the printed parameter counts)
SPAM_SIZES: dict[str, dict[str, int]] = {
    "gsoft": {"block_size": 8},
    "lora": {"rank": 4},
    "peft_oft": {"block_size": 16},
    "double_gsoft": {"block_size": 16},
    "peft_boft": {"block_size": 8, "boft_factors": 2},
}


# the short version of `python -m recipes.compare` (the full protocol: docs/evidence.md)
SHORT_COMPARE: dict[str, Any] = {
    "methods": ("gsoft", "peft_oft", "lora", "peft_psoft"), "budgets": (150_000,),
    "sizes": ("gsoft=8", "peft_oft=16", "lora=4", "peft_psoft=96"), "seeds": 2, "lrs": (5e-3,),
    "max_steps": 20, "eval_steps": 5, "max_length": 32, "train_samples": 320, "val_size": 100,
    "test_size": 200, "lip_variants": ("soc", "gs-4"), "lip_channels": 4, "lip_epochs": 2,
}  # fmt: skip


@dataclass(frozen=True)
class DemoConfig(OutputOptions, OverwriteOptions, SeedOptions):
    """Options of the demo (the defaults are the main job; its duration: docs/recipes.md)."""

    data_dir: str = option(
        "data/spam-assassin", "SpamAssassin corpus folder (see scripts/get_data.sh)."
    )
    methods: tuple[str, ...] = option(
        ("gsoft", "lora", "peft_oft"), "Adapters to compare.", choices=tuple(SPAM_SIZES)
    )
    train_size: int = option(480, "Class-balanced training e-mails.", low=16)
    eval_size: int = option(240, "Class-balanced held-out e-mails.", low=16)
    max_length: int = option(
        64, "Tokens per e-mail (subject + start of the body).", low=8, high=512
    )
    epochs: float = option(1.0, "Epochs over the training sample.", low=0, low_open=True)
    batch_size: int = option(16, "Training batch size.", low=1)
    lr: float = option(1e-3, "AdamW learning rate (same for every method).", low=0, low_open=True)
    eval_steps: int = option(10, "Evaluate every N steps.", low=1)
    digits: bool = option(True, "Also train the GS-LipConvNet on the digits.")
    digits_epochs: int = option(4, "Epochs of the digits LipConvNet.", low=1)
    compare: bool = option(True, "Also run a short recipes.compare (see SHORT_COMPARE).")
