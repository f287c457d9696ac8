"""Broken: the model ends in nn.Sigmoid() and the loss is BCEWithLogitsLoss (sigmoid applied twice). Gradients are
squashed; the model learns slowly and its probabilities are compressed into [0.5, 0.73]. Breast cancer, one output."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Detector(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
        self.criterion = nn.BCEWithLogitsLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x).squeeze(1), y.float())
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        probs = self(x).squeeze(1)
        self.log("val_loss", self.criterion(probs, y.float()))
        self.log("val_acc", ((probs > 0.5).long() == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_breast_cancer")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(Detector(), train, val, kind="broken", bug="sigmoid output fed to BCEWithLogitsLoss", max_epochs=8)
