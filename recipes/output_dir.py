"""The output-folder policy of the recipes: what may be written into ``--output_dir``.

Applied before anything is trained or written: ``--output_dir`` must be a folder (not a file); a
folder that already holds a run is refused unless the run is resumed (``--resume_from_checkpoint``,
same options) or replaced (``--overwrite_output_dir``, which removes the old run's outputs first).
``run.json`` records which run a folder holds, so one run's checkpoints are never mixed with
another's.

* :func:`claim_output_dir` — the checks (every rank, before any work) and, with ``write``, the
  removals and ``run.json``; :func:`commit_output_dir` — the main process's write, ranks synced.
* :func:`run_fingerprint` — the id of a run: a hash of every option but :data:`RUN_CONTROL`.
* The flags are declared once, in :mod:`recipes.options`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipes.common import RecipeError, save_json
from sorth.integrations.io import process_alive

__all__ = [
    "RUN_CONTROL",
    "RUN_FILE",
    "claim_output_dir",
    "commit_output_dir",
    "run_fingerprint",
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
    if not cfg.output_dir:  # "" would be the current folder: never written into by default
        raise RecipeError("--output_dir is required (see --help)")
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--output_dir '{cfg.output_dir}' is a file; pass a folder")
    run_id, options = run_fingerprint(cfg)
    # lexists: a symlinked output counts even when its target is gone (Note [overwrite])
    present = [n for n in (*outputs, RUN_FILE) if os.path.lexists(out / n)] if out.is_dir() else []
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
            _remove_outputs(out, present)
        save_json({"run": run_id, "options": options}, out / RUN_FILE)
    return out, run_id


_TRASH = ".overwritten-"


def _remove_outputs(out: Path, names: Sequence[str]) -> None:
    """Remove the old run's outputs ``names`` from ``out`` (``--overwrite_output_dir``).

    Note [overwrite]: the outputs are first *moved* into ``out/.overwritten-<pid>`` (``run.json``
    last), each with one rename, which moves a symlink itself (an output kept on another disk
    through a link is unlinked, never followed into its target). If any move fails, the ones
    already moved are put back and a one-line :class:`RecipeError` names the path: nothing is
    deleted before every output is out of the way. Only then is that folder removed (rmtree does
    not follow the links inside it); one left by a killed run is removed the next time. With no
    outputs (a new or empty folder) nothing is touched.
    """
    if not names:
        return
    for stale in out.glob(_TRASH + "*"):
        pid = stale.name.removeprefix(_TRASH)
        if not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    trash = out / f"{_TRASH}{os.getpid()}"
    moved: list[str] = []
    try:
        trash.mkdir(exist_ok=True)
        for name in names:
            os.replace(out / name, trash / name)
            moved.append(name)
    except OSError as err:
        for name in reversed(moved):
            os.replace(trash / name, out / name)
        with contextlib.suppress(OSError):
            trash.rmdir()
        failed = out / names[len(moved)] if len(moved) < len(names) else trash
        raise RecipeError(
            f"--overwrite_output_dir: cannot move the old run's '{failed}' out of the way "
            f"({err.strerror or err}); nothing was deleted"
        ) from None
    shutil.rmtree(trash, ignore_errors=True)


def commit_output_dir(cfg: Any, outputs: Sequence[str], accelerator: Any) -> Path:
    """After the checks of :func:`claim_output_dir` (every rank, before any work): the main
    process applies the policy (``--overwrite_output_dir`` removals) and writes ``run.json``;
    every rank waits for it. The main process checks again, on purpose: minutes of loading
    separate the two checks, and a run started meanwhile into the same folder may have claimed
    it (its ``run.json``) or written outputs that ``--overwrite_output_dir`` must remove too. The
    other ranks do not check again: they would see the main process's fresh ``run.json`` as
    another run's and refuse."""
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
