"""No observer effect: our callbacks must not change what the user's run computes."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

import lightning_sanity as ls
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN

MEAN, STD = [0.2, 0.2, 0.2], [0.3, 0.3, 0.3]


def fit_weights(make_trainer: Any, callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
    pl.seed_everything(7, workers=True)
    train = DigitImages(
        T.Compose(
            [T.RandomResizedCrop(32, scale=(0.7, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
        ),
        split="train",
    )
    val = DigitImages(T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]), split="val")
    model = Classifier(SmallCNN(10, width=8), lr=1e-2)
    trainer = make_trainer(callbacks=callbacks, max_epochs=2, limit_train_batches=8, limit_val_batches=3)
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_with_default_callbacks_ends_with_bit_identical_weights(make_trainer: Any) -> None:
    without = fit_weights(make_trainer, [])
    with_callbacks = fit_weights(make_trainer, ls.default_callbacks())
    assert without.keys() == with_callbacks.keys()
    different = [k for k in without if not torch.equal(without[k], with_callbacks[k])]
    assert different == []


class ConsumesRng(pl.Callback):
    def on_train_batch_start(self, *args: Any) -> None:
        torch.rand(1)


def test_the_comparison_detects_a_callback_that_consumes_the_rng(make_trainer: Any) -> None:
    without = fit_weights(make_trainer, [])
    observed = fit_weights(make_trainer, [ConsumesRng()])
    assert any(not torch.equal(without[k], observed[k]) for k in without)
