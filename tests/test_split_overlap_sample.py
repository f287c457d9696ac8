"""The split-overlap check hashes a fixed-size sample: its cost and coverage do not depend on the dataset's size."""

from __future__ import annotations

import time
from typing import Any

import torch
from support import codes, sanity_warnings
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import Severity, TransformParityCallback, collect_findings
from lightning_sanity.demos import Classifier, mlp

TRAIN_ROWS = 400_000


def big_train() -> torch.Tensor:
    """Distinct rows (the row number is a feature), many more than the callback hashes."""
    rows = torch.randn(TRAIN_ROWS, 13, generator=torch.Generator().manual_seed(0))
    rows[:, 0] = torch.arange(TRAIN_ROWS, dtype=torch.float32)
    return rows


def fit_with(make_trainer: Any, train: torch.Tensor, val: torch.Tensor) -> tuple[Any, float]:
    labels = torch.zeros(len(train), dtype=torch.long)
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_steps=1, limit_val_batches=1)
    started = time.process_time()
    with sanity_warnings():
        trainer.fit(
            Classifier(mlp(13, 3)),
            DataLoader(TensorDataset(train, labels), batch_size=64),
            DataLoader(TensorDataset(val, torch.zeros(len(val), dtype=torch.long)), batch_size=64),
        )
    return trainer, time.process_time() - started


def test_val_copied_from_a_large_train_set_is_found_from_a_sample_and_says_so(make_trainer: Any) -> None:
    train = big_train()
    val = train[torch.randperm(TRAIN_ROWS, generator=torch.Generator().manual_seed(1))[:20_000]].clone()
    trainer, _ = fit_with(make_trainer, train, val)
    [overlap] = [f for f in collect_findings(trainer) if f.code == "data.split_overlap"]
    assert overlap.severity is Severity.ERROR
    sampled = overlap.evidence["sampled"]
    assert sampled["train_items"] == TRAIN_ROWS and sampled["train_hashed"] == 50_000
    assert sampled["other_items"] == 20_000 and sampled["other_hashed"] == 5_000
    assert 0.7 <= overlap.evidence["fraction"] <= 1.0
    assert "estimated from a fixed-seed sample" in overlap.message


def test_disjoint_large_splits_are_quiet_and_the_check_cost_is_bounded(make_trainer: Any) -> None:
    train = big_train()
    val = big_train()[:20_000] + 0.5  # other rows, same size
    trainer, seconds = fit_with(make_trainer, train, val)
    assert "data.split_overlap" not in codes(trainer)
    small, small_seconds = fit_with(make_trainer, train[:50_000], val)
    assert "data.split_overlap" not in codes(small)
    assert seconds < small_seconds + 1.0  # 8x the rows, hashing the same number of them
