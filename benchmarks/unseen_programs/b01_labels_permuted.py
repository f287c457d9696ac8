"""Broken: the dataset shuffles its label array once "to randomise the order" but not the features, so every label is
paired with a random image. Train loss falls (memorisation) while val accuracy stays at chance (10 classes)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from lightning_sanity.demos import DigitImages


class ShuffledDigits(Dataset):
    """Wraps DigitImages; the bug: ``np.random.shuffle(self.labels)`` shuffles labels without the images."""

    def __init__(self, split: str, transform) -> None:
        self.base = DigitImages(None, split=split, size=16)
        self.transform = transform
        self.labels = self.base.targets.copy()
        np.random.default_rng(123 if split == "train" else 7).shuffle(self.labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.base.images[i]), int(self.labels[i])


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 64),
            nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.cnn(x)

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
        return torch.optim.Adam(self.parameters(), lr=2e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.3] * 3, [0.32] * 3)])
    train = DataLoader(ShuffledDigits("train", tf), batch_size=32, shuffle=True)
    val = DataLoader(ShuffledDigits("val", tf), batch_size=128)
    run(Net(), train, val, kind="broken", bug="labels shuffled independently of images", max_epochs=8)
