"""Healthy: an imbalanced binary problem (90/10, make_classification) trained with a class-weighted cross-entropy;
the model genuinely separates the classes, predicting the majority class most of the time because it is right."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from harness import run
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Fraud(pl.LightningModule):
    def __init__(self, class_weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 2))
        self.val_bacc = torchmetrics.Accuracy(task="multiclass", num_classes=2, average="macro")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, weight=self.class_weight)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_bacc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y, weight=self.class_weight))
        self.log("val_balanced_acc", self.val_bacc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    x, y = make_classification(
        n_samples=2000, n_features=12, n_informative=6, weights=[0.9, 0.1], class_sep=1.2, random_state=3
    )
    x = torch.tensor((x - x[:1500].mean(0)) / x[:1500].std(0), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    weight = len(y[:1500]) / (2 * torch.bincount(y[:1500]).float())
    train = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=250)
    run(Fraud(weight), train, val, kind="healthy", max_epochs=6)
