"""Healthy: semantic segmentation of generated 32x32 images: bright disks (class 1) and dark squares (class 2) on a
noisy background (class 0), a small fully-convolutional net with cross-entropy on [N, 3, H, W] logits; val mIoU from
a confusion matrix accumulated over the val batches."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def shapes(n: int, g: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.5 * torch.randn(n, 1, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cy, cx, r = (int(v) for v in torch.randint(6, size - 6, (3,), generator=g))
            r = r % 4 + 3
            if torch.rand(1, generator=g) < 0.5:
                region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                masks[i][region], images[i, 0][region] = 1, images[i, 0][region] + 1.0
            else:
                region = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
                masks[i][region], images[i, 0][region] = 2, images[i, 0][region] - 1.0
    return images, masks


class SegNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 3, 1),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, mask = batch
        loss = F.cross_entropy(self(x), mask)
        self.log("train_loss", loss)
        return loss

    def on_validation_epoch_start(self):
        self.confusion = torch.zeros(3, 3)

    def validation_step(self, batch, batch_idx):
        x, mask = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, mask))
        pred = logits.argmax(1)
        self.confusion += torch.bincount(mask.flatten() * 3 + pred.flatten(), minlength=9).reshape(3, 3)

    def on_validation_epoch_end(self):
        inter = self.confusion.diagonal()
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        iou = inter / union.clamp(min=1)
        self.log("val_miou", iou.mean())
        self.log("val_pixel_acc", inter.sum() / self.confusion.sum())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*shapes(400, g)), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(*shapes(100, g)), batch_size=25)
    run(SegNet(), train, val, kind="healthy", max_epochs=5)
