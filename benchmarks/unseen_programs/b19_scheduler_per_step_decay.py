"""Broken: ``StepLR(step_size=1, gamma=0.5)`` meant per epoch but configured with ``"interval": "step"``: the learning
rate halves every batch and is ~1e-9 after 30 steps; the digits CNN freezes almost at its initialisation."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages, SmallCNN


class Scheduled(Classifier):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.3] * 3, [0.32] * 3)])
    train = DataLoader(DigitImages(tf, split="train", size=16), batch_size=32, shuffle=True)
    val = DataLoader(DigitImages(tf, split="val", size=16), batch_size=128)
    run(
        Scheduled(SmallCNN(10, width=8)),
        train,
        val,
        kind="broken",
        bug="StepLR halving the lr every batch",
        max_epochs=4,
    )
