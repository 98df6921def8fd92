"""Sharded training of sorth adapters: FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3.

A base model too large for one device is split across ``N`` processes: FSDP2 keeps ``1/N`` of
every parameter on each rank (a ``DTensor`` sharded on dim 0) and all-gathers one transformer
block at a time for its forward and backward; the adapter is sharded with its block. Launch
with ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on CUDA)::

    from sorth.integrations.distributed import (
        clip_grad_norm_, fully_shard_peft, init_distributed, save_sharded_adapter)

    mesh = init_distributed()
    model = get_peft_model(base, SOrthConfig(target_modules=[...], block_size=16))
    model = fully_shard_peft(model, mesh=mesh)  # per block + root; bf16 params on CUDA
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ...  # loss.backward(); clip_grad_norm_(params, 1.0); opt.step()
    save_sharded_adapter(model, "runs/adapter")  # a normal PEFT folder, written by rank 0

* :func:`fully_shard_peft` — activation checkpointing (optional), ``fully_shard`` on every
  transformer block and the root, mixed precision (bf16 parameters on CUDA, float32 on CPU,
  gradients reduced in float32). Add the adapter *before* sharding: sorth refuses a target
  that is already a shard.
* :func:`clip_grad_norm_` — the global gradient norm over sharded gradients.
* :func:`gather_adapter_state_dict` / :func:`save_sharded_adapter` — the adapter (every adapter
  of the model, ``modules_to_save`` heads included) gathered from FSDP2 shards or ZeRO-3
  partitions, saved as ``adapter_model.safetensors`` + ``adapter_config.json`` that
  ``PeftModel.from_pretrained`` loads on one process.
* :func:`save_sharded_checkpoint` / :func:`load_sharded_checkpoint` — resumable
  ``torch.distributed.checkpoint`` checkpoints: each rank writes its shards of the trainable
  parameters and optimizer state, plus its RNG state; the base weights are not written.
* :func:`fsdp1_auto_wrap_policy` — for the older ``FullyShardedDataParallel`` (FSDP1).
* :func:`reset_sorth_buffers` — after deferred (meta-device) initialisation.

Note [gloo average]: FSDP2 averages gradients with ``ReduceOp.AVG``. pytorch/pytorch#162338
reported that gloo summed instead (gradients ``N`` times too large); on torch 2.13 gloo
averages (measured: 2-process gradients equal 1-process ones, tests/integrations). On gloo,
:func:`fully_shard_peft` still asks FSDP2 for a sum followed by an explicit division by ``N``
(``set_force_sum_reduction_for_comms``), which is correct whatever gloo does with ``AVG``.

Merging needs the whole weight: inside a sharded run sorth refuses it in one line (Note
[sharded merge] in :mod:`sorth.tuner.sharding`); merge the saved adapter on one process
(``sorth merge``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sorth.errors import SOrthValueError
from sorth.integrations._extras import require
from sorth.integrations.io import atomic_dir

require("sorth.integrations.distributed", "peft", "peft")

__all__ = [
    "STATE_FILE",
    "DistributedSetupError",
    "block_classes",
    "clip_grad_norm_",
    "fsdp1_auto_wrap_policy",
    "fully_shard_peft",
    "gather_adapter_state_dict",
    "init_distributed",
    "load_sharded_checkpoint",
    "reset_sorth_buffers",
    "save_sharded_adapter",
    "save_sharded_checkpoint",
]

STATE_FILE = "state.json"  # the step and the caller's state in a sharded checkpoint


class DistributedSetupError(SOrthValueError):
    """A sharded set-up that cannot work (no process group, nothing to shard, int8 base...)."""


# --------------------------------------------------------------------------- set-up


def init_distributed(backend: str | None = None) -> Any:
    """Join the process group ``torchrun`` describes and return a 1-D device mesh of all ranks.

    ``backend`` defaults to ``"nccl"`` when CUDA is available (each rank then uses the GPU
    ``LOCAL_RANK``) and ``"gloo"`` otherwise. An already initialised group is reused.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise DistributedSetupError(
                "no process group and no RANK / WORLD_SIZE in the environment: start the script "
                "with `torchrun --nproc_per_node N script.py`."
            )
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return init_device_mesh("cuda" if cuda else "cpu", (dist.get_world_size(),))


