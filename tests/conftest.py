"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch

# --- all tests: tiny models and small Monte Carlo samples ------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Run the tests' many small tensor ops on one intra-op thread, then restore the setting.

    On a 2-core machine shared with other processes, torch's intra-op threads spin-wait on each
    small op (measured 10-50x slower for the (20000, 4) tensors of the Monte Carlo tests).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
