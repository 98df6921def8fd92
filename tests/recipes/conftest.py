"""Fixtures for these tests: tiny offline models (see integrations/pytest_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # recipes/ and integrations/ are folders at the repo root
    sys.path.insert(0, str(ROOT))

from integrations.pytest_fixtures import (  # noqa: E402, F401 - fixtures used by name
    instance_dir,
    instruction_file,
    offline,
    sentiment_file,
    tiny_llama_dir,
    tiny_roberta_dir,
    tiny_sd_dir,
)
