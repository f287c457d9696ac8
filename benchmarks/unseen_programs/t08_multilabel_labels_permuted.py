"""Broken: digits multi-label attributes (even, >4, loop, prime) where the label rows were shuffled across samples
before the split (a merge on a non-unique key), so the labels carry no information about the images."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MultilabelF1Score


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
        self.val_f1 = MultilabelF1Score(num_labels=4, average="macro")

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
        self.val_f1(logits, y.long())
        self.log("val_f1", self.val_f1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    labels = attributes(torch.cat([yt, yv]))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]  # the bug
    train = DataLoader(TensorDataset(xt, labels[: len(xt)]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, labels[len(xt) :]), batch_size=64)
    run(AttributeNet(), train, val, kind="broken", bug="multi-label rows permuted across samples", max_epochs=8)
