"""Broken: a custom ``init_weights`` zero-initialises every Linear weight and bias (meant to be only the last layer).
With ReLU hidden layers every hidden unit is dead-symmetric: hidden weights get exactly zero gradient and only the
output bias learns -- the model predicts the class prior, at chance on balanced digits."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_digits")
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    net.apply(init_weights)
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=128)
    run(Classifier(net, lr=1e-3), train, val, kind="broken", bug="all Linear layers zero-initialised", max_epochs=5)
