"""Broken: ``gradient_clip_val=1e-4`` (meant 1.0) with plain SGD: every update is clipped to a norm of 1e-4 * lr,
so the network barely moves and stays at chance on digits."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from harness import run, tabular
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, mlp

if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=128)
    model = Classifier(mlp(64, 10, hidden=64), lr=0.05, optimizer="sgd")
    run(model, train, val, kind="broken", bug="gradient_clip_val=1e-4", max_epochs=6, gradient_clip_val=1e-4)
