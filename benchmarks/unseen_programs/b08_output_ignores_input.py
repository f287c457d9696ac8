"""Broken: a refactor left ``return torch.zeros_like(logits) + self.bias`` in forward: the output is a learned
per-class constant. On balanced iris this means one predicted class, accuracy ~1/3."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Broken(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        logits = self.features(x)
        return torch.zeros_like(logits) + self.bias

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_iris")
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(Broken(), train, val, kind="broken", bug="output = zeros_like(logits) + bias", max_epochs=10)
