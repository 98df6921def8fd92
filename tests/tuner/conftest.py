"""Tuner tests use tiny models: one intra-op thread is faster than two, and far faster when the
CI machine is shared (thread oversubscription made a tiny UNet forward 40× slower)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
