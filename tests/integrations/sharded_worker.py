"""One training run of a tiny Llama with a sorth adapter, under torchrun (tests/integrations).

Every run sees the same global batches (``--global_batch`` rows per step, seeded) and each of
the ``N`` ranks trains on rows ``rank::N``, so a run on ``N`` processes and one on a single
process compute the same averaged gradients. ``--engine``:

* ``none``: no sharding (the 1-process reference),
* ``fsdp2``: :func:`sorth.integrations.distributed.fully_shard_peft`,
* ``fsdp2-raw``: a hand-written ``fully_shard`` per decoder layer + root (nothing from sorth),
* ``fsdp1``: ``FullyShardedDataParallel`` with ``fsdp1_auto_wrap_policy``,
* ``zero2`` / ``zero3``: ``deepspeed.initialize`` (``DS_ACCELERATOR=cpu``).

Rank 0 writes ``result.json`` (losses, the fraction of the base weights each rank holds, the
step-0 gradients' norm, the merge refusal, peak memory per rank) and the adapter folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

import sorth  # noqa: F401  (registers the PEFT method)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engine", default="none")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--global_batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--max_grad_norm", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--side", default="both")
    p.add_argument("--quant", default="")
    p.add_argument("--ac", action="store_true")
    p.add_argument("--checkpoint_at", type=int, default=0)
    p.add_argument("--kill_after_checkpoint", action="store_true")
    p.add_argument("--resume", default="")
    return p.parse_args()


def _model(args: argparse.Namespace):
    from peft import get_peft_model
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    from sorth import SOrthConfig

    kwargs = {}
    if args.quant:
        kwargs = {
            "device_map": "cpu",
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=args.quant == "4bit",
                load_in_8bit=args.quant == "8bit",
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.float32,
                bnb_4bit_quant_storage=torch.float32,
            ),
        }
    base = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, **kwargs)
    config = SOrthConfig(
        target_modules=["q_proj", "v_proj", "down_proj"],
        block_size=8,
        side=args.side,
        module_dropout=args.dropout,
    )
    model = get_peft_model(base, config)
    model.add_adapter("second", SOrthConfig(target_modules=["k_proj"], block_size=8))
    return model


def _batches(args: argparse.Namespace, vocab: int) -> list[torch.Tensor]:
    """``--steps`` global batches drawn from a pool of two (the loss falls within 4 steps)."""
    g = torch.Generator().manual_seed(1234)
    pool = [torch.randint(4, vocab, (args.global_batch, args.seq), generator=g) for _ in range(2)]
    return [pool[i % 2] for i in range(args.steps)]


def _shard(args: argparse.Namespace, model, rank: int):
    from sorth.integrations import distributed

    if args.engine == "fsdp2":
        return distributed.fully_shard_peft(model, activation_checkpointing=args.ac)
    if args.engine == "fsdp2-raw":
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        return fully_shard(model)
    if args.engine == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        policy = distributed.fsdp1_auto_wrap_policy(model)
        return FullyShardedDataParallel(
            model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
        )
    return model


def _local_fraction(model) -> float:
    """Elements of the frozen base weights this rank holds / their global count."""
    local = total = 0
    for name, p in model.named_parameters():
        if "sorth_" in name:
            continue
        n = p.numel() if not hasattr(p, "ds_shape") else p.ds_shape.numel()
        total += n
        if hasattr(p, "to_local"):
            local += p.to_local().numel()
        elif hasattr(p, "ds_tensor"):
            local += p.ds_tensor.numel()
        else:
            local += p.numel()
    return local / total


def main() -> None:
    args = _args()
    out = Path(args.out)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.engine.startswith("zero"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = _model(args)
    vocab = model.config.vocab_size
    engine = _shard(args, model, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    if args.engine.startswith("zero"):
        import deepspeed

        ds_config = {
            "train_micro_batch_size_per_gpu": args.global_batch // world,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": args.max_grad_norm,
            "zero_optimization": {"stage": int(args.engine[-1])},
        }
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config
        )
    from sorth.integrations import distributed

    start, losses, grad_norm0 = 0, [], None
    torch.manual_seed(100 + rank)  # dropout masks: per rank (the checkpoint restores the state)
    if args.resume:
        start = distributed.load_sharded_checkpoint(args.resume, engine, optimizer)["step"]
    fraction = None if args.engine == "fsdp1" else _local_fraction(model)
    t0 = time.perf_counter()
    for step, batch in enumerate(_batches(args, vocab)):
        if step < start:
            continue
        x = batch[rank::world]
        loss = engine(input_ids=x, labels=x).loss
        if args.engine.startswith("zero"):
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            if step == 0:
                grads = [p.grad for p in params if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads)
                grad_norm0 = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if args.engine == "fsdp1":
                engine.clip_grad_norm_(args.max_grad_norm)
            else:
                distributed.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if args.checkpoint_at and step + 1 == args.checkpoint_at:
            distributed.save_sharded_checkpoint(
                out / "checkpoint", engine, optimizer, state={"step": step + 1}
            )
            if args.kill_after_checkpoint:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: as if the machine died
    seconds = time.perf_counter() - t0
    refusal = ""
    if world > 1 and args.engine in ("fsdp2", "fsdp2-raw", "zero3"):
        try:
            model.merge_adapter()
        except ValueError as err:
            refusal = str(err)
    if args.engine == "fsdp1":
        try:
            distributed.save_sharded_adapter(engine, out / "adapter")
        except distributed.DistributedSetupError as err:
            refusal = str(err)
    else:
        saved = model if args.engine.startswith("zero") else engine
        distributed.save_sharded_adapter(saved, out / "adapter", selected_adapters=["default"])
    if args.engine == "fsdp2" and world > 1 and not args.resume:
        from accelerate import Accelerator

        from sorth.integrations.accelerate import save_adapter

        save_adapter(Accelerator(cpu=True), model, out / "adapter-accelerate")
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0])
    peaks = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(peaks, peak)
    if rank == 0:
        result = {
            "losses": losses,
            "local_fraction": fraction,
            "grad_norm0": grad_norm0,
            "merge_refusal": refusal,
            "peak_rss_mib": [float(p) for p in peaks],
            "seconds": seconds,
            "world_size": world,
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
