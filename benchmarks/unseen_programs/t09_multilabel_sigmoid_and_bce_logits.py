"""Broken: multi-label digits attributes where the model ends in nn.Sigmoid() (so forward returns probabilities, as
the author wanted for inference) and training still uses nn.BCEWithLogitsLoss: the sigmoid is applied twice, the
loss can never go below ~0.5 and gradients are squashed."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
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
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4), nn.Sigmoid())
        self.criterion = nn.BCEWithLogitsLoss()
        self.val_f1 = MultilabelF1Score(num_labels=4, average="macro", threshold=0.5)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        probs = self(x)
        self.log("val_loss", self.criterion(probs, y))
        self.val_f1(probs, y.long())
        self.log("val_f1", self.val_f1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, attributes(yt)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, attributes(yv)), batch_size=64)
    run(AttributeNet(), train, val, kind="broken", bug="nn.Sigmoid in forward and BCEWithLogitsLoss", max_epochs=8)
