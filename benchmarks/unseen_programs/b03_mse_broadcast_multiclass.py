"""Broken: a 3-class wine head trained with ``MSELoss()(out, y.float().unsqueeze(1))``: [N, 3] vs [N, 1] broadcasts
(only a UserWarning), so every logit regresses onto the class index; argmax is meaningless."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class WineNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
        self.criterion = nn.MSELoss()

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        loss = self.criterion(out, y.float().unsqueeze(1))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", self.criterion(out, y.float().unsqueeze(1)))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(WineNet(), train, val, kind="broken", bug="MSE target [N,1] broadcast over a [N,3] class head", max_epochs=12)
