"""Healthy: a text-style classifier on integer token ids (nn.Embedding + mean pooling with a padding mask); the
batch is (token_ids, mask, label) and forward takes two arguments. Synthetic "topics": each class draws most
tokens from its own slice of a 200-word vocabulary."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def corpus(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 5, (n,), generator=g)
    lengths = torch.randint(5, 21, (n,), generator=g)
    topical = labels[:, None] * 40 + torch.randint(0, 40, (n, 20), generator=g)
    noise = torch.randint(0, 200, (n, 20), generator=g)
    tokens = torch.where(torch.rand(n, 20, generator=g) < 0.4, topical, noise) + 1  # 0 is padding
    mask = torch.arange(20)[None, :] < lengths[:, None]
    return tokens * mask, mask, labels


class BagOfEmbeddings(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(201, 32, padding_idx=0)
        self.out = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, tokens, mask):
        e = self.embed(tokens) * mask[..., None]
        return self.out(e.sum(1) / mask.sum(1, keepdim=True))

    def training_step(self, batch, batch_idx):
        tokens, mask, y = batch
        loss = F.cross_entropy(self(tokens, mask), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        tokens, mask, y = batch
        logits = self(tokens, mask)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(*corpus(1500, g)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(*corpus(400, g)), batch_size=100)
    run(BagOfEmbeddings(), train, val, kind="healthy", max_epochs=5)
