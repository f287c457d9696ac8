"""Broken: a regressor that refines a learned initial state through residual blocks, but the author forgot to feed
x in: forward starts from ``self.h0`` alone, so every sample gets the same prediction (the train mean).
Wine quality-like target: alcohol from the other wine features."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ff = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())

    def forward(self, h):
        return h + self.ff(h)


class ResidualRegressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.h0 = nn.Parameter(torch.zeros(32))
        self.blocks = nn.ModuleList(Block(32) for _ in range(3))
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.h0.expand(len(x), -1)  # the bug: should be self.h0 + self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.log("val_mse", F.mse_loss(pred, y))
        self.log("val_r2", 1 - F.mse_loss(pred, y) / y.var(unbiased=False))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, _, xv, _ = tabular("load_wine")
    train = DataLoader(TensorDataset(xt[:, 1:], xt[:, 0]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv[:, 1:], xv[:, 0]), batch_size=64)
    run(ResidualRegressor(), train, val, kind="broken", bug="forward ignores x (starts from h0 only)", max_epochs=12)