def block_classes(model: Any, layer_cls: Iterable[type | str] | None = None) -> tuple[type, ...]:
    """The transformer-block classes of ``model`` (each instance becomes one FSDP unit).

    ``layer_cls`` (classes or class names) overrides the default, which is the
    ``_no_split_modules`` of the transformers model inside (e.g. ``LlamaDecoderLayer``), the same
    list accelerate's transformer-based wrap policy reads. Only classes present in ``model``
    are returned; none found is a :class:`DistributedSetupError`.
    """
    if layer_cls is None:
        names = set()
        for module in model.modules():
            names.update(getattr(module, "_no_split_modules", None) or ())
    else:
        names = {c if isinstance(c, str) else c.__name__ for c in layer_cls}
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise DistributedSetupError(
            f"no transformer block to shard in {type(model).__name__} (looked for "
            f"{sorted(names) or 'the _no_split_modules of a transformers model'}): pass "
            "layer_cls=(YourBlockClass,)."
        )
    return tuple(sorted(found, key=lambda c: c.__name__))


def _check_shardable(model: Any) -> None:
    import torch

    from sorth.tuner.sharding import sharding_of

    for name, p in model.named_parameters():
        if sharding_of(p) is not None:
            raise DistributedSetupError(
                f"parameter {name!r} is already sharded: call fully_shard_peft once, on a model "
                "that is not sharded yet."
            )
        if type(p).__name__ == "Int8Params" or (p.dtype == torch.int8 and hasattr(p, "SCB")):
            raise DistributedSetupError(
                f"parameter {name!r} is a bitsandbytes int8 weight (load_in_8bit), which FSDP2 "
                "cannot shard (its scales are lost in the all-gather); supported under FSDP2: "
                "full-precision bases and 4-bit bases (load_in_4bit, with bnb_4bit_quant_storage "
                "set to the compute dtype); for an 8-bit base use data parallelism "
                "(accelerate launch) instead."
            )


