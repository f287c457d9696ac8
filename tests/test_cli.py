"""Every sanity callback is configurable from a LightningCLI YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI
from support import problems

import lightning_sanity as ls
from lightning_sanity.demos import Classifier, WineDataModule, mlp


class WineClassifier(Classifier):
    def __init__(self, hidden: int = 16, lr: float = 1e-2) -> None:
        super().__init__(mlp(13, 3, hidden), lr)


CONFIG = """
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  callbacks:
    - class_path: lightning_sanity.TransformParityCallback
      init_args: {strict: true}
    - class_path: lightning_sanity.BatchStatsCallback
    - class_path: lightning_sanity.GradientFlowCallback
      init_args: {dense_steps: 5, every_n_steps: 10, figure_every_n_epochs: 0}
    - class_path: lightning_sanity.ConfusionCallback
      init_args: {max_classes: 64}
    - class_path: lightning_sanity.ModeGuardCallback
      init_args: {allow_stochastic_eval: true}
"""


def test_callbacks_configured_from_yaml_run_a_fit(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    cli = LightningCLI(WineClassifier, WineDataModule, args=["fit", "--config", str(config)], save_config_callback=None)
    callbacks = [cb for cb in cli.trainer.callbacks if isinstance(cb, ls.SanityCallback)]
    assert [type(cb).__name__ for cb in callbacks] == [
        "TransformParityCallback", "BatchStatsCallback", "GradientFlowCallback", "ConfusionCallback",
        "ModeGuardCallback",
    ]  # fmt: skip
    assert callbacks[0].strict and callbacks[2].dense_steps == 5 and callbacks[3].max_classes == 64
    assert cli.trainer.state.finished
    assert problems(cli.trainer) == []


def test_bad_yaml_value_fails_fast(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("dense_steps: 5", "dense_steps: -5"))
    with pytest.raises((ValueError, SystemExit)):
        LightningCLI(WineClassifier, WineDataModule, args=["fit", "--config", str(config)], save_config_callback=None)
