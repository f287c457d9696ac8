"""Healthy: forward returns raw logits in training and softmax probabilities in eval (a common "inference-ready"
pattern); validation uses NLL of their log and logs accuracy as a percentage (0-100). Wine, 3 classes."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class InferenceReady(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        logits = self.net(x)
        return logits if self.training else logits.softmax(dim=-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        probs = self(x)
        self.log("val_loss", F.nll_loss(probs.clamp_min(1e-8).log(), y))
        self.log("val_acc_pct", 100.0 * (probs.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(InferenceReady(), train, val, kind="healthy", max_epochs=10)
