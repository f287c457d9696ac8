"""The fit's training loss, epoch by epoch: what every verdict about learning reads it from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_sanity.eval_metrics import TrainLoss
from lightning_sanity.folding import FOLD_BATCHES


class TrainLossHistory:
    """Epoch-mean training losses of a fit, their standard errors and the lowest step loss.

    :meth:`track` keeps a detached reference to each step's returned loss (no host read) and hands them to a
    :class:`~lightning_sanity.eval_metrics.TrainLoss` every ``FOLD_BATCHES`` steps; :meth:`end_epoch` closes an epoch.
    Losses are scaled back by ``accumulate_grad_batches`` (Lightning divides the returned loss by it).

    Example::

        history = TrainLossHistory()
        history.track(trainer, pl_module, outputs)  # in on_train_batch_end
        history.end_epoch()  # in on_train_epoch_end
        losses, noise = history.so_far()
    """

    def __init__(self) -> None:
        self.epoch_losses: list[float] = []
        """Epoch-mean training loss of every completed epoch with a finite mean."""
        self.epoch_noise: list[float] = []
        """Standard error of each of :attr:`epoch_losses`."""
        self.lowest = math.inf
        """The lowest step loss of the completed epochs."""
        self._metric: TrainLoss | None = None
        self._pending: list[Tensor] = []
        self._scale = 1

    def track(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> None:
        """Keep the step's returned loss (``outputs`` or ``outputs["loss"]``), if it is one finite-able scalar."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            return
        self._scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        self._pending.append(loss.detach())
        if len(self._pending) >= FOLD_BATCHES:
            self._fold()

    def _fold(self) -> TrainLoss | None:
        """Hand the kept step losses to the epoch's metric; it, or ``None`` before any step's loss."""
        pending, self._pending = self._pending, []
        if pending:
            if self._metric is None:
                self._metric = TrainLoss().to(pending[0].device)
            self._metric.update(torch.cat([loss.reshape(1) for loss in pending]) * self._scale)
        return self._metric

    def end_epoch(self) -> None:
        """Close the training epoch: its mean (if finite) joins :attr:`epoch_losses`."""
        metric = self._fold()
        if metric is None:
            return
        mean, lowest, noise = (float(v) for v in metric.compute())
        metric.reset()
        if math.isfinite(mean):
            self.epoch_losses.append(mean)
            self.epoch_noise.append(noise if math.isfinite(noise) else 0.0)
            self.lowest = min(self.lowest, lowest)

    def running_lowest(self) -> float:
        """The lowest step loss of the running epoch so far (inf before its first step)."""
        metric = self._fold()
        if metric is None or not metric.update_called:
            return math.inf
        return float(metric.compute()[1])

    def so_far(self) -> tuple[list[float], list[float]]:
        """Epoch-mean training losses and their standard errors, with the running epoch's so far (validation runs
        before the epoch ends)."""
        losses, noise = list(self.epoch_losses), list(self.epoch_noise)
        metric = self._fold()
        if metric is None or not metric.update_called:
            return losses, noise
        mean, _, error = (float(v) for v in metric.compute())
        if not math.isfinite(mean):
            return losses, noise
        return [*losses, mean], [*noise, error if math.isfinite(error) else 0.0]
