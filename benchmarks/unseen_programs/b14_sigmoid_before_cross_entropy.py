"""Broken: a 10-class digits MLP whose forward ends in torch.sigmoid (copied from a multi-label model) while the loss
is F.cross_entropy: logits are squashed into [0, 1], so softmax can never be confident (loss floor ~1.46)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SquashedMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        return torch.sigmoid(self.out(self.hidden(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        scores = self(x)
        self.log("val_loss", F.cross_entropy(scores, y))
        self.log("val_acc", (scores.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=128)
    run(SquashedMLP(), train, val, kind="broken", bug="sigmoid on a 10-class cross-entropy head", max_epochs=6)
