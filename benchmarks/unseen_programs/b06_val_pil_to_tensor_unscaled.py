"""Broken: train uses ToTensor() (0-1) + Normalize, val uses PILToTensor() + ConvertImageDtype-less ``.float()``
(0-255) + the same Normalize: val inputs are 255x off. Val accuracy collapses while train looks fine."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages


class ToFloat:
    """Cast to float without rescaling (the bug: should divide by 255)."""

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.float()

    def __repr__(self) -> str:
        return "ToFloat()"


def small_cnn() -> torch.nn.Module:
    n = torch.nn
    return n.Sequential(
        n.Conv2d(3, 16, 3, padding=1), n.ReLU(), n.MaxPool2d(2), n.Conv2d(16, 32, 3, padding=1), n.ReLU(),
        n.AdaptiveAvgPool2d(1), n.Flatten(), n.Linear(32, 10),
    )  # fmt: skip


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    norm = T.Normalize([0.3] * 3, [0.32] * 3)
    train_ds = DigitImages(T.Compose([T.RandomRotation(8), T.ToTensor(), norm]), split="train", size=20)
    val_ds = DigitImages(T.Compose([T.PILToTensor(), ToFloat(), norm]), split="val", size=20)
    train = DataLoader(train_ds, batch_size=64, shuffle=True)
    val = DataLoader(val_ds, batch_size=128)
    run(
        Classifier(small_cnn(), lr=3e-3),
        train,
        val,
        kind="broken",
        bug="val pipeline not scaled to [0,1]",
        max_epochs=4,
    )
