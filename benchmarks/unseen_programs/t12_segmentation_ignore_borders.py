"""Healthy: VOC-style segmentation of generated shapes (disks = 1, squares = 2, background = 0) where a 1-pixel band
around every object boundary is labelled 255 and ignored (``cross_entropy(..., ignore_index=255)``); mIoU over the
labelled pixels, accumulated over val."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, Dataset

IGNORE = 255


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


def with_void_borders(masks: torch.Tensor) -> torch.Tensor:
    m = masks[:, None].float()
    edge = (F.max_pool2d(m, 3, 1, 1) != m) | (-F.max_pool2d(-m, 3, 1, 1) != m)
    out = masks.clone()
    out[edge[:, 0]] = IGNORE
    return out


class SegmentationSet(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor, flip: bool) -> None:
        self.images, self.masks, self.flip = images, with_void_borders(masks), flip

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, mask = self.images[i], self.masks[i]
        if self.flip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"image": image, "mask": mask}


class SegNet(pl.LightningModule):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, num_classes, 1),
        )  # fmt: skip

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["image"]), batch["mask"], ignore_index=IGNORE)
        self.log("train_loss", loss)
        return loss

    def on_validation_epoch_start(self):
        self.inter = torch.zeros(self.num_classes)
        self.union = torch.zeros(self.num_classes)

    def validation_step(self, batch, batch_idx):
        logits, mask = self(batch["image"]), batch["mask"]
        self.log("val_loss", F.cross_entropy(logits, mask, ignore_index=IGNORE))
        pred, keep = logits.argmax(1), mask != IGNORE
        for c in range(self.num_classes):
            p, t = (pred == c) & keep, (mask == c) & keep
            self.inter[c] += (p & t).sum()
            self.union[c] += (p | t).sum()

    def on_validation_epoch_end(self):
        self.log("val_miou", (self.inter / self.union.clamp(min=1)).mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(SegmentationSet(*shapes(400, g), flip=True), batch_size=16, shuffle=True)
    val = DataLoader(SegmentationSet(*shapes(100, g), flip=False), batch_size=20)
    run(SegNet(), train, val, kind="healthy", max_epochs=6)
