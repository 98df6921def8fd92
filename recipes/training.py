"""Training plumbing shared by the recipes: the accelerator, checkpoints, the step loop.

* :func:`make_accelerator` — the run's ``accelerate.Accelerator``, every process seeded alike.
* :func:`save_checkpoint` / :func:`load_checkpoint` — ``checkpoints/checkpoint-N`` written
  atomically; loading checks every file, key, shape and the run it belongs to, and turns any
  damage into one :class:`~recipes.common.RecipeError` (one line, exit status 2).
* :func:`train_steps` — the accumulate / clip / step / checkpoint loop of every recipe, with one
  resume formula (:func:`resume_position`).

The output-folder policy (``run.json``, ``claim_output_dir``, ``commit_output_dir``) is
:mod:`recipes.output_dir`; the ``--resume_from_checkpoint`` / ``--overwrite_output_dir`` flags
are declared in :mod:`recipes.options`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, atomic_dir

__all__ = [
    "fast_forward",
    "find_checkpoint",
    "load_checkpoint",
    "make_accelerator",
    "resume_position",
    "save_checkpoint",
    "train_steps",
    "trainable_state_dict",
]


# --------------------------------------------------------------------------- accelerator


def make_accelerator(
    *, mixed_precision: str = "no", gradient_accumulation_steps: int = 1, seed: int = 0
) -> Any:
    """Create the run's ``accelerate.Accelerator`` and seed every process identically.

    Device and dtype are decided here, once: ``accelerate launch`` (DDP, FSDP, DeepSpeed) or a
    plain ``python`` run on one device. fp16 needs a GPU; bf16 works on CPU.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError("--mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    # Note [cpu ranks]: with no GPU, cpu=True lets `accelerate launch --multi_gpu
    # --num_processes N` (torchrun) form a gloo process group (DistributedType.MULTI_CPU);
    # accelerate 1.15's `--cpu` flag alone starts a single process unless MPI is set up.
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )
    set_seed(seed)
    return accelerator


# --------------------------------------------------------------------------- checkpoints


