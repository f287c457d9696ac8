"""Healthy: multi-label (5 labels, BCEWithLogits) on make_multilabel_classification; forward returns a dict and
batches are dicts."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from sklearn.datasets import make_multilabel_classification
from torch import nn
from torch.utils.data import DataLoader, Dataset


class MultiLabelData(Dataset):
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "labels": self.y[i]}


class Tagger(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.LayerNorm(64))
        self.tags = nn.Linear(64, 5)

    def forward(self, features):
        z = self.encoder(features)
        return {"embedding": z, "logits": self.tags(z)}

    def training_step(self, batch, batch_idx):
        out = self(batch["features"])
        loss = F.binary_cross_entropy_with_logits(out["logits"], batch["labels"])
        self.log("train_bce", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self(batch["features"])
        self.log("val_bce", F.binary_cross_entropy_with_logits(out["logits"], batch["labels"]))
        hits = ((out["logits"] > 0).float() == batch["labels"]).float().mean()
        self.log("val_label_acc", hits)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    x, y = make_multilabel_classification(n_samples=1200, n_features=20, n_classes=5, random_state=0)
    x = (x - x.mean(0)) / x.std(0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    train = DataLoader(MultiLabelData(x[:900], y[:900]), batch_size=32, shuffle=True)
    val = DataLoader(MultiLabelData(x[900:], y[900:]), batch_size=100)
    run(Tagger(), train, val, kind="healthy", max_epochs=6)
