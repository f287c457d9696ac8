"""Broken: SGD(weight_decay=1.0) (meant 1e-4): every step shrinks the weights by lr * 1.0 = 10 %, faster than the
gradient grows them; the network decays towards zero output and stays near chance on wine."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run, tabular
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, mlp


class Decayed(Classifier):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1.0)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    train = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=64)
    run(Decayed(mlp(13, 3)), train, val, kind="broken", bug="weight_decay=1.0", max_epochs=10)
