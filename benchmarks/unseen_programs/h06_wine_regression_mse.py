"""Healthy: regression on wine (predict the alcohol content from the 12 other features) with MSE, AdamW weight decay
and dropout 0.5."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.log("val_mse", F.mse_loss(pred, y))
        self.log("val_mae", (pred - y).abs().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.05)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, _, xv, _ = tabular("load_wine")
    # column 0 is alcohol (standardised): the target; the other 12 are the inputs
    train = DataLoader(TensorDataset(xt[:, 1:], xt[:, 0]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv[:, 1:], xv[:, 0]), batch_size=64)
    run(Regressor(), train, val, kind="healthy", max_epochs=15)
