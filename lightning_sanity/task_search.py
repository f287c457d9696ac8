"""Finding the run's task on its first training steps, for every callback that reads it.

Each callback that judges by the task (ConfusionCallback, RegressionCallback, MultiLabelCallback) owns a
:class:`TaskSearch`; the first to decide publishes the task on the run (:func:`lightning_sanity.run.publish_task`), the
others read it there, so a callback used alone still finds its task and a pack decides it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_sanity import run as sanity_run
from lightning_sanity.batch import BatchParts
from lightning_sanity.losses import LossContext
from lightning_sanity.observe import StepObserver
from lightning_sanity.task import PAIRING_STEPS, Task, decide_task, pairing_targets


class TaskSearch:
    """Decide the run's task from the first ``PAIRING_STEPS`` training steps (a host read on those steps only).

    Example::

        search = TaskSearch()
        # on_train_batch_start: capture the step's forward calls while it has no task and search.looking(adapter)
        task = search.step(trainer, pl_module, outputs, batch, lambda: self.split_batch(trainer, batch), observer)
    """

    def __init__(self) -> None:
        self.tries = 0
        """Training steps looked at."""
        self.losses_tried = 0
        """Of those, steps whose returned loss was recomputed from the captured outputs and batch tensors."""
        self.candidates: list[tuple[int | str | None, Tensor]] = []
        """The batch tensors tried as targets on the last step recomputed (for the message of an unknown task)."""

    def reset(self) -> None:
        """Start over (a new fit)."""
        self.tries, self.losses_tried, self.candidates = 0, 0, []

    def looking(self, adapter: bool) -> bool:
        """Whether this search still looks at training steps (a ``batch_adapter`` names the targets itself: nothing
        to decide); the callback asks only while it has no task."""
        return not adapter and self.tries < PAIRING_STEPS

    def step(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        parts: Callable[[], BatchParts | None],
        observer: StepObserver | None,
    ) -> Task | None:
        """The run's task after this training step: read when published, else decided from this step and published
        (``unknown`` once ``PAIRING_STEPS`` steps reproduced no loss); ``None`` while still undecided."""
        self.tries += 1
        task = sanity_run.task_of(trainer)
        if task is not None:
            return task
        task = self._decide(trainer, pl_module, outputs, batch, parts, observer)
        if task is None and (self.tries < PAIRING_STEPS or self.losses_tried == 0):
            return None
        return sanity_run.publish_task(trainer, task or Task("unknown"))

    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        parts: Callable[[], BatchParts | None],
        observer: StepObserver | None,
    ) -> Task | None:
        """The task of this step (:func:`~lightning_sanity.task.decide_task`); ``None`` when it returned no finite
        loss or no pair reproduced it."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point() or observer is None:
            return None
        split = parts()
        if split is None:
            return None
        scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        value = float(loss.detach()) * scale
        if not math.isfinite(value):
            return None
        self.losses_tried += 1
        self.candidates = pairing_targets(batch, split)
        return decide_task(observer, batch, split, value, LossContext.of(pl_module))
