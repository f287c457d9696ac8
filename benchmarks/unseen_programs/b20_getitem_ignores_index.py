"""Broken: a hand-written Dataset whose __getitem__ uses the wrong variable (``self.offset`` instead of ``index``),
so every item is the same image with the same label; train and val both yield one sample over and over."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from harness import run
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages, SmallCNN


class Digits(Dataset):
    def __init__(self, split: str, transform) -> None:
        self.base = DigitImages(None, split=split, size=16)
        self.transform = transform
        self.offset = 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[self.offset]  # the bug: should be self.base[index]
        return self.transform(image), label


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.3] * 3, [0.32] * 3)])
    train = DataLoader(Digits("train", tf), batch_size=64, shuffle=True)
    val = DataLoader(Digits("val", tf), batch_size=128)
    run(Classifier(SmallCNN(10, width=8)), train, val, kind="broken", bug="__getitem__ ignores its index", max_epochs=3)
