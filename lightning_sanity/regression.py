"""Regression runs judged: R² against predicting the training mean, constant predictions, and what the training
loss says about why."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_sanity.base import collect_findings, is_int, require, resolve_findings
from lightning_sanity.learnability import CHANCE_Z
from lightning_sanity.loggers import log_scalars, scalar_key
from lightning_sanity.observe import StepObserver, dataloader_label
from lightning_sanity.progress import has_trained, held_since, remaining_epochs
from lightning_sanity.regression_metrics import (
    CONSTANT_SHARE,
    LOSS_KINDS,
    EpochFit,
    RegressionSummary,
    RegressionSums,
    TrainingFit,
    as_columns,
    at_mean_checks,
    beats_the_mean,
    fit_evidence,
    is_at_mean,
)
from lightning_sanity.task import Task
from lightning_sanity.task_callback import TaskCallback
from lightning_sanity.triage import input_cause

FITTED_DESPITE_SCALE = 0.5
"""A validation R² clearly above 0 that explains at least half of the targets' variance around the training mean: the
model learned far more than the mean, so a step-0 ``target.unscaled`` (which says it would not) did not come true and
is marked resolved (calibrate_task_checks.py counts a run with unscaled targets as learned at half the R² of its
standardised twin; raw diabetes targets under Adam 3e-2 to 3e-1 reach 0.60, stuck runs stay near 0)."""
UNSCALED_RATIO = 10.0
"""Training targets whose mean lies this many standard deviations from 0, or whose standard deviation is this far
from 1 (either way), are named as unscaled in the story of a model that never beat their mean (target.unscaled's
own threshold is in docs/findings.md)."""


class RegressionCallback(TaskCallback):
    """Judge a regression run's evaluation: R² against predicting the training targets' mean, constant predictions.

    Idle unless the run's task (decided once on the first training steps by whichever callback gets there first, this
    one included when used alone, read with :func:`lightning_sanity.run.task_of`) is a regression:
    an MSE, L1 or smooth-L1 loss on real-valued targets. Predictions are read like ConfusionCallback reads class
    scores (the output the training loss reads, from the step's output or its forward calls), lined up with the
    targets as ``[N, E]`` values per sample (``[N]``, ``[N, 1]``, ``[N, K]``, a forecast ``[N, horizon]``), and summed
    per split and dataloader on the device. Each validation logs ``sanity/regression/<split>/r2`` (against the
    training mean), ``mse`` and ``mae``.

    The training side is measured on the same batches: each step's loss next to the loss the best constant
    prediction (the targets' mean for an MSE, their median for L1) gets on that step's targets, a paired difference
    whose noise is the model's, not the batches'. Finding: ``eval.regression_at_mean`` (the regression twin of
    ``eval.chance_level``), when after ``min_epochs`` the validation R² is within noise of 0 or the predictions are
    constant at two consecutive validations, and the training loss either never beat the mean (the model learned the
    mean at most) or beat it while nothing of that transfers (memorising, or validation targets distributed
    differently); resolved (``Finding.resolved_epoch``) once the run breaks out.

    Args:
        min_epochs: Training epochs before the verdict may be made.
        strict: Raise on the first ERROR finding.
        batch_adapter: ``batch -> (inputs, targets)`` for batches we cannot read.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Example::

        callback = RegressionCallback()
        trainer = Trainer(callbacks=[ModelChecksCallback(), callback])
        trainer.fit(model, datamodule)
        print(callback.summaries["val"].r2)  # R² against predicting the training mean
    """

    name: ClassVar[str] = "regression"
    kind: ClassVar[str] = "regression"
    unread_hint: ClassVar[str] = (
        "Return the predictions from the step (e.g. `return {'preds': y_hat}`) or call `self(x)` in it, with as many "
        "values per sample as the targets; or pass batch_adapter=lambda batch: (inputs, targets)."
    )
    batch_checks: ClassVar[str] = "R² against the training mean (eval.regression_at_mean)"

    def __init__(
        self,
        *,
        min_epochs: int = 2,
        strict: bool = False,
        batch_adapter: Callable[[Any], Any] | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(strict=strict, batch_adapter=batch_adapter, ignore=ignore, severity=severity)
        require(is_int(min_epochs) and min_epochs >= 1, "min_epochs", "an int >= 1", min_epochs)
        self.min_epochs = min_epochs
        self.summaries: dict[str, RegressionSummary] = {}
        """The last :class:`~lightning_sanity.regression_metrics.RegressionSummary` per split label."""
        self.history: dict[str, list[RegressionSummary]] = {}
        """Per validation label, one summary per validation epoch of the fit."""
        self.fit: TrainingFit | None = None
        """The training steps' losses next to the best constant prediction's (:class:`TrainingFit`)."""
        self._sums: dict[tuple[str, int], RegressionSums] = {}
        self._suspicious: dict[str, int] = {}

    # ----------------------------------------------------------------- the task
    @override
    def accepts(self, task: Task) -> bool:
        """A regression with outputs and targets to read, under a loss whose best constant is known."""
        return super().accepts(task) and task.loss in LOSS_KINDS

    @override
    def adopt(self, task: Task) -> None:
        super().adopt(task)
        self.fit = TrainingFit(task.loss or "mse")

    # ---------------------------------------------------------------- training
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.fit, self.history, self._suspicious = None, {}, {}

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        task = self.run_task(trainer)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if task is None or self.fit is None or not isinstance(loss, Tensor) or loss.numel() != 1:
            return
        targets = self.targets_of(trainer, task, batch)
        if targets is not None and targets.is_floating_point():
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self.fit.track(loss * scale, targets)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.fit is not None:
            self.fit.end_epoch()

    @override
    def align(self, output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
        return as_columns(output, targets)

    @override
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
        aligned = self.predictions_of(trainer, pl_module, task, split, outputs, batch, observer)
        if aligned is None:
            return
        predictions, targets = aligned
        sums = self._sums.get((split, loader))
        if sums is None:
            shift = self.fit.reference_mean() if self.fit is not None else None
            shift = shift if shift is not None and shift.numel() == predictions.shape[1] else None
            sums = self._sums[(split, loader)] = RegressionSums(predictions.shape[1], shift).to(pl_module.device)
        if sums.columns == predictions.shape[1]:
            sums.update(predictions, targets)

    # ------------------------------------------------------------- epoch end
    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish_split(trainer, "val")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_split(trainer, "test")

    def _finish_split(self, trainer: pl.Trainer, split: str) -> None:
        for loader in sorted(loader for s, loader in self._sums if s == split):
            sums = self._sums.pop((split, loader))  # a new epoch measures against the training mean of its time
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an epoch with no update on this rank still has to join the sync
                values = sums.compute()
            summary = RegressionSummary.from_sums(values, training_reference=sums.shift_is_reference)
            if summary is None:
                continue
            label = dataloader_label(split, loader)
            self.summaries[label] = summary
            suffix = f"/dataloader_idx_{loader}" if loader else ""
            log_scalars(
                trainer,
                {
                    scalar_key(self.name, split, f"r2{suffix}"): summary.r2,
                    scalar_key(self.name, split, f"mse{suffix}"): summary.mse,
                    scalar_key(self.name, split, f"mae{suffix}"): summary.mae,
                },
            )
            self._judge(trainer, split, label, summary)

    # --------------------------------------------------------------- judging
    def _judge(self, trainer: pl.Trainer, split: str, label: str, summary: RegressionSummary) -> None:
        epochs = self.fit.so_far() if self.fit is not None else []
        fitting = split == "val" and trainer.state.fn == TrainerFn.FITTING
        history = self.history.setdefault(label, []) if fitting else []  # a test or validate run: on its own
        history.append(summary)
        r2s = [entry.r2 for entry in history]
        trained = has_trained(trainer, self.min_epochs) and summary.reference == "training mean"
        steps, remaining = trainer.global_step, remaining_epochs(trainer, split)
        learning = fit_evidence(epochs, history, steps, remaining) if trained else None
        holds = is_at_mean(summary)
        count = self._suspicious.get(label, 0) + 1 if holds and learning is not None else 0
        if holds and learning == "at the mean":
            # a training loss at the mean for epochs: the validations before the verdict could be made count too
            count = max(count, held_since([is_at_mean(entry) for entry in history]))
        self._suspicious[label] = count
        if split == "val" and beats_the_mean(summary):
            self.resolve("eval.regression_at_mean", label, trainer.current_epoch)
        if split == "val" and beats_the_mean(summary) and summary.r2 >= FITTED_DESPITE_SCALE:
            # target.unscaled warned at step 0 that the model would learn little more than the mean: it did
            resolve_findings(trainer, "target.unscaled", trainer.current_epoch)
        if learning is None or count < (1 if split == "test" else 2):
            return
        message, hint, evidence = _verdict(trainer, label, summary, learning, epochs, r2s)
        self.record_verdict(trainer, "eval.regression_at_mean", None, message, hint, subject=label, evidence=evidence)

    # --------------------------------------------------------------- report
    @override
    def report_sections(self) -> list[tuple[str, str]]:
        if not self.summaries:
            return []
        lines = [
            f"{label}: R² {s.r2:.3f} ± {s.r2_noise:.3f} against the {s.reference} (usual R² {s.r2_own:.3f}), "
            f"MSE {s.mse:.4g}, MAE {s.mae:.4g}, {s.samples} samples"
            for label, s in self.summaries.items()
        ]
        return [("Regression (last epoch)", "\n".join(lines))]


def _verdict(
    trainer: pl.Trainer,
    label: str,
    summary: RegressionSummary,
    learning: str,
    epochs: Sequence[EpochFit],
    r2s: Sequence[float],
) -> tuple[str, str, dict[str, Any]]:
    """The message, hint and evidence of ``eval.regression_at_mean`` on ``label``."""
    checks = at_mean_checks(summary)
    latest = epochs[-1]
    reference_mse = summary.mse / (1.0 - summary.r2) if summary.r2 < 1 else math.nan
    what = (
        f"After {trainer.current_epoch + 1} epoch(s) the {label} predictions do no better than predicting the "
        f"training targets' mean: R² {summary.r2:.3f} ± {summary.r2_noise:.3f} against it, {summary.r2_own:.3f} ± "
        f"{summary.r2_own_noise:.3f} against the split's own mean (MSE {summary.mse:.4g}, the training mean's "
        f"{reference_mse:.4g}, {summary.samples} samples)"
    )
    if checks["constant"]:
        what += (
            f", and they barely vary (std {summary.prediction_std:.3g} against the targets' {summary.target_std:.3g},"
            f" at most {CONSTANT_SHARE:.0%})"
        )
    mean, std = latest.target_mean[0], latest.target_std[0]
    losses = ", ".join(f"{epoch.loss:.4g}" for epoch in epochs[-4:])
    if learning == "at the mean":
        when = "is back at" if any(epoch.beats_the_mean() for epoch in epochs) else "never went below"
        story = (
            f"The training loss {when} the loss of predicting the mean ({latest.baseline:.4g}; epochs: {losses}), so "
            "the model learned the mean at most (ruled out: memorising, it fits nothing of the training data either)"
        )
        unscaled = std > 0 and (abs(mean) > UNSCALED_RATIO * std or not 1 / UNSCALED_RATIO <= std <= UNSCALED_RATIO)
        if unscaled:
            story += (
                f": the training targets are far from standardised (mean {mean:.4g}, std {std:.4g}), so the updates "
                "go into the output's offset"
            )
            hint = (
                "Standardise the targets with the training split's mean and std (invert it on the predictions), or "
                "build the mean and std into the head."
            )
        elif checks["constant"]:
            story += ": the model's output does not depend on its input"
            hint = (
                "Check that forward uses its input (not multiplied by zero, detached or replaced by a constant); "
                "then the learning rate."
            )
        else:
            story += ": targets that do not belong to their inputs, a learning rate far too small, or a model that "
            story += "ignores its input"
            hint = (
                "Check that each target is joined to its own input, that forward uses its input, and the learning "
                "rate (Tuner.lr_find); standardise inputs and targets."
            )
    else:
        story = (
            f"The training loss fell to {latest.loss:.4g}, {latest.r2:.0%} below the loss of predicting the mean "
            f"({latest.baseline:.4g}), while the {label} R² stays at {summary.r2:.3f}: the model fits its training "
            "targets and nothing of it transfers (ruled out: a learning rate or a model that cannot fit)"
        )
        shift_noise = summary.target_std / math.sqrt(max(summary.samples, 1))
        cause = input_cause(collect_findings(trainer))
        if abs(summary.target_mean - mean) > max(CHANCE_Z * shift_noise, 0.25 * std):
            story += (
                f": the {label} targets are distributed differently (mean {summary.target_mean:.4g}, std "
                f"{summary.target_std:.4g}; training mean {mean:.4g}, std {std:.4g})"
            )
            hint = "Build the validation targets the way the training targets are built (same units, scaling, column)."
        elif cause is not None:
            story += f": the {label} inputs differ from the training inputs ({cause})"
            hint = "Preprocess every split's inputs the same way, with the training split's statistics."
        else:
            story += ": training targets that do not belong to their inputs (one side shuffled or joined to the "
            story += "wrong rows), or validation inputs unlike the training inputs"
            hint = (
                "Check that each target is joined to its own input in every split, and that validation inputs are "
                "preprocessed as the training ones."
            )
    evidence: dict[str, Any] = {
        "split": label,
        "samples": summary.samples,
        "r2": round(summary.r2, 4),
        "r2_noise": round(summary.r2_noise, 4),
        "r2_own": round(summary.r2_own, 4),
        "r2_own_noise": round(summary.r2_own_noise, 4),
        "mse": summary.mse,
        "mae": summary.mae,
        "mean_mse": reference_mse,
        "target_mean": summary.target_mean,
        "target_std": summary.target_std,
        "prediction_std": summary.prediction_std,
        "constant_predictions": checks["constant"],
        "training": learning,
        "epoch_train_losses": [epoch.loss for epoch in epochs[-4:]],
        "epoch_mean_losses": [epoch.baseline for epoch in epochs[-4:]],
        "train_r2": [round(epoch.r2, 4) for epoch in epochs[-4:]],
        "val_r2": [round(r2, 4) for r2 in r2s[-4:]],
        "train_target_mean": mean,
        "train_target_std": std,
    }
    return f"{what}. {story}.", hint, evidence
