"""Broken: train and val label encoders were fitted separately on string class names; the val split happens to see
the names in a different order, so val label ids are a permutation of train's (0->2, 1->0, 2->1). The model is
fine; val accuracy is far below chance and the confusion matrix is a permuted diagonal."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, mlp

if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    val_ids = torch.tensor([2, 0, 1])[yv]  # separately fitted encoder on the val split
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, val_ids), batch_size=64)
    run(
        Classifier(mlp(13, 3), lr=1e-2),
        train,
        val,
        kind="broken",
        bug="val labels encoded in another order",
        max_epochs=8,
    )
