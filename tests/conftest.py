"""Shared fixtures: seeding, a device list that skips CUDA without a GPU, hypothesis profile,
and the tiny offline models of :mod:`sorth.integrations.pytest_fixtures`."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (tests/perf/test_triton_gs.py).
# It must be chosen before anything imports triton (``import sorth.nn`` does, through
# torch._dynamo), or triton's own @jit helpers are compiled-mode functions in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import HealthCheck, settings

# tiny offline models for the recipe / integration tests (built lazily, once per session) and
# the autouse ``offline`` fixture (HF_HUB_OFFLINE=1 for every test)
from sorth.integrations.pytest_fixtures import (  # noqa: F401 - fixtures used by name
    instance_dir,
    instruction_file,
    offline,
    sentiment_file,
    tiny_llama_dir,
    tiny_roberta_dir,
    tiny_sd_dir,
)

settings.register_profile(
    "sorth",
    deadline=None,
    max_examples=int(os.environ.get("SORTH_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("CI", "") != "",
)
settings.load_profile("sorth")

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
