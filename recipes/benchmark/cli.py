"""The command line: ``parse`` (flags → :class:`Settings`) and ``main`` (run, write, print)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import torch

from recipes.benchmark.comparison import run_main
from recipes.benchmark.gpu import run_gpu
from recipes.benchmark.kernel import gs_kernel_throughput
from recipes.benchmark.memory import probe_memory
from recipes.benchmark.quant import run_quant
from recipes.benchmark.report import machine, markdown, quant_table, targets
from recipes.benchmark.settings import DEFAULT_METHODS, HEAVY, ROWS, Settings
from recipes.benchmark.sweep import plot, run_sweep
from recipes.notices import quiet_known_notices
from sorth.cli.common import OneSpellingFormatter, TwoSpellingParser


class _Help(OneSpellingFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except for on/off flags (whose default is their absence)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def parse(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    summary = sys.modules[__package__].__doc__.split("\n\n")[0]  # the package's first paragraph
    p = TwoSpellingParser(  # --block-size and --block_size, as the recipes
        prog="python -m recipes.benchmark",
        description=summary,
        formatter_class=_Help,
    )
    p.add_argument("--hidden", type=int, default=1024, help="hidden size d of the Llama")
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the Llama")
    p.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument(
        "--block-size", type=int, default=32, help="block size b of sorth and PEFT OFT / BOFT"
    )
    p.add_argument("--lora-r", type=int, default=16, help="rank of the LoRA reference")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated subset of {','.join(ROWS)} (lora is the reference)",
    )
    p.add_argument(
        "--reps", type=int, default=5, help="interleaved rounds of training steps (inference: 2×)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    p.add_argument("--heavy-reps", type=int, default=2, help=f"rounds for {', '.join(HEAVY)}")
    p.add_argument(
        "--heavy-memory", action="store_true", help=f"memory probe also for {', '.join(HEAVY)}"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--sweep", default="512,1024,2048,4096", help="hidden sizes; '' to skip")
    p.add_argument("--sweep-tokens", type=int, default=128, help="tokens per step in the sweep")
    p.add_argument("--sweep-layers", type=int, default=1, help="decoder layers in the sweep")
    p.add_argument("--sweep-reps", type=int, default=3, help="interleaved rounds per sweep size")
    p.add_argument(
        "--sweep-boft-max",
        type=int,
        default=1024,
        help="largest d for PEFT BOFT in the sweep (it builds dense d×d matrices)",
    )
    p.add_argument("--unet", action="store_true", help="a small diffusers UNet instead of Llama")
    p.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the step-memory probe (one fresh process per method)",
    )
    p.add_argument(
        "--no-kernel",
        dest="kernel",
        action="store_false",
        help="skip timing the GS multiply against one torch.bmm of the same FLOPs",
    )
    p.add_argument("--no-main", dest="main", action="store_false", help="only kernel and sweep")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmark-results"),
        help="folder for benchmark.md, benchmark.json and the plot",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the models and inputs")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (CUDA when available)",
    )
    p.add_argument(
        "--gpu-sizes",
        default="1024,2048,4096" if torch.cuda.is_available() else "",
        help="hidden sizes of the GPU table (LoRA, PEFT OFT, GSOFT Triton/torch); '' to skip",
    )
    p.add_argument(
        "--quant",
        choices=("", "4bit", "8bit"),
        default="",
        help="only: LoRA, PEFT OFT, GSOFT, Double GSOFT on a bitsandbytes base (run_quant)",
    )
    p.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    methods = tuple(m for m in a.methods.split(",") if m)
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(ROWS)}")
    if "lora" not in methods:
        methods = ("lora", *methods)
    s = Settings(
        hidden=a.hidden, layers=a.layers, tokens=a.tokens, batch=a.batch,
        block_size=a.block_size, lora_r=a.lora_r, methods=methods, reps=a.reps,
        warmup=a.warmup, heavy_reps=a.heavy_reps, heavy_memory=a.heavy_memory, threads=a.threads,
        sweep=tuple(int(d) for d in a.sweep.split(",") if d), sweep_tokens=a.sweep_tokens,
        sweep_layers=a.sweep_layers, sweep_reps=a.sweep_reps, sweep_boft_max=a.sweep_boft_max,
        unet=a.unet, out=a.out, memory=a.memory, seed=a.seed, device=a.device, quant=a.quant,
    )  # fmt: skip
    return s, a


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (``python -m recipes.benchmark``), quiet about the pinned libraries'
    known notices (Note [known notices] in :mod:`recipes.notices`)."""
    with quiet_known_notices():
        return _run(list(sys.argv[1:] if argv is None else argv))


def _run(argv: list[str]) -> dict:
    s, a = parse(argv)
    if s.threads:
        torch.set_num_threads(s.threads)
    if a.probe_memory:
        with contextlib.redirect_stdout(sys.stderr):
            mem = probe_memory(a.probe_memory, s)
        print(json.dumps(mem))
        return mem
    s.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"settings": {k: str(v) for k, v in dataclasses.asdict(s).items()}}
    res["machine"] = machine()
    print(f"machine: {res['machine']}")
    if s.quant:  # a separate, self-contained run
        res["quant"] = run_quant(s, argv)
        md = "\n".join([*markdown(res, s).splitlines()[:2], *quant_table(res["quant"], s)])
        (s.out / f"benchmark-{s.quant}.json").write_text(json.dumps(res, indent=1, default=str))
        (s.out / f"benchmark-{s.quant}.md").write_text(md)
        print(md)
        return res
    if a.main:
        res["main"] = run_main(s, argv)
    if a.kernel:
        res["kernel"] = gs_kernel_throughput(
            s.hidden, s.tokens * s.batch, s.block_size, max(s.reps * 4, 10), s.device
        )
    if a.gpu_sizes:
        res["gpu"] = run_gpu(s, tuple(int(d) for d in a.gpu_sizes.split(",")))
    if s.sweep:
        res["sweep"] = run_sweep(s)
        plot(res["sweep"], s.out / "step_time_vs_d.png", s.block_size)
    res["machine_end"] = machine()
    res["targets"] = [dict(zip(("target", "threshold", "measured", "met"), t, strict=True))
                      for t in targets(res)]  # fmt: skip
    (s.out / "benchmark.json").write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res, s)
    (s.out / "benchmark.md").write_text(md)
    print(md)
    return res
