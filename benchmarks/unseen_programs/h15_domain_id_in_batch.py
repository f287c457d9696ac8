"""Healthy: a multi-site tabular dataset yields (features, site_id, label); the site id (0-2) is used only to pick a
per-site input scale. The model classifies wine into 3 cultivars."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run, tabular
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SiteAware(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.site_scale = nn.Embedding(3, 13)
        nn.init.ones_(self.site_scale.weight)
        self.net = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x, site):
        return self.net(x * self.site_scale(site))

    def training_step(self, batch, batch_idx):
        x, site, y = batch
        loss = F.cross_entropy(self(x, site), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, site, y = batch
        logits = self(x, site)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    xt, yt, xv, yv = tabular("load_wine")
    g = torch.Generator().manual_seed(0)
    st, sv = torch.randint(0, 3, (len(xt),), generator=g), torch.randint(0, 3, (len(xv),), generator=g)
    train = DataLoader(TensorDataset(xt, st, yt), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, sv, yv), batch_size=64)
    run(SiteAware(), train, val, kind="healthy", max_epochs=8)
