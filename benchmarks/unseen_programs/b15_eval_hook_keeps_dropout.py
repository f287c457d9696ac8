"""Broken: the user overrides ``on_validation_model_eval`` with ``pass`` ("MC dropout"), so validation runs with
dropout 0.5 and BatchNorm in training mode: BN running statistics update on val data, metrics are noisy."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MCDropoutNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(30, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)

    def on_validation_model_eval(self):
        pass  # keep dropout on for Monte-Carlo estimates

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
        return torch.optim.Adam(self.parameters(), lr=1e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_breast_cancer")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=32)
    run(
        MCDropoutNet(),
        train,
        val,
        kind="broken",
        bug="on_validation_model_eval overridden: val in train mode",
        max_epochs=4,
    )
