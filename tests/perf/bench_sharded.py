"""A sorth adapter on a ~30M-parameter Llama: 1 process vs FSDP2 on 2 CPU processes (gloo).

Not a test (pytest does not collect it). Builds the model folder once, then runs
:mod:`tests.integrations.sharded_worker` under ``torchrun`` with 1 process (no sharding) and with
2 processes (``fully_shard_peft``) on the same global batches, and prints per run: the train
loop's wall time, the fraction of the base weights each rank holds, its base-weight bytes and its
peak resident memory (``ru_maxrss``), and the largest difference between the two adapters::

    python -m tests.perf.bench_sharded --steps 4 --out build/bench-sharded
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from tests.integrations.test_distributed import torchrun


def _model(folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=256,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/bench-sharded")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out)
    model = _model(out / "model", args.hidden, args.layers, args.vocab)
    flags = ["--steps", str(args.steps), "--seq", str(args.seq), "--global_batch", "4"]
    runs = {
        "1 process": torchrun(1, out / "one", model, "--engine", "none", *flags),
        "2 processes (FSDP2)": torchrun(2, out / "two", model, "--engine", "fsdp2", *flags),
    }
    total = sum(v.numel() for v in load_file(model / "model.safetensors").values())
    one, two = (load_file(out / r / "adapter/adapter_model.safetensors") for r in ("one", "two"))
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"base: {total / 1e6:.1f}M parameters ({4 * total / 2**20:.0f} MiB float32)")
    for name, r in runs.items():
        mib = 4 * total * r["local_fraction"] / 2**20
        rss = ", ".join(f"{m:.0f}" for m in r["peak_rss_mib"])
        print(
            f"{name}: {r['seconds']:.2f} s for {args.steps} steps, base weights per rank "
            f"{r['local_fraction']:.3f} ({mib:.0f} MiB), peak RSS per rank {rss} MiB"
        )
    print(f"largest |adapter(1 process) - adapter(2 processes)|: {diff:.2e}")
    print(json.dumps({k: {**v, "losses": None} for k, v in runs.items()}))


if __name__ == "__main__":
    main()