def fully_shard_peft(
    model: Any,
    *,
    mesh: Any = None,
    layer_cls: Iterable[type | str] | None = None,
    param_dtype: Any = "auto",
    reduce_dtype: Any = None,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> Any:
    """Shard a PEFT model (sorth adapters or any PEFT method) with FSDP2, block by block.

    Applies, in this order: non-reentrant activation checkpointing to every block (optional:
    the block's activations are recomputed in the backward instead of kept), ``fully_shard``
    to every block (:func:`block_classes`) and then to the whole model (the root keeps the
    embeddings, the final norm and the head).

    Note [checkpointed forward]: the checkpoint wraps each block's ``forward`` in place, so
    module names stay as they are. ``torch``'s ``checkpoint_wrapper`` inserts a
    ``_checkpoint_wrapped_module`` level that the state dict hides, and PEFT 0.21.2 matches
    adapter modules by name against the state dict: under that wrapper ``save_pretrained``
    writes an empty adapter.

    Args:
        model: a ``PeftModel`` (or any ``nn.Module``) whose adapters are already added.
        mesh: a 1-D device mesh (:func:`init_distributed`); default: all ranks.
        layer_cls: block classes or names, see :func:`block_classes`.
        param_dtype: the dtype of the gathered parameters in forward / backward. ``"auto"``:
            ``torch.bfloat16`` on CUDA, float32 (no cast) on CPU; ``None``: no cast. The
            sharded master copy and the optimizer state keep the parameters' own dtype.
        reduce_dtype: the dtype gradients are averaged in (default: float32 whenever
            ``param_dtype`` casts, else the gradients' dtype).
        activation_checkpointing: recompute each block's activations in the backward.
        reshard_after_forward: free the gathered block after its forward (``False`` keeps it
            until the backward: faster, more memory).

    Returns:
        ``model``, sharded in place (an ``FSDPModule``). Outside forward / backward every
        parameter is a ``DTensor`` holding this rank's rows.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.utils.checkpoint import checkpoint

    if not dist.is_initialized():
        raise DistributedSetupError(
            "fully_shard_peft needs a process group: call init_distributed() first (under "
            "torchrun)."
        )
    _check_shardable(model)
    classes = block_classes(model, layer_cls)
    if param_dtype == "auto":
        param_dtype = torch.bfloat16 if torch.cuda.is_available() else None
    if reduce_dtype is None and param_dtype is not None:
        reduce_dtype = torch.float32
    blocks = [m for m in model.modules() if isinstance(m, classes)]
    if activation_checkpointing:
        for block in blocks:  # Note [checkpointed forward]
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    kwargs = {"mesh": mesh, "mp_policy": mp}
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    group = mesh.get_group() if mesh is not None else None
    if dist.get_backend(group) == "gloo":  # Note [gloo average]
        for module in model.modules():
            if hasattr(module, "set_force_sum_reduction_for_comms"):
                module.set_force_sum_reduction_for_comms(True)
    return model


def fsdp1_auto_wrap_policy(model: Any, layer_cls: Iterable[type | str] | None = None) -> Any:
    """An ``auto_wrap_policy`` for ``FullyShardedDataParallel`` (FSDP1): one unit per block.

    Use it with ``use_orig_params=True``. A sorth layer reads its adapter parameters and its
    base weight inside its own forward, so the adapter must live in the same FSDP unit as the
    layer: wrapping ``sorth_in`` / ``sorth_out`` / ``sorth_s`` on their own (their forward is
    never called, so FSDP1 never gathers them) fails, and PEFT's ``fsdp_auto_wrap_policy``
    with ``use_orig_params=False`` stops at FSDP's "Must flatten tensors with uniform
    ``requires_grad``" (a block holds frozen and trainable parameters). FSDP2
    (:func:`fully_shard_peft`) has neither limit, and only FSDP2 / ZeRO models can be saved
    with :func:`save_sharded_adapter`.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    return functools.partial(
        transformer_auto_wrap_policy, transformer_layer_cls=set(block_classes(model, layer_cls))
    )


def reset_sorth_buffers(model: Any) -> int:
    """Recompute the permutation buffers of every sorth rotation in ``model`` (after
    ``to_empty``; Note [meta init] in :mod:`sorth.parametrizations`). Returns how many."""
    from sorth.parametrizations import GSOrthogonal

    rotations = [m for m in model.modules() if isinstance(m, GSOrthogonal)]
    for rotation in rotations:
        rotation.reset_buffers()
    return len(rotations)


# --------------------------------------------------------------------------- training


def clip_grad_norm_(parameters: Iterable[Any], max_norm: float, norm_type: float = 2.0) -> Any:
    """Scale the gradients so that their global norm is at most ``max_norm``; return the norm.

    The norm is over the whole (unsharded) gradients: for ``DTensor`` gradients each rank's
    partial norm is reduced across ranks, so every rank clips by the same factor, exactly as a
    1-process run with the same gradients.
    """
    import torch

    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# --------------------------------------------------------------------------- the adapter


def _adapter_keys(model: Any, keys: Iterable[str]) -> list[str]:
    """State-dict keys that may belong to a saved adapter (PEFT picks the final set)."""
    prefix = getattr(getattr(model, "base_model", None), "prefix", None) or "\0"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k for k in keys if prefix in k or "modules_to_save" in k or k in trainable]


