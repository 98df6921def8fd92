"""What is benchmarked: the table rows (registry methods with their overrides) and the settings.

A row name maps to a method of the one registry, ``sorth.integrations.methods.METHODS``, and adds
only the benchmark's own columns (the "structure" cell, config overrides, a label override);
``Settings`` holds every option of the command line (``recipes.benchmark.cli.parse``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sorth.integrations.methods import METHODS


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmarked configuration: a method of the registry (``sorth.integrations.methods``),
    what its table row says, and config fields that differ from the registry's defaults."""

    method: str
    what: str
    overrides: tuple[tuple[str, object], ...] = ()
    label: str | None = None

    @property
    def display(self) -> str:
        """How tables and plots name the row: ``label``, else the registry's label."""
        return self.label or METHODS[self.method].label


# row name -> Row; every name is a registry method, or one with a documented override
ROWS: dict[str, Row] = {
    "lora": Row("lora", "r={lora_r}"),
    "peft_oft": Row("peft_oft", "b={b}, exact Cayley"),
    "peft_oft_neumann": Row("peft_oft_neumann", "b={b}, Cayley-Neumann (5 terms)"),
    "peft_boft": Row("peft_boft", "b={b}, m={m} requested"),
    "peft_boft_shim": Row(
        "peft_boft", "b={b}, m={m} (pure-torch fbd_cuda stand-in)", label="PEFT BOFT + CPU fbd"
    ),
    "gsoft": Row("gsoft", "gs, b={b}, dense, with scale s"),
    "gsoft_noscale": Row("gsoft", "gs, b={b}, dense, scale=False", (("scale", False),)),
    "double_gsoft": Row("double_gsoft", "gs both sides, b={b}"),
    "butterfly": Row("butterfly", "BOFT structure, b={b}, m = 1 + log2 r"),
    "oft": Row("oft", "block-diagonal, b={b}"),
}
DEFAULT_METHODS = tuple(ROWS)
HEAVY = ("peft_boft_shim",)  # O(m·d³) per step: timed in a short separate loop
SWEEP_METHODS = ("lora", "peft_oft", "gsoft", "double_gsoft", "butterfly", "oft", "peft_boft")


@dataclasses.dataclass(frozen=True)
class Settings:
    hidden: int
    layers: int
    tokens: int
    batch: int
    block_size: int
    lora_r: int
    methods: tuple[str, ...]
    reps: int
    warmup: int
    heavy_reps: int
    heavy_memory: bool
    threads: int | None
    sweep: tuple[int, ...]
    sweep_tokens: int
    sweep_layers: int
    sweep_reps: int
    sweep_boft_max: int
    unet: bool
    out: Path
    memory: bool
    seed: int
    device: str
    quant: str = ""  # "4bit" / "8bit": bitsandbytes base (run_quant)
