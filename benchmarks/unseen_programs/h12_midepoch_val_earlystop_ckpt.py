"""Healthy: validation twice per epoch (val_check_interval=0.5) on half the val batches, with EarlyStopping,
ModelCheckpoint and LearningRateMonitor next to the pack, a StepLR schedule, and wine with a small batch size."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, mlp


class WithSchedule(Classifier):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)}


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    train = DataLoader(TensorDataset(xt, yt), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=8)
    callbacks = [EarlyStopping("val_loss", patience=3), ModelCheckpoint(monitor="val_acc", mode="max")]
    run(
        WithSchedule(mlp(13, 3, hidden=16)),
        train,
        val,
        kind="healthy",
        max_epochs=8,
        val_check_interval=0.5,
        limit_val_batches=0.5,
        extra_callbacks=[*callbacks, LearningRateMonitor()],
    )
