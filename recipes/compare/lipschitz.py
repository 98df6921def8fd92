"""SOC vs GS-SOC LipConvNets on scikit-learn's digits: clean and certified accuracy per seed.

Each (variant, seed) cell is one :func:`recipes.lipconvnet.train.run` (the paper's SGD schedule)
and is skipped when its ``cell.json`` exists. The digits train/test split of
:func:`sorth.nn.load_digits_dataset` follows the seed, so the spread over seeds includes the
split. Certified accuracy is at the recipe's ``eps`` (36/255, ℓ2) after the last epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipes.common import save_json

__all__ = ["VARIANTS", "run_lipschitz_cell"]

# variant -> (label, LipConvNetConfig fields)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "soc": ("SOC", {"conv": "soc"}),
    "gs-4": ("GS-SOC (4,−)", {"conv": "gs", "groups": 4, "groups_1x1": 0}),
    "gs-4-1": ("GS-SOC (4,1)", {"conv": "gs", "groups": 4, "groups_1x1": 1}),
    "gs-4-2": ("GS-SOC (4,2)", {"conv": "gs", "groups": 4, "groups_1x1": 2}),
}


def run_lipschitz_cell(
    folder: Path, variant: str, seed: int, *, depth: int, channels: int, epochs: int, batch: int
) -> dict[str, Any]:
    """Train and certify one LipConvNet (or load its finished ``cell.json``); a cell whose run
    was interrupted is run again (:func:`~recipes.compare.cells.interrupted`)."""
    done = folder / "cell.json"
    key = json.dumps({"depth": depth, "channels": channels, "epochs": epochs, "batch": batch})
    from recipes.compare.cells import finished_cell, interrupted, peak_rss_mb, reset_peak_rss

    record = finished_cell(done, key)
    if record is not None:
        return record
    from recipes.lipconvnet.train import LipConvNetConfig
    from recipes.lipconvnet.train import run as run_lipconvnet

    label, fields = VARIANTS[variant]
    exact = reset_peak_rss()
    result = run_lipconvnet(
        LipConvNetConfig(
            output_dir=str(folder / "run"), dataset="digits", depth=depth,
            init_channels=channels, epochs=epochs, batch_size=batch, seed=seed,
            progress=False, overwrite_output_dir=interrupted(folder), **fields,
        )
    )  # fmt: skip
    last = result["history"][-1]
    record = {
        "fingerprint": key,
        "variant": variant,
        "label": label,
        "seed": seed,
        "trainable_parameters": result["trainable_parameters"],
        "seconds_per_step": result["seconds_per_step"],
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_exact": exact,
        "clean_accuracy": last["accuracy"],
        "certified_accuracy": last["certified_accuracy"],
        "eps": result["eps"],
        "epochs": last["epoch"],
        "history": result["history"],
    }
    save_json(record, done)
    return record
