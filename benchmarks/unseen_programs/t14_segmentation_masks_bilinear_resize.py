"""Broken: the shapes segmentation task with masks annotated at half resolution (16x16) and brought to the image size
in the Dataset with ``F.interpolate(mode="bilinear")`` then ``.long()``: class ids get averaged, so squares (2) get a
ring of phantom class-1 pixels and disks shrink (0.75 -> 0). The model learns the corrupted masks."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, Dataset


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


class LowResMaskSet(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images = images
        self.masks = masks[:, ::2, ::2].clone()  # the annotations were drawn at half resolution

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        mask = self.masks[i][None, None].float()
        mask = F.interpolate(mask, size=self.images.shape[-2:], mode="bilinear", align_corners=False)  # the bug
        return self.images[i], mask[0, 0].long()


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
    train = DataLoader(LowResMaskSet(*shapes(400, g)), batch_size=16, shuffle=True)
    val_images, val_masks = shapes(100, g)
    val = DataLoader(LowResMaskSet(val_images, val_masks), batch_size=25)
    model = SegNet()
    run(model, train, val, kind="broken", bug="masks resized with bilinear interpolation then .long()", max_epochs=5)
    resized = torch.stack([val.dataset[i][1] for i in range(100)])
    changed = (resized != val_masks).float().mean()
    phantom = ((resized == 1) & (val_masks != 1)).float().sum() / (val_masks == 1).float().sum()
    with torch.no_grad():
        pred = model.eval()(val_images).argmax(1)
    inter = torch.stack([((pred == c) & (val_masks == c)).sum() for c in range(3)])
    union = torch.stack([((pred == c) | (val_masks == c)).sum() for c in range(3)])
    print(f"--- check: {changed:.3f} of val mask pixels changed by the resize; phantom class-1 pixels")
    print(f"    = {phantom:.2f} x the true class-1 area; val mIoU against the true masks {(inter / union).mean():.4f}")
