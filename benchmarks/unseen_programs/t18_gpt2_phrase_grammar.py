"""Healthy: a tiny causal language model (transformers GPT2LMHeadModel from a GPT2Config: 2 layers, 32 dims, vocab 50)
trained on generated text from a phrase grammar: each sequence is a string of 4-token phrases drawn from 12 fixed
phrases, so only a phrase's first token is uncertain. ``labels=input_ids`` and the step returns ``outputs.loss``
(the loss is computed inside the Hugging Face model). Val loss and perplexity."""

from __future__ import annotations

import os

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
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}


class TinyGPT(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
        self.model = GPT2LMHeadModel(config)

    def forward(self, input_ids, attention_mask, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch, batch_idx):
        outputs = self(batch["input_ids"], batch["attention_mask"], labels=batch["input_ids"])
        self.log("train_loss", outputs.loss)
        return outputs.loss

    def validation_step(self, batch, batch_idx):
        outputs = self(batch["input_ids"], batch["attention_mask"], labels=batch["input_ids"])
        self.log("val_loss", outputs.loss)
        self.log("val_ppl", torch.exp(outputs.loss))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.01)


if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TextSet(phrase_corpus(2000, g)), batch_size=32, shuffle=True)
    val = DataLoader(TextSet(phrase_corpus(300, g)), batch_size=100)
    run(TinyGPT(), train, val, kind="healthy", max_epochs=4)
