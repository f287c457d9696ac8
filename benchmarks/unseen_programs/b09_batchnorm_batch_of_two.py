"""Broken: a CNN with BatchNorm2d after every conv trained with batch_size=2 (to "fit in memory"); the batch
statistics of 2 images are noise and eval-mode running stats disagree with training."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from harness import run
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages

if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.3] * 3, [0.32] * 3)])
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )  # fmt: skip
    train = DataLoader(Subset(DigitImages(tf, split="train", size=12), range(600)), batch_size=2, shuffle=True)
    val = DataLoader(DigitImages(tf, split="val", size=12), batch_size=128)
    run(Classifier(net, lr=1e-3), train, val, kind="broken", bug="BatchNorm trained on batches of 2", max_epochs=2)
