"""On CUDA, steps that neither check nor log must not synchronise host and device (skipped without CUDA)."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity.demos import Classifier, mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

QUIET_FROM_STEP = 30
"""After the first checks (BatchStats: 3 batches, GradientFlow: dense_steps=5) nothing is due before step 1000."""


class SyncDebugAfter(pl.Callback):
    """Turns CUDA's sync debug mode on for the train steps where no sanity check or log is due."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode("warn" if trainer.global_step >= QUIET_FROM_STEP else 0)

    def on_train_end(self, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode(0)


def test_no_host_device_sync_on_steps_that_neither_check_nor_log(make_trainer: Any) -> None:
    data = TensorDataset(torch.randn(4096, 13), torch.randint(0, 3, (4096,)))
    callbacks = ls.default_callbacks(gradient_flow={"dense_steps": 5, "every_n_steps": 1000})
    trainer = make_trainer(
        accelerator="gpu", callbacks=[*callbacks, SyncDebugAfter()], max_steps=60, log_every_n_steps=1000,
        limit_val_batches=0,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(mlp(13, 3)), DataLoader(data, batch_size=64))
    ours = [w for w in caught if "synchroniz" in str(w.message) and "lightning_sanity" in w.filename]
    assert ours == []
