"""The whole pack on healthy programs in every Trainer configuration people use: quiet, and never in the way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from support import problems
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity.demos import GAN, Classifier, mlp, wine_tensors


def loaders(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=batch_size, shuffle=True)
    return train, DataLoader(TensorDataset(*wine_tensors("val")), batch_size=batch_size)


def internal_errors(trainer: pl.Trainer) -> list[str]:
    return [f.message for f in ls.collect_findings(trainer) if f.code == "sanity.internal_error"]


def fit_quietly(make_trainer: Any, model: pl.LightningModule | None = None, **trainer_kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0)
    options = {"max_epochs": 3, **trainer_kwargs}
    trainer = make_trainer(callbacks=ls.default_callbacks(), **options)
    trainer.fit(model or Classifier(mlp(13, 3)), *loaders())
    assert internal_errors(trainer) == []
    assert problems(trainer) == []
    return trainer


@pytest.mark.parametrize(
    "trainer_kwargs",
    [
        {"precision": "bf16-mixed"},
        {"accumulate_grad_batches": 4},
        {"gradient_clip_val": 0.5},
        {"limit_val_batches": 0},
        {"fast_dev_run": True},
        {"max_steps": 13},
        {"num_sanity_val_steps": 0},
        {"val_check_interval": 0.5},
    ],
    ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()),
)
def test_healthy_fit_is_quiet_in_every_configuration(make_trainer: Any, trainer_kwargs: dict[str, Any]) -> None:
    fit_quietly(make_trainer, **trainer_kwargs)


class TwoValLoaders(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def test_several_val_dataloaders(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=3)
    train, val = loaders()
    trainer.fit(TwoValLoaders(mlp(13, 3)), train, [val, val])
    assert internal_errors(trainer) == [] and problems(trainer) == []


def test_manual_optimisation_with_two_optimizers(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=3)
    trainer.fit(GAN(), loaders()[0])
    assert internal_errors(trainer) == [] and problems(trainer) == []


@pytest.mark.slow
def test_compiled_module(make_trainer: Any) -> None:
    model = Classifier(mlp(13, 3))
    model.net = torch.compile(model.net)  # type: ignore[assignment]
    fit_quietly(make_trainer, model, max_epochs=2)


@pytest.mark.parametrize("run", ["validate", "test", "predict"])
def test_evaluation_runs_alone(make_trainer: Any, run: str) -> None:
    trainer = make_trainer(callbacks=ls.default_callbacks())
    model = Classifier(mlp(13, 3))
    val = loaders()[1]
    if run == "predict":
        trainer.predict(model, DataLoader(wine_tensors("val")[0], batch_size=16))
    else:
        getattr(trainer, run)(model, val)
    assert internal_errors(trainer) == [] and problems(trainer) == []


def test_resume_from_checkpoint_mid_training(make_trainer: Any, tmp_path: Path) -> None:
    first = fit_quietly(make_trainer, max_epochs=2, enable_checkpointing=True)
    checkpoint = first.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=4)
    trainer.fit(Classifier(mlp(13, 3)), *loaders(), ckpt_path=checkpoint)
    assert trainer.current_epoch == 4
    assert internal_errors(trainer) == [] and problems(trainer) == []