def trainable_state_dict(model: Any) -> dict[str, Any]:
    """Detached CPU copies of every parameter with ``requires_grad`` (the adapter + heads)."""
    return {
        name: p.detach().to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    step: int,
    output_dir: str | os.PathLike,
    *,
    run_id: str,
    total_limit: int | None = None,
    extra: dict[str, Any] | None = None,
    full_state: bool = False,
) -> Path:
    """Save ``checkpoints/checkpoint-{step}`` atomically (main process only), then sync ranks.

    Holds the trainable parameters (or, with ``full_state``, the whole ``state_dict`` including
    buffers) as safetensors, the optimizer state and ``state.json`` (step, run id, ``extra``);
    older checkpoints beyond ``total_limit`` are pruned.
    """
    import torch
    from safetensors.torch import save_file

    root = Path(output_dir).expanduser() / "checkpoints"
    final = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if full_state:
            tensors = {k: v.detach().cpu().contiguous() for k, v in unwrapped.state_dict().items()}
        else:
            tensors = trainable_state_dict(unwrapped)
        state = {"step": step, "run": run_id, "full_state": full_state, **(extra or {})}
        with atomic_dir(final) as tmp:
            save_file(tensors, tmp / "model.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state))
        if total_limit:
            for old in _checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def find_checkpoint(
    output_dir: str | os.PathLike, spec: str | None, *, run_id: str | None = None
) -> Path | None:
    """Resolve ``--resume_from_checkpoint``: ``None``, ``latest`` or a checkpoint folder.

    The files of the checkpoint found are read once here (cheaply, before any model is loaded),
    so a damaged one is reported at once; with ``run_id`` it must belong to that run.
    """
    if not spec:
        return None
    if spec == "latest":
        found = _checkpoints(Path(output_dir).expanduser() / "checkpoints")
        if not found:
            return None
        p = found[-1]
    else:
        p = Path(spec).expanduser()
        if not p.is_dir():
            raise RecipeError(f"--resume_from_checkpoint '{spec}' is not a checkpoint folder")
        _refuse_a_folder_of_checkpoints(spec, p)
    state = _read_or_fail(p)[0]
    if run_id is not None and state.get("run", run_id) != run_id:
        raise _damaged(p, "it was written by another run (other options, see run.json)")
    return p


def _refuse_a_folder_of_checkpoints(spec: str, p: Path) -> None:
    """``--resume_from_checkpoint OUT/checkpoints`` (or ``OUT``): the folder that *holds* the
    checkpoints, an easy slip. The damaged-checkpoint message would advise deleting it, which
    would delete every checkpoint; name the right argument instead."""
    if (p / "state.json").exists():
        return
    found = _checkpoints(p) or _checkpoints(p / "checkpoints")
    if found:
        raise RecipeError(
            f"--resume_from_checkpoint '{spec}' holds {len(found)} checkpoint(s), it is not one: "
            f"pass --resume_from_checkpoint latest (with this --output_dir) or the newest, "
            f"{found[-1]}"
        )
    if not (p.name.startswith("checkpoint-") and p.name[11:].isdigit()):  # not a checkpoint
        raise RecipeError(
            f"--resume_from_checkpoint '{spec}' is not a checkpoint folder (no state.json): pass "
            "--resume_from_checkpoint latest or an OUTPUT_DIR/checkpoints/checkpoint-N folder"
        )


def load_checkpoint(path: Path, model: Any, optimizer: Any, *, run_id: str) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` folder into ``model``/``optimizer``; return its state.

    Every kind of damage — a missing or truncated file, unreadable ``state.json``, missing or
    extra tensors, other shapes (another width or block size), an optimizer state of another
    shape, a checkpoint of another run — raises :class:`RecipeError` naming the checkpoint and
    the problem. ``model`` and ``optimizer`` are only changed once everything has been read and
    checked.
    """
    state, tensors, opt_state = _read_or_fail(path)
    if state.get("run", run_id) != run_id:
        raise _damaged(path, "it was written by another run (other options, see run.json)")
    expected = (
        model.state_dict() if state.get("full_state") else trainable_state_dict(model)
    )  # name -> tensor
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise _damaged(path, f"its tensors do not match this model ({what})")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise _damaged(
                path,
                f"tensor {key} has shape {tuple(value.shape)}, this model expects "
                f"{tuple(expected[key].shape)} (another width, block size or method?)",
            )
    saved_groups = opt_state.get("param_groups", [])
    now_groups = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in now_groups]:
        raise _damaged(path, "its optimizer state is for other parameters")
    try:
        model.load_state_dict(tensors, strict=False)
        optimizer.load_state_dict(opt_state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise _damaged(path, " ".join(str(err).split())[:200]) from None
    return state


def _read_or_fail(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    try:
        return _read_checkpoint(path)
    except RecipeError:
        raise
    except Exception as err:  # torch.load / safetensors raise many types for damaged files
        raise _damaged(path, f"{type(err).__name__}: {' '.join(str(err).split())}") from None


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import torch
    from safetensors.torch import load_file

    for name in ("state.json", "model.safetensors", "optimizer.pt"):
        if not (path / name).is_file():
            raise _damaged(path, f"it has no {name}")
    try:
        state = json.loads((path / "state.json").read_text())
    except ValueError as err:
        raise _damaged(path, f"state.json is not valid JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _damaged(path, "state.json has no integer 'step'")
    tensors = load_file(path / "model.safetensors")
    opt_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    if not isinstance(opt_state, dict) or "param_groups" not in opt_state:
        raise _damaged(path, "optimizer.pt is not an optimizer state")
    return state, tensors, opt_state


def _damaged(path: Path, reason: str) -> RecipeError:
    return RecipeError(
        f"cannot resume from checkpoint {path}: {reason}; delete it, or resume from another "
        "one with --resume_from_checkpoint PATH"
    )


def fast_forward(scheduler: Any, steps: int) -> None:
    """Put a ``LambdaLR`` at ``steps`` when resuming (closed form, no optimizer step needed)."""
    scheduler.last_epoch = steps
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(steps)


# --------------------------------------------------------------------------- the loop


def steps_per_epoch(batches: int, accumulation: int) -> int:
    """Optimizer steps in one pass over ``batches`` micro-batches.

    accelerate syncs at the end of the data loader too (``sync_with_dataloader``), so a pass is
    ``⌈batches / accumulation⌉`` steps, the last one possibly over fewer micro-batches.
    """
    return max(1, math.ceil(batches / accumulation))


def resume_position(step: int, batches: int, accumulation: int) -> tuple[int, int]:
    """``(epoch, micro-batches to skip)`` after ``step`` optimizer steps (the one formula)."""
    epoch, done = divmod(step, steps_per_epoch(batches, accumulation))
    return epoch, done * accumulation


def train_steps(
    accelerator: Any,
    models: Iterable[Any],
    optimizer: Any,
    loader: Any,
    *,
    loss_fn: Callable[[Any], Any],
    params: Sequence[Any],
    start: int,
    total: int,
    accumulation: int = 1,
    max_grad_norm: float = 0.0,
    scheduler: Any = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    timer: Any = None,
) -> int:
    """Run optimizer steps ``start + 1 … total``; return the last step reached.

    Per micro-batch: ``loss_fn(batch)`` under ``accelerator.accumulate(*models)``, backward,
    clipping to ``max_grad_norm`` (0: off) when gradients sync, ``optimizer.step()``. After each
    optimizer step: ``scheduler.step()`` (if given), then ``on_step(step, loss)`` (evaluation,
    checkpoints). ``on_epoch_start(epoch)`` runs before each pass over ``loader``; a resumed run
    skips the micro-batches already seen in its epoch (:func:`resume_position`).
    """
    models = list(models)
    step = start
    while step < total:
        epoch, skip = resume_position(step, len(loader), accumulation)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        if timer is not None:
            timer.start()
        for batch in batches:
            with accelerator.accumulate(*models):
                loss = loss_fn(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and max_grad_norm:
                    accelerator.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if scheduler is not None:
                scheduler.step()
            if timer is not None:
                timer.stop()
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
            if step >= total:
                break
            if timer is not None:
                timer.start()
    return step
