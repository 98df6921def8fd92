"""Training plumbing shared by the recipes: one run per output folder, checkpoints, the step loop.

* :func:`claim_output_dir` — the output-folder policy, applied before anything is trained or
  written: ``--output_dir`` must be a folder (not a file); a folder that already holds a run is
  refused unless the run is resumed (``--resume_from_checkpoint``, same options) or replaced
  (``--overwrite_output_dir``, which removes the old run's outputs first). ``run.json`` records
  which run a folder holds, so one run's checkpoints are never mixed with another's. The two
  flags are declared here once: :func:`resume_from_checkpoint_option`,
  :func:`overwrite_output_dir_option`.
* :func:`save_checkpoint` / :func:`load_checkpoint` — ``checkpoints/checkpoint-N`` written
  atomically; loading checks every file, key, shape and the run it belongs to, and turns any
  damage into one :class:`~recipes.common.RecipeError` (one line, exit status 2).
* :func:`train_steps` — the accumulate / clip / step / checkpoint loop of every recipe, with one
  resume formula (:func:`resume_position`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, atomic_dir, option, save_json

__all__ = [
    "RUN_CONTROL",
    "claim_output_dir",
    "commit_output_dir",
    "fast_forward",
    "find_checkpoint",
    "load_checkpoint",
    "make_accelerator",
    "overwrite_output_dir_option",
    "resume_from_checkpoint_option",
    "resume_position",
    "run_fingerprint",
    "save_checkpoint",
    "train_steps",
    "trainable_state_dict",
]

RUN_FILE = "run.json"
# options that may change when a run is resumed (where it lives, how long, how often to report
# or save); every other option must match the run in the folder
RUN_CONTROL = frozenset(
    {
        "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "progress",
        "checkpoints_total_limit",
        "checkpointing_steps", "max_steps", "epochs", "max_train_steps", "eval_steps",
        "eval_before", "validation_steps", "validation_prompts", "num_validation_images",
        "export_merged",
    }
)  # fmt: skip


# --------------------------------------------------------------------------- output folder


def resume_from_checkpoint_option() -> Any:
    """The ``--resume_from_checkpoint`` field of a recipe's config (resolved by
    :func:`find_checkpoint`, checked against the folder's run by :func:`claim_output_dir`)."""
    return option("", "'latest' or a checkpoint folder to resume from.")


def overwrite_output_dir_option(outputs: str) -> Any:
    """The ``--overwrite_output_dir`` field of a recipe's config (off by default); ``outputs``
    names, for ``--help``, what :func:`claim_output_dir` then removes from the folder."""
    return option(False, f"Replace the run already in --output_dir ({outputs}).")


def run_fingerprint(cfg: Any) -> tuple[str, dict[str, Any]]:
    """``(hash, options)`` of the options that define a run (all but :data:`RUN_CONTROL`)."""
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_CONTROL}
    options = json.loads(json.dumps(options, default=str))  # tuples -> lists, as saved
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    return digest, options


def claim_output_dir(cfg: Any, outputs: Sequence[str], *, write: bool = True) -> tuple[Path, str]:
    """Apply the output-folder policy to ``cfg.output_dir``; return ``(folder, run id)``.

    ``outputs`` are the names the recipe writes in the folder (``adapter``, ``checkpoints``,
    ``metrics.json``, ...). Refused, with nothing touched: a path that is a file; a folder
    holding another run's outputs without ``--overwrite_output_dir``; resuming a run whose
    options differ (named in the message). With ``--overwrite_output_dir`` the old outputs are
    removed (other files in the folder are kept). Writes ``run.json`` when ``write``.
    """
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--output_dir '{cfg.output_dir}' is a file; pass a folder")
    run_id, options = run_fingerprint(cfg)
    present = [n for n in (RUN_FILE, *outputs) if (out / n).exists()] if out.is_dir() else []
    resume = bool(getattr(cfg, "resume_from_checkpoint", ""))
    overwrite = bool(getattr(cfg, "overwrite_output_dir", False))
    if overwrite and getattr(cfg, "resume_from_checkpoint", "") == "latest":
        raise RecipeError(
            "--overwrite_output_dir removes the checkpoints --resume_from_checkpoint latest "
            "would continue from: pass only one"
        )
    if present and resume and not overwrite:
        saved = _read_run(out)
        if saved is None:
            raise RecipeError(
                f"--output_dir '{cfg.output_dir}' holds outputs ({', '.join(present)}) but no "
                f"{RUN_FILE}, so it cannot be resumed safely; pass --overwrite_output_dir or "
                "another folder"
            )
        if saved.get("run") != run_id:
            raise RecipeError(
                f"--resume_from_checkpoint: '{cfg.output_dir}' holds a run with other options "
                f"({_differences(saved.get('options', {}), options)}); resume with the same "
                "options, or pass --overwrite_output_dir or another --output_dir"
            )
    elif present and not overwrite:
        raise RecipeError(
            f"--output_dir '{cfg.output_dir}' already holds a run ({', '.join(present)}); "
            "pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to "
            "replace it, or another folder"
        )
    if write:
        if overwrite:
            for name in present:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        save_json({"run": run_id, "options": options}, out / RUN_FILE)
    return out, run_id


def commit_output_dir(cfg: Any, outputs: Sequence[str], accelerator: Any) -> Path:
    """After the checks of :func:`claim_output_dir` (every rank, before any work): the main
    process applies the policy (``--overwrite_output_dir`` removals) and writes ``run.json``;
    every rank waits for it. The other ranks do not check again: they would see the main
    process's fresh ``run.json`` as another run's and refuse."""
    if accelerator.is_main_process:
        claim_output_dir(cfg, outputs)
    accelerator.wait_for_everyone()
    return Path(cfg.output_dir).expanduser()


def _read_run(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    keys = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
    shown = [f"--{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


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

    root = Path(output_dir) / "checkpoints"
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
        found = _checkpoints(Path(output_dir) / "checkpoints")
        if not found:
            return None
        p = found[-1]
    else:
        p = Path(spec).expanduser()
        if not p.is_dir():
            raise RecipeError(f"--resume_from_checkpoint '{spec}' is not a checkpoint folder")
    state = _read_or_fail(p)[0]
    if run_id is not None and state.get("run", run_id) != run_id:
        raise _damaged(p, "it was written by another run (other options, see run.json)")
    return p


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
