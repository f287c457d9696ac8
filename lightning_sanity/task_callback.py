"""The shape of a callback that judges one kind of task: idle unless the run's task is its kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_sanity import run as sanity_run
from lightning_sanity.base import EvalSplit, SanityCallback
from lightning_sanity.batch import BatchAdapter, tensor_at
from lightning_sanity.eval_predictions import SplitReader
from lightning_sanity.observe import StepCapture, StepObserver
from lightning_sanity.task import Task
from lightning_sanity.task_search import TaskSearch


class TaskCallback(SanityCallback):
    """A :class:`~lightning_sanity.SanityCallback` that judges runs whose task (:class:`~lightning_sanity.task.Task`)
    is of one :attr:`kind`, and captures nothing on any other run.

    It reads the run's task (:func:`lightning_sanity.run.task_of`); used alone, it decides it itself on the first
    training steps (:class:`~lightning_sanity.task_search.TaskSearch`), so the pack decides it once whoever gets
    there first. A validate / test run after the fit judges the fit's task. During evaluation of a run of its kind it
    observes the step's forward calls (:class:`~lightning_sanity.observe.StepCapture`) and hands them to
    :meth:`observe_eval_batch`.

    Example::

        class RankingCallback(TaskCallback):
            name = "ranking"
            kind = "multilabel"

            def align(self, output, targets):
                return (output, targets) if output.shape == targets.shape else None

            def observe_eval_batch(self, trainer, pl_module, task, split, outputs, batch, loader, observer):
                aligned = self.predictions_of(trainer, pl_module, task, split, outputs, batch, observer)
                ...  # accumulate on the device; judge at on_validation_end
    """

    kind: ClassVar[str] = ""
    """The :attr:`Task.kind <lightning_sanity.task.Task.kind>` this callback judges."""
    unread_hint: ClassVar[str] = (
        "Return the predictions from the step (e.g. `return {'preds': y_hat}`) or call `self(x)` in it, shaped like "
        "the targets; or pass batch_adapter=lambda batch: (inputs, targets)."
    )
    """The fix hint when a split's outputs do not line up with its targets."""

    def __init__(
        self,
        *,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        figure_every_n_epochs: int = 0,
        save_dir: str | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            strict=strict, batch_adapter=batch_adapter, figure_every_n_epochs=figure_every_n_epochs, save_dir=save_dir
        )
        self.configure_findings(ignore, severity)
        self.task: Task | None = None
        """The run's task once published, if it is of this callback's kind (``None``: nothing is judged)."""
        self._capture = StepCapture()
        self._search = TaskSearch()
        self._readers: dict[str, SplitReader] = {}

    def accepts(self, task: Task) -> bool:
        """Whether this callback judges ``task``: its kind, with outputs and targets to read."""
        return task.kind == self.kind and task.pairing is not None

    def adopt(self, task: Task) -> None:
        """Take ``task`` as the run's (called when it is first read, or changes): a subclass sets up what it needs."""
        self.task = task

    def run_task(self, trainer: pl.Trainer) -> Task | None:
        """The run's task if this callback judges it, else ``None``."""
        task = sanity_run.task_of(trainer)
        if task is None and self.task is not None and trainer.state.fn != TrainerFn.FITTING:
            task = sanity_run.publish_task(trainer, self.task)  # a validate / test run after the fit
        if task is None or not self.accepts(task):
            return None
        if self.task != task:
            self.adopt(task)
        return task

    def align(self, output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
        """Line ``output`` up with ``targets`` as this callback reads them; ``None`` when their shapes do not fit."""
        raise NotImplementedError

    def reader(self, split: str) -> SplitReader:
        """What this callback knows about reading ``split``'s predictions (said once when they cannot be read)."""
        if split not in self._readers:
            owner = type(self).__name__
            self._readers[split] = SplitReader(
                split, self.record, None, owner=owner, align=self.align, unread_hint=self.unread_hint
            )
        return self._readers[split]

    def targets_of(self, trainer: pl.Trainer, task: Task, batch: Any) -> Tensor | None:
        """The batch tensor the training loss reads as its targets (a graph's cut to the split's nodes)."""
        parts = self.split_batch(trainer, batch)
        if parts is None or task.pairing is None:
            return None
        where = task.pairing.target
        targets = tensor_at(batch, where) if where is not None else None
        return parts.targets if targets is None else parts.select(targets)

    def predictions_of(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        task: Task,
        split: str,
        outputs: Any,
        batch: Any,
        observer: StepObserver,
    ) -> tuple[Tensor, Tensor] | None:
        """An evaluation batch's ``(predictions, targets)`` lined up by :meth:`align`: from the output the training
        loss reads, found like ConfusionCallback finds class scores (:class:`SplitReader`)."""
        reader = self.reader(split)
        if reader.classification is False:  # said once: this split's outputs are not what this callback reads
            return None
        parts = self.split_batch(trainer, batch)
        targets = self.targets_of(trainer, task, batch)
        if parts is None or parts.inputs is None or targets is None or task.pairing is None:
            return None
        return reader.aligned_scores(trainer, pl_module, outputs, observer, parts, targets, task.pairing.source)

    def _searching(self) -> bool:
        return self.task is None and self._search.looking(self.batch_adapter is not None)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.task = None
        self._search.reset()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._capture.stop()
        super().on_exception(trainer, pl_module, exception)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._capture.stop()
        if self._searching() and sanity_run.task_of(trainer) is None:
            # used alone, this callback decides the run's task itself from the first steps' forward calls
            self._capture.start(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        observer = self._capture.stop()
        if self._searching():
            self._search.step(trainer, pl_module, outputs, batch, lambda: self.split_batch(trainer, batch), observer)

    @override
    def on_eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: EvalSplit,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        self._capture.stop()
        if split != "predict" and not trainer.sanity_checking and self.run_task(trainer) is not None:
            self._capture.start(pl_module)

    @override
    def on_eval_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        split: EvalSplit, dataloader_idx: int,
    ) -> None:  # fmt: skip
        observer = self._capture.stop()
        task = self.run_task(trainer)
        if observer is not None and task is not None and split != "predict":
            self.observe_eval_batch(trainer, pl_module, task, split, outputs, batch, dataloader_idx, observer)

    def observe_eval_batch(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        task: Task,
        split: str,
        outputs: Any,
        batch: Any,
        loader: int,
        observer: StepObserver,
    ) -> None:
        """Read one evaluation batch of a run of this callback's kind (its step's forward calls in ``observer``)."""

    @override
    def release(self) -> None:
        self._capture.stop()
