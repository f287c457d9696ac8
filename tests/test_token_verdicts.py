"""Token classification (a ``token`` task: ``[N, L, C]`` scores, ``-100`` padding) judged by ConfusionCallback: padding
never counted, a tagger that learned the tags stays quiet, one trained on tags shuffled away from their tokens is told
it learned nothing."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from support import codes, problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import ConfusionCallback, Severity

VOCAB, TAGS, LENGTH, PAD = 40, 5, 12, 0


def sequences(n: int, seed: int, tags_shuffled: bool = False) -> tuple[Tensor, Tensor]:
    """``n`` token sequences of 4-12 tokens padded with ``PAD``; each token's tag is ``token % TAGS`` (``-100`` on
    padding), or, with ``tags_shuffled``, a tag drawn from the other real tokens' tags (no longer their tokens')."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=generator)
    padding = torch.arange(LENGTH)[None, :] >= lengths[:, None]
    tokens[padding] = PAD
    tags = torch.where(padding, torch.full_like(tokens, -100), tokens % TAGS)
    if tags_shuffled:
        real = tags[~padding]
        tags[~padding] = real[torch.randperm(len(real), generator=generator)]
    return tokens, tags


class Tagger(pl.LightningModule):
    """Embedding, a GRU and a linear head: ``[N, L, C]`` logits, cross-entropy with ``ignore_index=-100``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=PAD)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, TAGS)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        tokens, tags = batch
        return F.cross_entropy(self(tokens).flatten(0, 1), tags.flatten(), ignore_index=-100)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        tokens, tags = batch
        self.log("val_loss", F.cross_entropy(self(tokens).flatten(0, 1), tags.flatten(), ignore_index=-100))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(make_trainer: Any, tags_shuffled: bool, epochs: int) -> tuple[pl.Trainer, ConfusionCallback]:
    pl.seed_everything(0, verbose=False)
    callback = ConfusionCallback()
    trainer = make_trainer(callbacks=[callback], max_epochs=epochs)
    train = TensorDataset(*sequences(256, seed=1, tags_shuffled=tags_shuffled))
    trainer.fit(Tagger(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(TensorDataset(*VAL), 64))
    assert "sanity.internal_error" not in codes(trainer)
    return trainer, callback


VAL = sequences(128, seed=2)


def test_healthy_tagger_stays_quiet_and_never_counts_padding(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, tags_shuffled=False, epochs=4)
    assert problems(trainer) == []
    assert callback.task is not None and callback.task.kind == "token" and callback.task.ignore_index == -100
    matrix = callback.confusion_matrix
    assert matrix is not None and matrix.shape == (TAGS, TAGS)
    assert int(matrix.sum()) == int((VAL[1] != -100).sum()) < VAL[1].numel()  # padding is never counted
    assert callback.summaries["val"].accuracy > 0.9


def test_tags_shuffled_away_from_their_tokens_are_at_chance(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, tags_shuffled=True, epochs=6)
    verdicts = {f.code: f for f in callback.findings if f.code.startswith("eval.") and f.severity >= Severity.WARNING}
    assert {"eval.chance_level", "eval.prediction_collapse"} & verdicts.keys(), list(verdicts)
    verdict = verdicts.get("eval.chance_level") or verdicts["eval.prediction_collapse"]
    assert verdict.subject == "val" and verdict.resolved_epoch is None
    assert verdict.evidence["samples"] == int((VAL[1] != -100).sum())  # judged per real token
    assert "tag sequence belongs to its tokens" in verdict.hint
    assert callback.summaries["val"].balanced_accuracy < 0.3
