"""pytest fixtures over :mod:`sorth.integrations.testing`: tiny offline models in temp folders.

Import the ones you need into a ``conftest.py``
(``from sorth.integrations.pytest_fixtures import ...``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sorth.integrations import testing
from sorth.integrations._extras import require

require("sorth.integrations.pytest_fixtures", "test", "pytest")

__all__ = [
    "instance_dir",
    "instruction_file",
    "offline",
    "sentiment_file",
    "tiny_llama_dir",
    "tiny_roberta_dir",
    "tiny_sd_dir",
]

POS = ("good", "great", "love", "fun", "nice", "best")
NEG = ("bad", "awful", "hate", "boring", "poor", "worst")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.tiny_roberta(tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def sentiment_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 labelled sentences: three sentiment words among filler words."""
    rng = random.Random(0)
    rows = []
    for i in range(64):
        words = [rng.choice(POS if i % 2 else NEG) for _ in range(3)]
        words += [rng.choice(testing.WORDS[:10]) for _ in range(5)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if i % 2 else "neg"})
    return testing.write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", rows)


@pytest.fixture(scope="session")
def instruction_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"prompt": f"question what is a {w}", "response": f"answer a {w} is good"}
        for w in ("dog", "cat", "movie", "film", "plot", "actor") * 4
    ]
    return testing.write_jsonl(tmp_path_factory.mktemp("data") / "instructions.jsonl", rows)


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.random_images(tmp_path_factory.mktemp("instance"), 3)
