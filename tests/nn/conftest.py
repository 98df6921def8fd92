"""sorth.nn tests run torch on one thread.

The layers are many small convolutions; on a 2-core CI runner shared with other jobs, two
intra-op threads oversubscribe the cores and were measured ~10× slower than one thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
