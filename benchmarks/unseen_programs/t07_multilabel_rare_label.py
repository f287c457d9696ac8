"""Healthy: generated multi-label data with 3 labels at 50%, 25% and 5% prevalence (each a noisy linear rule of the
features), BCEWithLogitsLoss with pos_weight for the rare label; per-label F1 accumulated by hand over val."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

PREVALENCE = torch.tensor([0.5, 0.25, 0.05])


def labelled(n: int, g: torch.Generator, w: torch.Tensor, cut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 16, generator=g)
    score = x @ w + 0.3 * torch.randn(n, 3, generator=g)
    return x, (score > cut).float()


class RareTagger(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 3))
        self.register_buffer("pos_weight", torch.tensor([1.0, 1.0, 5.0]))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y, pos_weight=self.pos_weight)
        self.log("train_loss", loss)
        return loss

    def on_validation_epoch_start(self):
        self.tp = torch.zeros(3)
        self.fp = torch.zeros(3)
        self.fn = torch.zeros(3)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight))
        pred = (logits > 0).float()
        self.tp += (pred * y).sum(0)
        self.fp += (pred * (1 - y)).sum(0)
        self.fn += ((1 - pred) * y).sum(0)

    def on_validation_epoch_end(self):
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn).clamp(min=1)
        self.log("val_f1_macro", f1.mean())
        self.log("val_f1_rare", f1[2])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 3, generator=g) / 2
    probe = torch.randn(20000, 16, generator=g) @ w
    cut = torch.quantile(probe, 1 - PREVALENCE, dim=0).diagonal()
    train = DataLoader(TensorDataset(*labelled(3000, g, w, cut)), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*labelled(1000, g, w, cut)), batch_size=200)
    run(RareTagger(), train, val, kind="healthy", max_epochs=8)
