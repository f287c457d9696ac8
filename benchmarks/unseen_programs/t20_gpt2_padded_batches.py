"""Healthy: the tiny GPT-2 on the phrase grammar with variable-length sequences (8-32 tokens) right-padded with a
pad id, an attention_mask, and labels set to -100 on the padding (the usual DataCollatorForLanguageModeling
output). The loss is computed inside the Hugging Face model."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from harness import run
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB, LENGTH, PAD = 50, 32, 0


def phrase_corpus(n: int, g: torch.Generator) -> torch.Tensor:
    phrases = torch.randint(1, VOCAB, (12, 4), generator=torch.Generator().manual_seed(1234))
    picks = torch.randint(0, len(phrases), (n, LENGTH // 4), generator=g)
    return phrases[picks].reshape(n, LENGTH)


class TextSet(Dataset):
    def __init__(self, ids: torch.Tensor, g: torch.Generator) -> None:
        self.texts = [
            row[: int(n)] for row, n in zip(ids, torch.randint(8, LENGTH + 1, (len(ids),), generator=g), strict=True)
        ]

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i]


def pad_collate(texts):
    width = max(len(t) for t in texts)
    input_ids = torch.full((len(texts), width), PAD)
    attention_mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, t in enumerate(texts):
        input_ids[row, : len(t)], attention_mask[row, : len(t)] = t, 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class TinyGPT(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        config = GPT2Config(vocab_size=VOCAB, pad_token_id=PAD, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
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
    train = DataLoader(TextSet(phrase_corpus(2000, g), g), batch_size=32, shuffle=True, collate_fn=pad_collate)
    val = DataLoader(TextSet(phrase_corpus(300, g), g), batch_size=100, collate_fn=pad_collate)
    run(TinyGPT(), train, val, kind="healthy", max_epochs=4)
