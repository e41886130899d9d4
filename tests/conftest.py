"""Shared pytest fixtures (plain builders live in helpers.py)."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and 2 threads on a shared, busy CPU can be 10x
    slower from OpenMP spin-waits). Modules opt in with ``pytestmark``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
