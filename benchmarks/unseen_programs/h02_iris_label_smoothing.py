"""Healthy: iris, 3 classes, a small MLP trained with label smoothing 0.1 and SGD+momentum;
tiny val set (37 samples)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Iris(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", self.loss_fn(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 1)), verbose=False)
    xt, yt, xv, yv = tabular("load_iris")
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=16)
    run(Iris(), train, val, kind="healthy", max_epochs=15)
