"""Healthy: two-moons binary classification with one logit, the dataset yielding float targets shaped (1,) so that
batches are (N, 1) float -- exactly what BCEWithLogitsLoss on an (N, 1) output wants."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from sklearn.datasets import make_moons
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Moons(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        x, y = make_moons(n_samples=n, noise=0.2, random_state=seed)
        self.x = torch.tensor(x, dtype=torch.float32)
        self.y = torch.tensor(y, dtype=torch.float32).unsqueeze(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class MoonNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.binary_cross_entropy_with_logits(logits, y))
        self.log("val_acc", ((logits > 0).float() == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    train = DataLoader(Moons(800, 0), batch_size=32, shuffle=True)
    val = DataLoader(Moons(300, 1), batch_size=100)
    run(MoonNet(), train, val, kind="healthy", max_epochs=6)
