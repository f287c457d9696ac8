"""Broken: multi-label digits attributes; the val F1 is computed in on_validation_epoch_end from tp/fp/fn counts
that validation_step *assigns* (``self.tp = ...``) instead of accumulating (``+=``). With 449 val samples in batches
of 64 the last batch holds one sample, so the logged val_f1 is the F1 of that single sample."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def attributes(digit: torch.Tensor) -> torch.Tensor:
    even = digit % 2 == 0
    big = digit > 4
    loop = (digit == 0) | (digit == 6) | (digit == 8) | (digit == 9)
    prime = (digit == 2) | (digit == 3) | (digit == 5) | (digit == 7)
    return torch.stack([even, big, loop, prime], dim=1).float()


class AttributeNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))

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
        pred = (logits > 0).float()
        self.tp = (pred * y).sum(0)  # the bug: = instead of +=
        self.fp = (pred * (1 - y)).sum(0)
        self.fn = ((1 - pred) * y).sum(0)

    def on_validation_epoch_end(self):
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn + 1e-8)
        self.log("val_f1", f1.mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, attributes(yt)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, attributes(yv)), batch_size=64)
    run(AttributeNet(), train, val, kind="broken", bug="val F1 counts assigned (=) not accumulated (+=)", max_epochs=8)
