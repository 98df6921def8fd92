"""Atomic writes: a file or folder appears complete or not at all (temp next to it + os.replace).

Saving an adapter over an existing one with plain ``model.save_pretrained(folder)`` (PEFT's
behaviour) overwrites ``adapter_model.safetensors`` in place: an exception or a kill in the
middle destroys the previous adapter. :func:`save_pretrained_atomic` writes into a temporary
sibling folder and swaps it in only when the save finished::

    from sorth.integrations.io import save_pretrained_atomic

    save_pretrained_atomic(model, "runs/my-adapter")  # the old adapter stays until this succeeds

Temporary siblings are named ``.<name>.tmp-<pid>-…`` (and ``.<name>.old-<pid>`` during the swap).
A process killed mid-write (SIGKILL, power loss) leaves one behind; the next atomic write of the
same target removes those of processes that no longer run (:func:`clean_stale`), and if the kill
hit between the two renames of the swap, it puts the previous version back first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_file",
    "clean_stale",
    "process_alive",
    "save_pretrained_atomic",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
_LEGACY_AGE = 3600.0  # seconds: temp names without a pid (older sorth) count as stale after this


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``final`` left by processes that no longer run.

    Matches ``.<name>.tmp-*`` and ``.<name>.old-*`` next to ``final``. One whose pid is alive
    (another save in progress) is kept. If ``final`` is missing and a dead process's
    ``.old-<pid>`` copy exists (killed between the two renames of a swap), that copy is renamed
    back to ``final``. Returns the paths removed.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(?:(\d+)(?:-|$))?")
    removed = []
    for path in sorted(final.parent.iterdir()):
        m = pattern.match(path.name)
        if m is None:
            continue
        pid = int(m[2]) if m[2] else None
        if pid is None:  # legacy name: stale once old enough
            with contextlib.suppress(OSError):
                if time.time() - path.lstat().st_mtime < _LEGACY_AGE:
                    continue
        elif pid == os.getpid() or process_alive(pid):
            continue
        if m[1] == "old" and not final.exists() and path.is_dir():
            os.replace(path, final)  # roll the interrupted swap back
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _through_links(final: str | os.PathLike) -> Path:
    """``final``, or the path a symlink ``final`` points to (through every link in the chain).

    Note [atomic through a link]: ``os.replace`` renames a link itself. Swapping a new folder in
    at a link's path left the target stale, a real folder where the link was, and the link
    renamed to ``.<name>.old-<pid>`` (``rmtree`` refuses links); so the swap happens at the
    target, next to it (same filesystem), and the link keeps pointing at the new version.
    """
    final = Path(final)
    return Path(os.path.realpath(final)) if final.is_symlink() else final


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success it replaces ``final`` at once.

    On any exception the temporary folder is removed and ``final`` is left untouched. Stale
    temporary siblings of earlier, killed writes are cleaned first (:func:`clean_stale`). A
    symlink ``final`` stays a link: the folder it points to is replaced (Note [atomic through a
    link]).
    """
    final = _through_links(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``final``; on success ``os.replace`` it into place
    (a symlink ``final``: the file it points to, Note [atomic through a link])."""
    final = _through_links(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    fd, name = tempfile.mkstemp(
        prefix=f".{final.name}.tmp-{os.getpid()}-", suffix=final.suffix, dir=final.parent
    )
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def save_pretrained_atomic(obj: Any, folder: str | os.PathLike, **kwargs: Any) -> Path:
    """``obj.save_pretrained(folder, **kwargs)``, atomically: the old folder stays until it is done.

    Works for anything with ``save_pretrained`` (a ``PeftModel`` with a sorth adapter, a
    transformers model, a tokenizer, a diffusers pipeline). The folder is replaced as a whole,
    so afterwards it holds exactly what this save wrote. Returns ``Path(folder)``.
    """
    with atomic_dir(folder) as tmp:
        obj.save_pretrained(tmp, **kwargs)
    return Path(folder)
