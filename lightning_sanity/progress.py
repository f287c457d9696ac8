"""How far training has come: what every verdict about learning waits for, shared by the evaluation callbacks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn

from lightning_sanity import compat

# The calibration behind the number is in docs/findings.md (ConfusionCallback section).
MIN_VERDICT_STEPS = 10
"""Optimizer steps before a verdict about learning: full-batch training takes one step per epoch (a graph's node
classification), and after ``min_epochs`` such epochs the model has barely started (its predictions are still one
class). The earliest verdict of the trigger tests comes at 27 steps."""


def has_trained(trainer: pl.Trainer, min_epochs: int) -> bool:
    """Whether ``min_epochs`` training epochs, and :data:`MIN_VERDICT_STEPS` optimizer steps, ran in this trainer
    (the running epoch counts during fit)."""
    completed = compat.completed_epochs(trainer)
    epochs = completed + (trainer.state.fn == TrainerFn.FITTING) >= min_epochs
    return epochs and trainer.global_step >= MIN_VERDICT_STEPS


def held_since(held: Sequence[bool]) -> int:
    """For how many of the latest validations a check held, from whether it ``held`` at each (oldest first).

    Example::

        >>> held_since([False, True, False, True, True])
        2
    """
    count = 0
    for holds in reversed(held):
        if not holds:
            break
        count += 1
    return count


def remaining_epochs(trainer: pl.Trainer, split: str) -> float:
    """Training epochs planned after the current one (by ``max_epochs`` and ``max_steps``; unbounded: inf), 0 once
    training is over (a test or validate run)."""
    if split != "val" or trainer.state.fn != TrainerFn.FITTING:
        return 0.0
    epochs = trainer.max_epochs
    remaining = math.inf if epochs is None or epochs < 0 else float(epochs - trainer.current_epoch - 1)
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step > 0:
        per_epoch = trainer.global_step / (trainer.current_epoch + 1)
        remaining = min(remaining, (trainer.max_steps - trainer.global_step) / per_epoch)
    return max(remaining, 0.0)
