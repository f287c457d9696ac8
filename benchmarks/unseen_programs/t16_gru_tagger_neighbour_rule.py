"""Healthy: token classification with an embedding + bidirectional GRU tagger on generated token sequences
(vocab 40, lengths 5-24, pad id 0). A token's tag (3 classes) depends on the token and its left neighbour;
padding positions carry tag -100 and are ignored by cross-entropy. Val token accuracy over the real tokens."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import run
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

VOCAB, PAD = 40, 0


def sentences(n: int, g: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(n):
        tokens = torch.randint(1, VOCAB, (int(torch.randint(5, 25, (1,), generator=g)),), generator=g)
        left = torch.cat([torch.zeros(1, dtype=torch.long), tokens[:-1]])
        tags = torch.where(tokens < 14, 0, torch.where(left < 20, 1, 2))  # e.g. O / B / I from the token and its left
        out.append((tokens, tags))
    return out


def collate(items):
    tokens = pad_sequence([t for t, _ in items], batch_first=True, padding_value=PAD)
    tags = pad_sequence([y for _, y in items], batch_first=True, padding_value=-100)
    return tokens, tags


class GRUTagger(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32, padding_idx=PAD)
        self.gru = nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 3)

    def forward(self, tokens):
        h, _ = self.gru(self.embed(tokens))
        return self.head(h)

    def training_step(self, batch, batch_idx):
        tokens, tags = batch
        logits = self(tokens)
        loss = F.cross_entropy(logits.reshape(-1, 3), tags.reshape(-1), ignore_index=-100)
        self.log("train_loss", loss)
        return loss

    def on_validation_epoch_start(self):
        self.correct, self.total = 0, 0

    def validation_step(self, batch, batch_idx):
        tokens, tags = batch
        logits = self(tokens)
        self.log("val_loss", F.cross_entropy(logits.reshape(-1, 3), tags.reshape(-1), ignore_index=-100))
        keep = tags != -100
        self.correct += (logits.argmax(-1)[keep] == tags[keep]).sum().item()
        self.total += keep.sum().item()

    def on_validation_epoch_end(self):
        self.log("val_token_acc", self.correct / self.total)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(sentences(1500, g), batch_size=32, shuffle=True, collate_fn=collate)
    val = DataLoader(sentences(300, g), batch_size=64, collate_fn=collate)
    run(GRUTagger(), train, val, kind="healthy", max_epochs=6)
