"""Local text datasets for the finetune recipe: JSON / JSONL / CSV through ``datasets``.

Two shapes, checked up front with a one-line error naming the columns that exist:

* ``seq_cls``: a text column (optionally a second text column for sentence pairs, GLUE style)
  and a label column (ints, strings, or floats for regression such as STS-B);
* ``causal_lm``: ``prompt`` + ``response`` columns (loss on the response only) or one ``text``
  column (loss on every token).

:func:`prepare_data` reads and tokenizes the files a :class:`FinetuneConfig` names;
:func:`make_collate` pads the examples into batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.common import RecipeError

if TYPE_CHECKING:
    from recipes.finetune.config import FinetuneConfig

__all__ = [
    "TextData",
    "load_table",
    "make_collate",
    "prepare_data",
    "tokenize_causal",
    "tokenize_classification",
]

_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass(frozen=True)
class TextData:
    """Tokenized examples (lists of dicts of int lists) plus what the model needs to know."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    num_labels: int
    label_names: tuple[str, ...]


def load_table(path: str, columns: Sequence[str], what: str) -> dict[str, list[Any]]:
    """Read a JSON/JSONL/CSV file with ``datasets.load_dataset`` and return its ``columns``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise RecipeError(f"{what} '{path}' does not exist")
    fmt = _FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise RecipeError(f"{what} '{path}' must end in .json, .jsonl or .csv")
    import datasets

    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(fmt, data_files=str(file), split="train")
    except Exception as err:  # malformed file: report, do not trace
        raise RecipeError(f"{what} '{path}' could not be read as {fmt}: {err}") from None
    if len(table) == 0:
        raise RecipeError(f"{what} '{path}' has no rows")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise RecipeError(
            f"{what} '{path}' has columns {table.column_names}; missing {missing} "
            "(choose the columns with --text_column/--label_column/--prompt_column/...)"
        )
    return {c: table[c] for c in columns}


def _subsample(rows: dict[str, list[Any]], limit: int, seed: int) -> dict[str, list[Any]]:
    n = len(next(iter(rows.values())))
    if not limit or limit >= n:
        return rows
    keep = sorted(random.Random(seed).sample(range(n), limit))
    return {k: [v[i] for i in keep] for k, v in rows.items()}


def _split(
    train: dict[str, list[Any]], eval_rows: dict[str, list[Any]] | None, fraction: float, seed: int
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Use the eval file if given, else hold out ``fraction`` of the training rows."""
    if eval_rows is not None:
        return train, eval_rows
    n = len(next(iter(train.values())))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, round(n * fraction))
    if n - k < 1:
        raise RecipeError(f"only {n} training rows: too few to hold out an eval split")
    pick = lambda idx: {c: [v[i] for i in sorted(idx)] for c, v in train.items()}  # noqa: E731
    return pick(order[k:]), pick(order[:k])


