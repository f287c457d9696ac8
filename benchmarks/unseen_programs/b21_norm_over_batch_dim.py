"""Broken: a hand-written feature normalisation that reduces over dim 0 (the batch) instead of dim -1 (features):
``(h - h.mean(0)) / h.std(0)``. Each sample's output depends on the rest of the batch, so eval results change with
batch composition and batch size 1 gives NaN."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier


class HandNorm(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - h.mean(0, keepdim=True)) / (h.std(0, keepdim=True) + 1e-5)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    net = nn.Sequential(nn.Linear(64, 64), HandNorm(), nn.ReLU(), nn.Linear(64, 10))
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=100)
    run(Classifier(net, lr=3e-3), train, val, kind="broken", bug="normalisation over the batch dimension", max_epochs=4)
