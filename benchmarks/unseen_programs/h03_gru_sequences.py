"""Healthy: a GRU classifying synthetic sequences (which of 4 sine frequencies, plus noise),
last hidden state -> head."""

from __future__ import annotations

import math
import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def sequences(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 4, (n,), generator=generator)
    freq = (labels.float() + 1.0) * 0.35
    phase = torch.rand(n, generator=generator) * 2 * math.pi
    t = torch.arange(30).float()
    signal = torch.sin(freq[:, None] * t[None, :] + phase[:, None])
    noise = 0.3 * torch.randn(n, 30, generator=generator)
    return (signal + noise).unsqueeze(-1), labels


class SeqClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(input_size=1, hidden_size=24, batch_first=True)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(h[-1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_accuracy", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*sequences(1024, g)), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*sequences(256, g)), batch_size=128)
    run(SeqClassifier(), train, val, kind="healthy", max_epochs=6)