def _split_and_subsample(
    train: dict[str, list[Any]],
    eval_rows: dict[str, list[Any]] | None,
    fraction: float,
    limits: tuple[int, int],
    seed: int,
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """:func:`_split`, then cap the train / eval rows at ``limits`` (0 = no cap)."""
    train, eval_rows = _split(train, eval_rows, fraction, seed)
    return _subsample(train, limits[0], seed), _subsample(eval_rows, limits[1], seed)


def tokenize_classification(
    tokenizer: Any,
    train: dict[str, list[Any]],
    eval_rows: dict[str, list[Any]] | None,
    *,
    text_column: str,
    pair_column: str,
    label_column: str,
    max_length: int,
    eval_fraction: float,
    limits: tuple[int, int],
    seed: int,
) -> TextData:
    """Tokenize sentence (pair) classification or regression data; map labels to ``0..C-1``."""
    train, eval_rows = _split_and_subsample(train, eval_rows, eval_fraction, limits, seed)
    values = train[label_column]
    regression = all(isinstance(v, float) for v in values) and any(v != int(v) for v in values)
    names: tuple[str, ...] = () if regression else tuple(sorted({str(v) for v in values}))
    if not regression and len(names) < 2:
        raise RecipeError(f"label column '{label_column}' has a single class {list(names)}")
    index = {name: i for i, name in enumerate(names)}

    def encode(rows: dict[str, list[Any]]) -> list[dict[str, Any]]:
        pairs = (rows[pair_column],) if pair_column else ()
        enc = tokenizer(
            [str(t) for t in rows[text_column]],
            *[[str(t) for t in p] for p in pairs],
            truncation=True,
            max_length=max_length,
        )
        out = []
        for i, label in enumerate(rows[label_column]):
            if not regression and str(label) not in index:
                raise RecipeError(f"eval label {label!r} never occurs in the training data")
            y = float(label) if regression else index[str(label)]
            out.append({"input_ids": enc["input_ids"][i], "labels": y})
        return out

    return TextData(encode(train), encode(eval_rows), 1 if regression else len(names), names)


def tokenize_causal(
    tokenizer: Any,
    train: dict[str, list[Any]],
    eval_rows: dict[str, list[Any]] | None,
    *,
    text_column: str,
    prompt_column: str,
    response_column: str,
    max_length: int,
    eval_fraction: float,
    limits: tuple[int, int],
    seed: int,
) -> TextData:
    """Tokenize instruction data: labels are ``-100`` on the prompt, the response is learned."""
    train, eval_rows = _split_and_subsample(train, eval_rows, eval_fraction, limits, seed)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(rows: dict[str, list[Any]]) -> list[dict[str, Any]]:
        out = []
        if text_column:
            prompts, responses = [""] * len(rows[text_column]), rows[text_column]
        else:
            prompts, responses = rows[prompt_column], rows[response_column]
        for prompt, response in zip(prompts, responses, strict=True):
            p = tokenizer(str(prompt), add_special_tokens=False)["input_ids"] if prompt else []
            r = tokenizer(str(response), add_special_tokens=False)["input_ids"] + eos
            ids = (p + r)[:max_length]
            labels = ([-100] * len(p) + r)[:max_length]
            if all(t == -100 for t in labels):
                continue  # prompt alone fills max_length: nothing to learn
            out.append({"input_ids": ids, "labels": labels})
        if not out:
            raise RecipeError("every example's prompt is longer than --max_length")
        return out

    return TextData(encode(train), encode(eval_rows), 0, ())


def prepare_data(cfg: FinetuneConfig, tokenizer: Any) -> TextData:
    """The train / eval rows of ``cfg`` read, split and tokenized for its task (seq_cls or
    causal_lm), with the label mapping."""
    common = {
        "max_length": cfg.max_length,
        "eval_fraction": cfg.eval_fraction,
        "limits": (cfg.train_samples, cfg.eval_samples),
        "seed": cfg.seed,
    }
    if cfg.task == "seq_cls":
        cols = [c for c in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if c]
        train = load_table(cfg.train_file, cols, "--train_file")
        ev = load_table(cfg.eval_file, cols, "--eval_file") if cfg.eval_file else None
        return tokenize_classification(
            tokenizer, train, ev, text_column=cfg.text_column, pair_column=cfg.text_pair_column,
            label_column=cfg.label_column, **common,
        )  # fmt: skip
    if cfg.prompt_column:
        cols, text = [cfg.prompt_column, cfg.response_column], ""
    else:
        cols, text = [cfg.text_column], cfg.text_column
    train = load_table(cfg.train_file, cols, "--train_file")
    ev = load_table(cfg.eval_file, cols, "--eval_file") if cfg.eval_file else None
    return tokenize_causal(
        tokenizer, train, ev, text_column=text, prompt_column=cfg.prompt_column,
        response_column=cfg.response_column, **common,
    )  # fmt: skip


def make_collate(pad_id: int, regression: bool) -> Any:
    """A ``collate_fn`` padding ``input_ids`` with ``pad_id`` (and the attention mask, the
    labels with -100 for causal LM); ``regression`` keeps float labels."""
    import torch

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if isinstance(rows[0]["labels"], list):  # causal LM: pad labels with -100
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for i, r in enumerate(rows):
                labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        else:
            dtype = torch.float32 if regression else torch.long
            labels = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        batch["labels"] = labels
        return batch

    return collate
