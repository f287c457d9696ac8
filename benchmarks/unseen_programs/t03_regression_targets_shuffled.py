"""Broken: diabetes regression where the targets were shuffled with respect to the inputs (features and targets read
from two files whose rows are in different orders), so there is nothing to learn: val R^2 stays <= 0."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from harness import run
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import R2Score


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
        self.val_r2 = R2Score()

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.log("val_loss", F.mse_loss(pred, y))
        self.val_r2.update(pred, y)
        self.log("val_r2", self.val_r2)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    x, y = load_diabetes(return_X_y=True)
    y = y[np.random.default_rng(1).permutation(len(y))]  # the bug: targets no longer belong to their rows
    x = (x - x[110:].mean(0)) / x[110:].std(0)
    y = (y - y[110:].mean()) / y[110:].std()
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    train = DataLoader(TensorDataset(x[110:], y[110:]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[:110], y[:110]), batch_size=64)
    run(Regressor(), train, val, kind="broken", bug="regression targets shuffled w.r.t. inputs", max_epochs=20)
