"""What the training tests share: torch on one thread."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Torch on one thread (restored after): tiny convolutions on a shared, busy CPU run many times
    faster than with threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
