"""Healthy: count regression -- predict an integer count (0..~15, int64 targets) with one output read as a log-rate and
PoissonNLLLoss(log_input=True). A regression with integer targets, not a classifier."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def counts(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 6, generator=g)
    rate = torch.exp(0.8 + 0.6 * x[:, 0] - 0.4 * x[:, 1] + 0.3 * x[:, 2])
    return x, torch.poisson(rate, generator=g).long()


class CountModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
        self.loss_fn = nn.PoissonNLLLoss(log_input=True)

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, k = batch
        loss = self.loss_fn(self(x), k.float())
        self.log("train_poisson_nll", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, k = batch
        log_rate = self(x)
        self.log("val_poisson_nll", self.loss_fn(log_rate, k.float()))
        self.log("val_mae", (log_rate.exp() - k.float()).abs().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*counts(1500, g)), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*counts(400, g)), batch_size=200)
    run(CountModel(), train, val, kind="healthy", max_epochs=6)
