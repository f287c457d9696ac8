"""Broken: house prices in thousands of dollars (~300-3000) regressed with MSE and plain SGD without scaling the
target. The first gradients are in the thousands; SGD at a usual lr blows the weights up and the run ends in NaN
or a model stuck near a constant."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def houses(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 6, generator=g)  # standardised: area, rooms, age, distance, ...
    price = 1200 + 450 * x[:, 0] + 150 * x[:, 1] - 120 * x[:, 2] - 200 * x[:, 3].tanh()
    return x, price + 80 * torch.randn(n, generator=g)


class PriceModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, price = batch
        loss = F.mse_loss(self(x), price)
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, price = batch
        pred = self(x)
        self.log("val_mse", F.mse_loss(pred, price))
        self.log("val_mae", (pred - price).abs().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*houses(1500, g)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(*houses(500, g)), batch_size=100)
    run(PriceModel(), train, val, kind="broken", bug="targets unscaled (~1000s) with SGD lr=0.01", max_epochs=6)
