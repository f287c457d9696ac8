"""Scalars and figures reach real loggers writing real files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import SanityCallback
from lightning_sanity.demos import Classifier, mlp, wine_tensors
from lightning_sanity.figures import confusion_figure
from lightning_sanity.loggers import figure_file_name, log_scalars, scalar_key


class DrawsEveryEpoch(SanityCallback):
    """Logs one scalar and one figure per epoch through the shared adapter."""

    name = "draws"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(figure_every_n_epochs=1, **kwargs)
        self.open_figures_after_log: list[int] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_scalars(trainer, {scalar_key(self.name, "train", "epoch_marker"): float(trainer.current_epoch)})
        if self.figures_wanted(trainer):
            self.log_figure(trainer, "train", "matrix", confusion_figure(torch.eye(3, dtype=torch.long)))
            self.open_figures_after_log.append(len(plt.get_fignums()))


def fit(make_trainer: Any, logger: Any, epochs: int = 2, **kwargs: Any) -> DrawsEveryEpoch:
    callback = DrawsEveryEpoch(**kwargs)
    data = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=32)
    make_trainer(callbacks=[callback], logger=logger, max_epochs=epochs).fit(Classifier(mlp(13, 3)), data)
    return callback


def test_tensorboard_receives_scalars_and_images(make_trainer: Any, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    fit(make_trainer, logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "sanity/draws/train/matrix" in events.Tags()["images"]
    assert len(events.Images("sanity/draws/train/matrix")) == 2
    assert "sanity/draws/train/epoch_marker" in events.Tags()["scalars"]
    assert {"sanity/errors", "sanity/warnings"} <= set(events.Tags()["scalars"])
    assert (Path(logger.log_dir) / "sanity_report_fit.json").exists()


def test_csv_gets_columns_and_png_files_linked_from_the_markdown_report(make_trainer: Any, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    fit(make_trainer, logger)
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"sanity/draws/train/epoch_marker", "sanity/errors", "sanity/warnings"} <= set(header)
    pngs = sorted(p.name for p in (Path(logger.log_dir) / "sanity").glob("*.png"))
    assert pngs == [figure_file_name("sanity/draws/train/matrix", 1)]  # rendered once, at the end, the last figure
    markdown = (Path(logger.log_dir) / "sanity_report_fit.md").read_text()
    assert f"(sanity/{pngs[0]})" in markdown


def test_mlflow_local_store_receives_figure_artifacts(make_trainer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(experiment_name="sanity", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    fit(make_trainer, logger)
    written = [Path(root) / f for root, _, files in os.walk(tmp_path / "mlruns") for f in files]
    assert any(p.name == figure_file_name("sanity/draws/train/matrix", 1) for p in written)
    metric = ("metrics", "sanity", "draws", "train", "epoch_marker")
    assert any(p.parts[-len(metric) :] == metric for p in written)


def test_wandb_offline_run_receives_images(make_trainer: Any, tmp_path: Path, monkeypatch: Any) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="sanity")
    fit(make_trainer, logger)
    logger.experiment.finish()
    images = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".png")]
    assert len(images) >= 2


def test_two_loggers_both_receive_figures(make_trainer: Any, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    fit(make_trainer, [tensorboard, csv])
    events = EventAccumulator(tensorboard.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "sanity/draws/train/matrix" in events.Tags()["images"]
    assert len(list((Path(csv.log_dir) / "sanity").glob("*.png"))) == 1


def test_no_logger_writes_nothing_unless_save_dir(make_trainer: Any, tmp_path: Path) -> None:
    fit(make_trainer, False)
    assert list(tmp_path.rglob("*.png")) == []
    fit(make_trainer, False, save_dir=str(tmp_path / "figures"))
    assert len(list((tmp_path / "figures" / "sanity").glob("*.png"))) == 1


@pytest.mark.slow
def test_no_figure_stays_open_over_fifty_epochs(make_trainer: Any, tmp_path: Path) -> None:
    callback = fit(make_trainer, CSVLogger(tmp_path), epochs=50)
    assert callback.open_figures_after_log == [0] * 50
