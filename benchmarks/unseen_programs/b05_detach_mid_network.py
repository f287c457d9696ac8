"""Broken: a residual MLP where someone "saved memory" with ``h = h.detach()`` after the first block, so the stem and
first block get no gradient; the rest still learns."""

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
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, h):
        return h + F.relu(self.fc(self.norm(h)))


class ResMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 48)
        self.block1 = Block(48)
        self.block2 = Block(48)
        self.classifier = nn.Linear(48, 10)

    def forward(self, x):
        h = self.block1(self.stem(x))
        h = h.detach()
        return self.classifier(self.block2(h))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=128)
    run(ResMLP(), train, val, kind="broken", bug="h.detach() after block1: stem and block1 never learn", max_epochs=4)
