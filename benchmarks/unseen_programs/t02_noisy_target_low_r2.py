"""Healthy: a regression whose target is mostly noise: y = 0.5 x0 - 0.3 x1 + N(0, 1.17^2), so the best possible
R^2 is 0.2. A linear+MLP model with AdamW reaches about that; it has learned all there is to learn."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import R2Score


def noisy(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 8, generator=g)
    signal = 0.5 * x[:, 0] - 0.3 * x[:, 1]
    return x, signal + 1.166 * torch.randn(n, generator=g)


class NoisyRegressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
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
        self.log("val_r2", self.val_r2, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*noisy(2000, g)), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*noisy(1000, g)), batch_size=250)
    run(NoisyRegressor(), train, val, kind="healthy", max_epochs=8)
