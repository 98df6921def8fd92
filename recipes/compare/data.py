"""A fixed, stratified train / validation / test split of the SpamAssassin corpus.

The split depends only on ``split_seed`` (not on the training seed), so every method and seed
sees the same e-mails: each class is shuffled and cut at the same fractions, then the optional
caps subsample validation / test, again per class. Files are JSONL ``{"text", "label"}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from recipes.common import RecipeError, atomic_file
from recipes.spam import load_spam_assassin

__all__ = ["stratified_split", "write_splits"]

Rows = list[tuple[str, int]]


def _cap(members: list[Rows], cap: int) -> list[Rows]:
    """Keep ``cap`` rows in total, split over the classes in proportion (0: keep all)."""
    total = sum(len(m) for m in members)
    if not cap or cap >= total:
        return members
    return [m[: max(1, round(cap * len(m) / total))] for m in members]


def stratified_split(
    rows: Rows,
    fractions: tuple[float, float],
    seed: int,
    caps: tuple[int, int] = (0, 0),
) -> tuple[Rows, Rows, Rows]:
    """``(train, val, test)``: per class, the first ``1 - val - test`` share trains.

    Args:
        rows: ``(text, label)`` pairs.
        fractions: ``(val, test)`` shares of each class.
        seed: shuffles each class (and the final order) reproducibly.
        caps: at most this many validation / test rows (0: no cap), per-class proportional.
    """
    val_frac, test_frac = fractions
    if not (val_frac > 0 and test_frac > 0 and val_frac + test_frac < 1):
        raise RecipeError(f"split fractions val={val_frac}, test={test_frac} must be > 0, sum < 1")
    rng = random.Random(seed)
    parts: tuple[list[Rows], list[Rows], list[Rows]] = ([], [], [])
    for label in sorted({y for _, y in rows}):
        members = [r for r in rows if r[1] == label]
        rng.shuffle(members)
        n_val, n_test = round(len(members) * val_frac), round(len(members) * test_frac)
        if min(n_val, n_test, len(members) - n_val - n_test) < 1:
            raise RecipeError(f"class {label} has only {len(members)} rows: too few to split")
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    train = [r for m in parts[0] for r in m]
    val = [r for m in _cap(parts[1], caps[0]) for r in m]
    test = [r for m in _cap(parts[2], caps[1]) for r in m]
    for split in (train, val, test):
        rng.shuffle(split)
    return train, val, test


def _write(rows: Rows, path: Path) -> str:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return str(path)


def write_splits(
    data_dir: str, out: Path, fractions: tuple[float, float], seed: int, caps: tuple[int, int]
) -> dict[str, str | int]:
    """Load the corpus, split it, write ``train/val/test.jsonl`` into ``out``; describe them."""
    rows = load_spam_assassin(data_dir)
    train, val, test = stratified_split(rows, fractions, seed, caps)
    files = {name: _write(split, out / f"{name}.jsonl") for name, split in
             (("train", train), ("val", val), ("test", test))}  # fmt: skip
    return {
        **files,
        "corpus": len(rows),
        "spam": sum(y for _, y in rows),
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
    }
