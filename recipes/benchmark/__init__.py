"""Benchmark: sorth (GSOFT, Double GSOFT, butterfly, OFT) against PEFT's LoRA, OFT and BOFT.

One process builds a Llama-style model from a config (or a small diffusers UNet with ``--unet``),
wraps a copy of it with every method, and measures, **interleaved** (one repetition of every
method, in rotating order, before the next repetition, so that machine load hits all methods
alike) and reported as medians:

* a full training step (forward + backward + ``AdamW.step`` + ``zero_grad``);
* inference unmerged, and merged (``merge_adapter()``) against the bare base model;
* the peak memory of a training step: CUDA allocator peak on GPU; on CPU the peak RSS of a
  **fresh process** (``VmHWM`` reset after a warm-up step, ``MALLOC_MMAP_THRESHOLD_`` fixed so
  freed activations go back to the OS), reported as the increase over the RSS before the step;
* trainable parameters and the size of the saved adapter (``save_pretrained``).

Every figure is also given as a ratio to LoRA. PEFT's BOFT silently drops to one butterfly factor
when its CUDA extension is missing: the number of factors it
really built is read back from ``boft_R`` and the row is marked. ``peft_boft_shim`` runs PEFT's
own m-factor BOFT code on CPU by providing a pure-torch stand-in for the missing ``fbd_cuda``
extension (dense block-diagonal, exactly what the kernel computes), so that sorth's butterfly is
compared with BOFT *of the same structure*.

It also times the GS multiply alone against one ``torch.bmm`` of the same FLOPs, and sweeps the
hidden size ``d`` (step time per method, and the cost of one GS rotation per token, which grows
like ``O(d·b)`` while the frozen matmul grows like ``O(d²)``) into a PNG plot.

Writes ``benchmark.md``, ``benchmark.json`` and ``step_time_vs_d.png`` into ``--out``::

    python -m recipes.benchmark --out benchmark-results          # defaults below
    python -m recipes.benchmark --hidden 512 --tokens 128 --sweep 256,512 --reps 3   # quicker
    python -m recipes.benchmark --unet                           # small SD-style UNet

Modules, one concern each: ``settings`` (the rows and the options), ``workloads`` (base models),
``adapters`` (one PEFT model per row), ``timing`` (interleaved rounds, paired ratios), ``memory``
(the fresh-process probe), ``comparison`` (the main table), ``kernel`` (the GS multiply alone),
``sweep`` (the hidden-size sweep and its plot), ``quant`` (``--quant``), ``gpu`` (the GPU table),
``report`` (markdown and targets), ``cli`` (flags and ``main``). Every name is re-exported here.
The prepared GPU check (``scripts/gpu_check.sh``, ``python -m recipes.benchmark.gpu_check``) is
``gpu_check`` with ``gpu_accuracy``, ``gpu_finetune`` and ``gpu_report``; it reuses ``gpu``.
"""

from __future__ import annotations

from recipes.benchmark.adapters import (
    boft_factors,
    butterfly_factors,
    checkpoint_bytes,
    peft_config,
    sorth_factors,
    wrap,
)
from recipes.benchmark.cli import main, parse
from recipes.benchmark.comparison import run_main
from recipes.benchmark.gpu import GPU_ROWS, device_times, gpu_rows, gs_bandwidth, gs_kernel, run_gpu
from recipes.benchmark.kernel import gs_kernel_throughput
from recipes.benchmark.memory import memory_in_fresh_process, probe_memory
from recipes.benchmark.quant import QUANT_METHODS, run_quant
from recipes.benchmark.report import gpu_table, machine, main_table, markdown, quant_table, targets
from recipes.benchmark.settings import (
    DEFAULT_METHODS,
    HEAVY,
    ROWS,
    SWEEP_METHODS,
    Row,
    Settings,
)
from recipes.benchmark.sweep import loglog_slope, plot, rotation_cost_per_token, run_sweep
from recipes.benchmark.timing import interleaved, make_infer, make_step, median, paired_ratio
from recipes.benchmark.workloads import (
    LLAMA_TARGETS,
    UNET_TARGETS,
    Workload,
    llama_config,
    llama_workload,
    make_workload,
    quant_workload,
    unet_workload,
)
from sorth.integrations.methods import make_peft_config

__all__ = [
    "DEFAULT_METHODS",
    "GPU_ROWS",
    "HEAVY",
    "LLAMA_TARGETS",
    "QUANT_METHODS",
    "ROWS",
    "SWEEP_METHODS",
    "UNET_TARGETS",
    "Row",
    "Settings",
    "Workload",
    "boft_factors",
    "butterfly_factors",
    "checkpoint_bytes",
    "device_times",
    "gpu_rows",
    "gpu_table",
    "gs_bandwidth",
    "gs_kernel",
    "gs_kernel_throughput",
    "interleaved",
    "llama_config",
    "llama_workload",
    "loglog_slope",
    "machine",
    "main",
    "main_table",
    "make_infer",
    "make_peft_config",
    "make_step",
    "make_workload",
    "markdown",
    "median",
    "memory_in_fresh_process",
    "paired_ratio",
    "parse",
    "peft_config",
    "plot",
    "probe_memory",
    "quant_table",
    "quant_workload",
    "rotation_cost_per_token",
    "run_gpu",
    "run_main",
    "run_quant",
    "run_sweep",
    "sorth_factors",
    "targets",
    "unet_workload",
    "wrap",
]
