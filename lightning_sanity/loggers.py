"""One adapter between the sanity callbacks and whatever Lightning loggers the user attached."""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from torch import Tensor


def scalar_key(callback: str, split: str, metric: str) -> str:
    """The one naming scheme for logged scalars: ``sanity/<callback>/<split>/<metric>``."""
    return f"sanity/{callback}/{split}/{metric}"


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float | Tensor]) -> None:
    """Send ``metrics`` to every attached logger at the current global step (rank zero only).

    Written to the loggers directly rather than through ``LightningModule.log`` so that our
    scalars never enter ``callback_metrics`` (where they could collide with a monitored key or
    the progress bar) and can be logged from any hook. Tensors are read to the host here, so
    call this only on the steps that log.
    """
    if trainer.global_rank != 0 or not trainer.loggers or not metrics:
        return
    values = {key: float(value) for key, value in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)
