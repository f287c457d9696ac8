"""Healthy: mixup on digits images -- training targets are mixed one-hot float vectors [N, 10] and the loss is
cross-entropy with probabilities; validation uses plain integer labels."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import DigitImages, SmallCNN


class MixupClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(num_classes=10, width=16)
        self.beta = torch.distributions.Beta(0.4, 0.4)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        soft = F.one_hot(y, 10).float()
        lam = self.beta.sample()
        perm = torch.randperm(len(x))
        x = lam * x + (1 - lam) * x[perm]
        soft = lam * soft + (1 - lam) * soft[perm]
        loss = F.cross_entropy(self(x), soft)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.3] * 3, [0.32] * 3)])
    train = DataLoader(DigitImages(tf, split="train", size=16), batch_size=64, shuffle=True)
    val = DataLoader(DigitImages(tf, split="val", size=16), batch_size=128)
    run(MixupClassifier(), train, val, kind="healthy", max_epochs=5)
