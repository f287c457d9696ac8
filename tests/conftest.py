"""Shared fixtures: real Trainers on tiny real data, quiet and fast."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

# One thread by default; LS_TEST_THREADS=4 runs the suite as a multi-core machine would (another reduction order)
torch.set_num_threads(int(os.environ.get("LS_TEST_THREADS", "1")))


@pytest.fixture
def make_trainer(tmp_path: Any) -> Callable[..., pl.Trainer]:
    """A CPU Trainer with no progress bar, summary, checkpointing or logger unless asked for."""

    def build(**kwargs: Any) -> pl.Trainer:
        options: dict[str, Any] = {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
        }
        options.update(kwargs)
        return pl.Trainer(**options)

    return build
