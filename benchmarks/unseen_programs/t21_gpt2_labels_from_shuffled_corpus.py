"""Broken: the tiny GPT-2 on the phrase grammar, but the labels come from a second copy of the corpus that was
shuffled in place before tokenising (``random.shuffle`` for deduplication), so ``labels`` are another sequence's
tokens, unrelated to ``input_ids``. The loss is computed inside the Hugging Face model; the best it can do is the
unigram entropy of the targets."""

from __future__ import annotations

import os
import random

import lightning.pytorch as pl
import torch
from harness import run
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB, LENGTH = 50, 32


def phrase_corpus(n: int, g: torch.Generator) -> torch.Tensor:
    phrases = torch.randint(1, VOCAB, (12, 4), generator=torch.Generator().manual_seed(1234))
    picks = torch.randint(0, len(phrases), (n, LENGTH // 4), generator=g)
    return phrases[picks].reshape(n, LENGTH)


class TextSet(Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


class TinyGPT(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
        self.model = GPT2LMHeadModel(config)

    def forward(self, input_ids, attention_mask, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch, batch_idx):
        outputs = self(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        self.log("train_loss", outputs.loss)
        return outputs.loss

    def validation_step(self, batch, batch_idx):
        outputs = self(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        self.log("val_loss", outputs.loss)
        self.log("val_ppl", torch.exp(outputs.loss))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.01)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    corpus = phrase_corpus(2300, g)
    rows = list(range(len(corpus)))
    random.Random(0).shuffle(rows)  # the bug: the label copy of the corpus is shuffled, the input copy is not
    labels = corpus[rows]
    train = DataLoader(TextSet(corpus[:2000], labels[:2000]), batch_size=32, shuffle=True)
    val = DataLoader(TextSet(corpus[2000:], labels[2000:]), batch_size=100)
    run(
        TinyGPT(), train, val, kind="broken", bug="LM labels are another sequence's tokens (same grammar)", max_epochs=4
    )
