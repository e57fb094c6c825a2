"""A fixture for test modules that run many tiny-model forwards (import it to use it)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread: on a busy machine two threads spin against each other
    (a tiny forward took ~1 s on two threads and ~50 ms on one, with six test runs sharing 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
