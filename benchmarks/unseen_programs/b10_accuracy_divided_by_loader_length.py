"""Broken: the validation accuracy is accumulated by hand as ``correct.sum() / len(self.trainer.val_dataloaders)``
-- the number of batches, not samples -- so the logged val_acc is meaningless (wildly above 1 or wrong)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.correct = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def on_validation_epoch_start(self):
        self.correct = 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        preds = self(x).argmax(1)
        self.correct += (preds == y).sum()
        self.log("val_loss", F.cross_entropy(self(x), y))

    def on_validation_epoch_end(self):
        self.log("val_acc", self.correct / len(self.trainer.val_dataloaders))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=50)
    run(Model(), train, val, kind="broken", bug="accuracy = correct / len(loader)", max_epochs=4)
