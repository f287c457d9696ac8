"""Healthy: sequence tagging (per-token classes) with a bidirectional LSTM, variable-length sequences padded with
label -100 (ignore_index), outputs [N, L, C]. The tag of a token is its value bucket (3 classes) -- learnable."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def tagged(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 16, 2, generator=g)
    smooth = x[..., 0] + 0.5 * torch.roll(x[..., 1], 1, dims=1)
    tags = torch.bucketize(smooth, torch.tensor([-0.5, 0.5]))
    lengths = torch.randint(6, 17, (n,), generator=g)
    pad = torch.arange(16)[None, :] >= lengths[:, None]
    x[pad] = 0.0
    tags[pad] = -100
    return x, tags


class Tagger(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 24, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(48, 3)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.proj(h)

    def training_step(self, batch, batch_idx):
        x, tags = batch
        loss = F.cross_entropy(self(x).transpose(1, 2), tags, ignore_index=-100)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, tags = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits.transpose(1, 2), tags, ignore_index=-100))
        keep = tags != -100
        self.log("val_token_acc", (logits.argmax(-1)[keep] == tags[keep]).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*tagged(1200, g)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(*tagged(300, g)), batch_size=100)
    run(Tagger(), train, val, kind="healthy", max_epochs=5)
