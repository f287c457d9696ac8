"""Healthy: the classic PyTorch-tutorial pattern -- forward ends in log_softmax and the loss is NLLLoss -- on
digits images with a tiny CNN. log-probabilities are valid logits for argmax and cross-entropy."""

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


class LeNetish(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.drop = nn.Dropout2d(0.25)
        self.fc1 = nn.Linear(20 * 4 * 4, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.nll_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.nll_loss(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    tf_train = T.Compose([T.Grayscale(), T.RandomRotation(10), T.ToTensor(), T.Normalize([0.3], [0.32])])
    tf_val = T.Compose([T.Grayscale(), T.ToTensor(), T.Normalize([0.3], [0.32])])
    train = DataLoader(DigitImages(tf_train, split="train", size=28), batch_size=64, shuffle=True)
    val = DataLoader(DigitImages(tf_val, split="val", size=28), batch_size=256)
    run(LeNetish(), train, val, kind="healthy", max_epochs=4)