def _zero3_gathered(params: list[Any]) -> Any:
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _is_fsdp1(model: Any) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def gather_adapter_state_dict(model: Any, *, rank0_only: bool = True) -> dict[str, Any]:
    """The adapter tensors of a sharded model, whole, on the CPU (a collective: call it on
    every rank).

    Keys are the model's own state-dict keys (as ``model.state_dict()`` on one process), so
    the result can be passed to ``model.save_pretrained(folder, state_dict=...)``. FSDP2
    shards are all-gathered (every adapter, trainable or not); ZeRO-3 partitions of the
    adapter are gathered with ``deepspeed.zero.GatheredParameters`` (the base stays
    partitioned); under FSDP1 the trainable parameters are gathered. With ``rank0_only`` the
    other ranks get ``{}``.
    """
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    keep = rank == 0 or not rank0_only
    if _is_fsdp1(model):
        raise DistributedSetupError(
            "gathering the adapter of an FSDP1 (FullyShardedDataParallel) model is not supported "
            "(PEFT finds no adapter keys under FSDP1's wrapped module names); shard with FSDP2 "
            "(fully_shard_peft) to save the adapter from shards."
        )
    named = dict(model.named_parameters())
    keys = _adapter_keys(model, model.state_dict().keys())
    partitioned = [named[k] for k in keys if hasattr(named.get(k), "ds_id")]
    with _zero3_gathered(partitioned):
        state = model.state_dict()
        out = {}
        for key in keys:
            value = state[key]
            if hasattr(value, "full_tensor"):
                value = value.full_tensor()
            if keep:
                out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def save_sharded_adapter(
    model: Any, folder: str | os.PathLike, *, tokenizer: Any = None, **kwargs: Any
) -> Path:
    """Gather the adapter (:func:`gather_adapter_state_dict`) and ``save_pretrained`` it on
    rank 0, atomically; every rank returns once the folder exists.

    The folder is a normal PEFT adapter (``adapter_model.safetensors`` +
    ``adapter_config.json``): ``PeftModel.from_pretrained(base, folder)`` on one process gives
    the outputs of the sharded model, and ``sorth merge`` merges it. ``kwargs`` go to
    ``save_pretrained``.
    """
    import torch.distributed as dist

    state = gather_adapter_state_dict(model)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp, state_dict=state, **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    if dist.is_initialized():
        dist.barrier()
    return Path(folder)


# --------------------------------------------------------------------------- checkpoints


def _state_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def save_sharded_checkpoint(
    folder: str | os.PathLike, model: Any, optimizer: Any, *, state: dict[str, Any] | None = None
) -> Path:
    """Write a resumable checkpoint of a FSDP2 run with ``torch.distributed.checkpoint``.

    Every rank writes its shards of the trainable parameters and of the optimizer state
    (the frozen base weights are not written: they come from the base model) and its RNG
    state (``rng-<rank>.pt``: dropout masks continue as in an uninterrupted run); rank 0
    writes ``state.json`` (``state`` plus the world size). The folder appears atomically:
    a run killed while saving leaves the previous checkpoint as it was. A collective.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = dist.get_rank(), dist.get_world_size()
    model_state, optim_state = get_state_dict(model, optimizer, options=_state_options())
    with contextlib.ExitStack() as stack:
        name = [str(stack.enter_context(atomic_dir(folder))) if rank == 0 else None]
        dist.broadcast_object_list(name, src=0)
        tmp = Path(name[0])
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
        torch.save(torch.get_rng_state(), tmp / f"rng-{rank}.pt")
        dist.barrier()
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({**(state or {}), "world_size": world}))
    dist.barrier()  # rank 0 has swapped the folder in
    return Path(folder)


def load_sharded_checkpoint(folder: str | os.PathLike, model: Any, optimizer: Any) -> dict:
    """Load a :func:`save_sharded_checkpoint` folder into a model sharded the same way and its
    optimizer; return the saved ``state``. The RNG state is restored when the world size is the
    one saved. A collective."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        raise DistributedSetupError(
            f"{folder} is not a sharded checkpoint (no {STATE_FILE}); pass a folder written by "
            "save_sharded_checkpoint."
        )
    state = json.loads((folder / STATE_FILE).read_text())
    model_state, optim_state = get_state_dict(model, optimizer, options=_state_options())
    both = {"model": model_state, "optimizer": optim_state}
    dcp.load(both, checkpoint_id=str(folder))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=both["model"],
        optim_state_dict=both["optimizer"],
        options=_state_options(),
    )
    rng = folder / f"rng-{dist.get_rank()}.pt"
    if state.get("world_size") == dist.get_world_size() and rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return state
