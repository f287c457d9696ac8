"""Run checks that draw random numbers without consuming the user's random streams."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def forked_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and every CUDA device's) RNG state on exit.

    A check that samples data or runs a forward pass (dropout) inside this block leaves the
    user's training bit-identical to a run without the check.

    Example::

        with forked_rng():
            sample = dataset[random.randrange(len(dataset))]
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
