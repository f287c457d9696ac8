"""Healthy: digits as PIL images with torchvision transforms; a randomly initialised "pretrained" CNN backbone frozen
properly (requires_grad_(False) + eval()), a trained linear head, OneCycleLR stepping per batch, and gradient
accumulation over 4 batches."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import DigitImages


class FineTuner(pl.LightningModule):
    def __init__(self, steps_per_epoch: int, epochs: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )  # fmt: skip
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(64 * 16, 10)
        self.total_steps = steps_per_epoch * epochs

    def on_train_epoch_start(self):
        self.backbone.eval()

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)

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
        opt = torch.optim.SGD(self.head.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    norm = T.Normalize([0.3] * 3, [0.32] * 3)
    train_ds = DigitImages(T.Compose([T.RandomAffine(8, translate=(0.05, 0.05)), T.ToTensor(), norm]), size=24)
    val_ds = DigitImages(T.Compose([T.ToTensor(), norm]), split="val", size=24)
    train = DataLoader(train_ds, batch_size=32, shuffle=True)
    val = DataLoader(val_ds, batch_size=128)
    epochs, accumulate = 4, 4
    steps = (len(train) + accumulate - 1) // accumulate
    run(FineTuner(steps, epochs), train, val, kind="healthy", max_epochs=epochs, accumulate_grad_batches=accumulate)
