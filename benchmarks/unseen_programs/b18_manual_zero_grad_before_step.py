"""Broken: manual optimisation with the calls in the wrong order -- ``manual_backward(loss)``, then
``opt.zero_grad()``, then ``opt.step()``: every step applies a zero gradient (Adam moves nothing), the model never
learns. Iris, 3 classes."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ManualIris(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)
        opt.zero_grad()
        opt.step()
        self.log("train_loss", loss)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_iris")
    train = DataLoader(TensorDataset(xt, yt), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(ManualIris(), train, val, kind="broken", bug="zero_grad between backward and step", max_epochs=10)
