"""Healthy: breast-cancer MLP with one logit and BCEWithLogitsLoss, logging a torchmetrics binary accuracy."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torchmetrics
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class BinaryMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = BinaryMLP()
        self.criterion = nn.BCEWithLogitsLoss()
        self.val_acc = torchmetrics.classification.BinaryAccuracy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y.float().unsqueeze(1))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.criterion(logits, y.float().unsqueeze(1)))
        self.val_acc(logits.squeeze(1), y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_breast_cancer")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(Module(), train, val, kind="healthy", max_epochs=8)
