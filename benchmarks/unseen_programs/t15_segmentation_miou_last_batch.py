"""Broken: the shapes segmentation task, but the logged val mIoU is computed in on_validation_epoch_end from the
intersection/union of the *last* val batch only (``self.inter = ...`` overwritten each step). 130 val images in
batches of 64 leave 2 images in the last batch, so the logged mIoU is a two-image number."""

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

    def validation_step(self, batch, batch_idx):
        x, mask = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, mask))
        pred = logits.argmax(1)
        self.inter = torch.stack([((pred == c) & (mask == c)).sum() for c in range(3)]).float()  # the bug: = not +=
        self.union = torch.stack([((pred == c) | (mask == c)).sum() for c in range(3)]).float()

    def on_validation_epoch_end(self):
        self.log("val_miou", (self.inter / self.union.clamp(min=1)).mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*shapes(400, g)), batch_size=16, shuffle=True)
    val_images, val_masks = shapes(130, g)
    val = DataLoader(TensorDataset(val_images, val_masks), batch_size=64)
    model = SegNet()
    run(model, train, val, kind="broken", bug="logged mIoU from the last val batch only", max_epochs=5)
    with torch.no_grad():
        pred = model.eval()(val_images).argmax(1)
    inter = torch.stack([((pred == c) & (val_masks == c)).sum() for c in range(3)])
    union = torch.stack([((pred == c) | (val_masks == c)).sum() for c in range(3)])
    print(f"--- check: val mIoU over all 130 val images {(inter / union).mean():.4f}")
