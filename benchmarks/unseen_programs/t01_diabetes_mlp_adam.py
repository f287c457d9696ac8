"""Healthy: regression on sklearn's diabetes (disease progression after one year), features and target standardised,
a small MLP with Adam and MSE; val R^2 accumulated over the val batches (about 0.45 is the best a model gets)."""

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


class DiabetesMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_mse", loss)
        return loss

    def on_validation_epoch_start(self):
        self.sse, self.sst, self.n = 0.0, 0.0, 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.log("val_mse", F.mse_loss(pred, y))
        self.sse += ((pred - y) ** 2).sum().item()
        self.sst += (y**2).sum().item()  # the target is standardised: its mean is ~0
        self.n += len(y)

    def on_validation_epoch_end(self):
        self.log("val_r2", 1 - self.sse / self.sst)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    tr, va = order[110:], order[:110]
    x = (x - x[tr].mean(0)) / x[tr].std(0)
    y = (y - y[tr].mean()) / y[tr].std()
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[va], y[va]), batch_size=64)
    run(DiabetesMLP(), train, val, kind="healthy", max_epochs=30)
