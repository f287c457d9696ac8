"""Broken: SGD with learning rate 10.0 (a typo for 1e-1... or 1e-0) on wine: the loss explodes / goes NaN or
the model bounces around at chance."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class WineMLP(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(WineMLP(lr=10.0), train, val, kind="broken", bug="learning rate 10.0", max_epochs=10)
