"""Healthy: metric learning -- forward returns an L2-normalised 32-d embedding; training_step scores it against
learnable class prototypes (cosine similarity x 10, cross-entropy). Digits, 10 classes; validation logs the
prototype accuracy. The model's forward output is an embedding, not class logits."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Embedder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
        self.prototypes = nn.Parameter(torch.randn(10, 32))

    def forward(self, x):
        return F.normalize(self.encoder(x), dim=1)

    def scores(self, embedding):
        return 10.0 * embedding @ F.normalize(self.prototypes, dim=1).T

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.scores(self(x)), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        scores = self.scores(self(x))
        self.log("val_loss", F.cross_entropy(scores, y))
        self.log("val_proto_acc", (scores.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=150)
    run(Embedder(), train, val, kind="healthy", max_epochs=5)
