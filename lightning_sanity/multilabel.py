"""Multi-label evaluation: per-label counts over every validation (and test) epoch, and what they reveal."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_sanity import run as sanity_run
from lightning_sanity.base import collect_findings, is_number, require
from lightning_sanity.findings import Severity
from lightning_sanity.learnability import binomial_noise
from lightning_sanity.logged_accuracy import MISMATCH_TOLERANCE, closest_reading, logged_accuracies
from lightning_sanity.loggers import log_scalars, scalar_key
from lightning_sanity.multilabel_metrics import (
    READINGS,
    MultiLabelCounts,
    MultiLabelEpoch,
    MultiLabelSummary,
    beats_the_prior,
    element_losses,
    labels_told_apart,
    multilabel_learning,
    told_apart_margin,
    verdict_checks,
)
from lightning_sanity.observe import StepObserver, dataloader_label
from lightning_sanity.progress import has_trained, held_since, remaining_epochs
from lightning_sanity.task import Task
from lightning_sanity.task_callback import TaskCallback
from lightning_sanity.train_loss import TrainLossHistory
from lightning_sanity.triage import input_cause
from lightning_sanity.verdicts import memorising_cause

PROBABILITY_LOSSES = frozenset({"bce", "BCELoss"})
"""Losses on probabilities (functional, or the ``torch.nn`` module by class name): their outputs split at 0.5."""
MULTILABEL_LOSSES = PROBABILITY_LOSSES | {"bce_with_logits", "BCEWithLogitsLoss"}
"""Losses whose outputs are one independent score per label, judged against the prevalences (the BCE prior)."""


def multilabel_scores(output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(scores, targets)`` when ``output`` holds one score per label of ``[N, C]`` ``targets``; ``None`` otherwise.

    Example::

        >>> import torch
        >>> multilabel_scores(torch.zeros(4, 3), torch.ones(4, 3)) is not None
        True
        >>> multilabel_scores(torch.zeros(4, 2), torch.ones(4, 3)) is None
        True
    """
    if targets.ndim != 2 or output.shape != targets.shape or not output.is_floating_point():
        return None
    return output, targets


class MultiLabelCallback(TaskCallback):
    """Accumulate per-label counts of a multi-label model over every validation (and test) epoch and judge them.

    Runs only when the run's task (:func:`lightning_sanity.run.task_of`, decided once on the first training steps by
    whichever callback gets there first, this one included when used alone) is multi-label:
    ``[N, C]`` scores against multi-hot ``[N, C]`` targets; otherwise it captures nothing. Predictions are read where
    the training loss reads them (the task's pairing), thresholded at 0 for logits and at 0.5 for probabilities
    (a ``bce`` loss), and counted on the device per (split, dataloader). Per validation epoch it logs
    ``sanity/multilabel/<split>/micro_f1``, ``macro_f1``, ``samples_f1``, ``subset_acc``, ``hamming_acc``.

    Findings: ``eval.multilabel_collapse`` (every label predicted the same whatever the input),
    ``eval.multilabel_chance_level`` (no label told apart), both judged like the classification verdicts (after
    ``min_epochs``, at two consecutive validations, with the training-loss story, resolved when the run breaks out),
    and ``eval.multilabel_metric_mismatch`` (a logged F1 / accuracy that no correct accumulation gives).

    Args:
        min_epochs: Training epochs before a verdict about learning may be made.
        compare_keys: Logged metric names to check against the accumulated readings, besides the auto-detected ones
            (names containing ``f1`` or ``acc`` logged during that split).
        threshold: The score above which a label counts as predicted; ``None`` decides by the loss (0 for logits,
            0.5 for probabilities).
        report_labels: Largest number of labels whose prevalence and predicted rate the run report tabulates.
        strict: Raise on the first ERROR finding.
        batch_adapter: ``batch -> (inputs, targets)`` for batches we cannot read.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Example::

        callback = MultiLabelCallback(compare_keys=["val/f1"])
        trainer = Trainer(callbacks=[ModelChecksCallback(), callback])
        trainer.fit(model, datamodule)
        print(callback.summaries["val"].micro_f1)
    """

    name: ClassVar[str] = "multilabel"
    kind: ClassVar[str] = "multilabel"
    unread_hint: ClassVar[str] = (
        "Return the [N, C] label scores from the step (e.g. `return {'logits': logits}`) or call `self(x)` in it, with "
        "multi-hot [N, C] targets (or pass batch_adapter=lambda batch: (inputs, targets))."
    )
    batch_checks: ClassVar[str] = "multi-label F1, prevalence and learnability verdicts (eval.multilabel_*)"

    def __init__(
        self,
        *,
        min_epochs: int = 2,
        compare_keys: Sequence[str] = (),
        threshold: float | None = None,
        report_labels: int = 20,
        strict: bool = False,
        batch_adapter: Callable[[Any], Any] | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(strict=strict, batch_adapter=batch_adapter, ignore=ignore, severity=severity)
        require(isinstance(min_epochs, int) and min_epochs >= 1, "min_epochs", "an int >= 1", min_epochs)
        require(
            not isinstance(compare_keys, str) and all(isinstance(k, str) for k in compare_keys),
            "compare_keys",
            "a sequence of metric names",
            compare_keys,
        )
        require(
            threshold is None or (is_number(threshold) and math.isfinite(threshold)),
            "threshold",
            "None or a finite number",
            threshold,
        )
        require(isinstance(report_labels, int) and report_labels >= 0, "report_labels", "an int >= 0", report_labels)
        self.min_epochs = min_epochs
        self.compare_keys = tuple(compare_keys)
        self.threshold = threshold
        self.report_labels = report_labels
        self.summaries: dict[str, MultiLabelSummary] = {}
        """Last :class:`~lightning_sanity.multilabel_metrics.MultiLabelSummary` per split label."""
        self.history: dict[str, list[MultiLabelEpoch]] = {}
        """Per validation label, one entry per validation epoch of the fit: what the verdicts are judged on."""
        self.train_losses = TrainLossHistory()
        self._counts: dict[tuple[str, int], MultiLabelCounts] = {}
        self._suspicious: dict[str, int] = {}
        self._label_names: list[str] | None = None

    # ---------------------------------------------------------------- training
    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # from the first step on, until the run's task is known to be another kind
        if self.task is not None or sanity_run.task_of(trainer) is None or self.run_task(trainer) is not None:
            self.train_losses.track(trainer, pl_module, outputs)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_losses.end_epoch()

    @override
    def align(self, output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
        return multilabel_scores(output, targets)

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
        scores, targets = aligned
        reader = self.reader(split)
        if reader.batches_checked < 3:  # a host read on the first batches only
            reader.batches_checked += 1
            if not bool(((targets == 0) | (targets == 1)).all()):
                reader.not_classification(trainer, "the targets are not multi-hot (values other than 0 and 1)")
                return
        probabilities = task.loss in PROBABILITY_LOSSES
        if self.threshold is not None:
            threshold: float | Tensor = self.threshold
        elif probabilities:
            threshold = 0.5
        else:
            # logits, unless the whole batch lies in [0, 1]: a sigmoid already applied (a bug output.activated names)
            # is still read as the user reads it, at 0.5; decided on the device, no host read
            inside = ((scores >= 0) & (scores <= 1)).all()
            threshold = torch.where(inside, 0.5, 0.0).to(scores.dtype)
        counts = self._counts.get((split, loader))
        if counts is None:
            counts = self._counts[(split, loader)] = MultiLabelCounts(scores.shape[1]).to(pl_module.device)
        if counts.num_labels == scores.shape[1]:
            counts.update(scores > threshold, targets > 0.5, element_losses(scores, targets, probabilities))

    # ------------------------------------------------------------- epoch end
    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish_split(trainer, "val")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_split(trainer, "test")

    def _finish_split(self, trainer: pl.Trainer, split: str) -> None:
        self._label_names = self._label_names or _label_names(trainer)
        logged = logged_accuracies(trainer, split, self.compare_keys, tokens=("acc", "f1"))
        for loader in sorted(loader for s, loader in self._counts if s == split):
            counts = self._counts[(split, loader)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an epoch with no update on this rank still has to join the sync
                values = counts.compute()
            counts.reset()
            summary = MultiLabelSummary.from_counts(values)
            if summary.samples == 0:
                continue
            label = dataloader_label(split, loader)
            self.summaries[label] = summary
            self._log_summary(trainer, split, loader, summary)
            per_batch = {name: float(values[name]) for name in values if name.startswith("batch_")}
            for key, value in logged.get(loader, {}).items():
                self._check_logged(trainer, label, key, value, summary, per_batch)
            self._judge(trainer, split, label, summary)

    def _log_summary(self, trainer: pl.Trainer, split: str, loader: int, summary: MultiLabelSummary) -> None:
        suffix = f"/dataloader_idx_{loader}" if loader else ""
        readings = {
            "micro_f1": summary.micro_f1,
            "macro_f1": summary.macro_f1,
            "samples_f1": summary.samples_f1,
            "subset_acc": summary.subset_accuracy,
            "hamming_acc": summary.hamming_accuracy,
        }
        log_scalars(trainer, {scalar_key(self.name, split, f"{k}{suffix}"): v for k, v in readings.items()})

    # ------------------------------------------------------- logged metrics
    def _check_logged(
        self,
        trainer: pl.Trainer,
        label: str,
        key: str,
        logged: float,
        summary: MultiLabelSummary,
        per_batch: Mapping[str, float],
    ) -> None:
        """A logged F1 or accuracy must match one correct reading of the same batches (``eval.multilabel_metric_
        mismatch``); a per-batch mean only explains how a wrong value arose."""
        if not math.isfinite(logged):
            return
        correct, batch_means = correct_readings(key, summary, per_batch)
        tolerance = MISMATCH_TOLERANCE
        if trainer.world_size > 1:  # a value logged without sync_dist is one rank's: allow its sampling noise
            tolerance += 4 * binomial_noise(0.5, summary.samples // trainer.world_size)
        _, _, distance = closest_reading(logged, correct)
        if distance <= tolerance:
            return
        name, value, batch_distance = closest_reading(logged, {**correct, **batch_means})
        if name in batch_means and batch_distance <= tolerance:
            explanation = (
                f"it matches the {name} ({value:.4f}): a metric computed per batch and averaged over the epoch is "
                "not the epoch's value"
            )
            hint = (
                "Update a torchmetrics metric in the step and log the metric object itself (`self.f1(logits, y); "
                "self.log(key, self.f1)`), not the tensor it returns per batch, so Lightning computes it over the "
                "whole epoch."
            )
        else:
            name, value, _ = closest_reading(logged, correct)
            explanation = f"closest correct reading: {name} {value:.4f}"
            hint = (
                "The evaluation code miscounts: accumulate TP/FP/FN (or correct counts) with `+=` (not `=`) and reset "
                "per epoch, divide by the number of samples (x labels for Hamming accuracy), or log a torchmetrics "
                "MultilabelF1Score / MultilabelAccuracy object (`self.log(key, self.f1)`) that does it right."
            )
        self.record(
            trainer,
            "eval.multilabel_metric_mismatch",
            Severity.ERROR,
            f"Logged {key!r} = {logged:.4f} but over the same {label} batches ({summary.samples} samples, "
            f"{summary.labels} labels) the micro F1 is {summary.micro_f1:.4f}, macro F1 {summary.macro_f1:.4f}, "
            f"subset accuracy {summary.subset_accuracy:.4f}, Hamming accuracy {summary.hamming_accuracy:.4f}; "
            f"{explanation}.",
            hint,
            subject=f"{label}:{key}",
            evidence={
                "key": key,
                "logged": logged,
                **{reading: round(v, 6) for reading, v in correct.items()},
                "distance": distance,
                "closest_reading": name,
                "closest_value": value,
                "tolerance": tolerance,
                "samples": summary.samples,
            },
        )

    # --------------------------------------------------------------- judging
    def _judge(self, trainer: pl.Trainer, split: str, label: str, summary: MultiLabelSummary) -> None:
        task = self.task
        if task is None or (task.loss not in MULTILABEL_LOSSES and self.threshold is None):
            return  # a softmax over multi-hot targets (loss.softmax_multilabel) has no per-label threshold to judge
        epochs = self.train_losses
        losses, noise = epochs.so_far() if split == "val" else (epochs.epoch_losses, epochs.epoch_noise)
        history = self._remember(trainer, split, label, summary, losses)
        learning = (
            multilabel_learning(losses, history, trainer.global_step, remaining_epochs(trainer, split), noise)
            if has_trained(trainer, self.min_epochs)
            else None
        )
        checks = verdict_checks(summary)
        for code, holds in checks.items():
            key = f"{code}:{label}"
            count = self._suspicious.get(key, 0) + 1 if holds and learning is not None else 0
            if holds and learning in ("stuck", "never below the prior", "constant throughout"):
                count = max(count, held_since([verdict_checks(e.summary)[code] for e in history]))
            self._suspicious[key] = count
        if split == "val" and (labels_told_apart(summary) or beats_the_prior(summary)):
            for code in checks:
                self.resolve(code, label, trainer.current_epoch)
        needed = 1 if split == "test" else 2
        for code in checks:
            if learning is None or self._suspicious[f"{code}:{label}"] < needed:
                continue
            story = learning_story(learning, losses, history, input_cause(collect_findings(trainer)))
            message, hint = verdict_text(code, label, summary, story, self._label_name)
            evidence = self._evidence(label, summary, learning, losses, history)
            self.record_verdict(trainer, code, None, message, hint, subject=label, evidence=evidence)

    def _remember(
        self, trainer: pl.Trainer, split: str, label: str, summary: MultiLabelSummary, losses: Sequence[float]
    ) -> list[MultiLabelEpoch]:
        """Append this validation to the fit's history of ``label``; a test or validate run is judged on its own."""
        entry = MultiLabelEpoch(trainer.current_epoch, trainer.global_step, losses[-1] if losses else None, summary)
        if split != "val" or trainer.state.fn != TrainerFn.FITTING:
            return [entry]
        history = self.history.setdefault(label, [])
        history.append(entry)
        return history

    def _evidence(
        self,
        label: str,
        summary: MultiLabelSummary,
        learning: str,
        losses: Sequence[float],
        history: Sequence[MultiLabelEpoch],
    ) -> dict[str, Any]:
        shown = range(min(summary.labels, self.report_labels))
        return {
            "split": label,
            "samples": summary.samples,
            "labels": summary.labels,
            "micro_f1": round(summary.micro_f1, 4),
            "macro_f1": round(summary.macro_f1, 4),
            "constant_micro_f1": round(summary.constant_micro_f1(), 4),
            "prevalence": {self._label_name(c): round(summary.prevalence[c], 4) for c in shown},
            "predicted_rate": {self._label_name(c): round(summary.predicted_rate[c], 4) for c in shown},
            "best_label_margin": round(max((told_apart_margin(summary, c) for c in summary.varying()), default=0), 3),
            "training": learning,
            "epoch_train_losses": [round(loss, 4) for loss in losses[-4:]],
            "eval_losses": [
                None if e.summary.eval_loss is None else round(e.summary.eval_loss, 4) for e in history[-4:]
            ],
            "prior_bce": round(summary.prior_bce, 4),
        }

    def _label_name(self, index: int) -> str:
        if self._label_names is not None and index < len(self._label_names):
            return self._label_names[index]
        return str(index)

    # --------------------------------------------------------------- report
    @override
    def report_sections(self) -> list[tuple[str, str]]:
        return [
            (f"Multi-label prevalence vs predicted rate ({label}, last epoch)", self.format_labels(summary))
            for label, summary in self.summaries.items()
            if 0 < summary.labels <= self.report_labels
        ]

    def format_labels(self, summary: MultiLabelSummary) -> str:
        """One row per label: its prevalence, predicted rate and F1, then the micro/macro F1 line."""
        names = [self._label_name(c) for c in range(summary.labels)]
        width = max(5, *(len(name) for name in names))
        rows = [f"{'label'.ljust(width)}  prevalence  predicted     F1"]
        for name, prevalence, rate, f1 in zip(
            names, summary.prevalence, summary.predicted_rate, summary.f1_scores, strict=True
        ):
            rows.append(f"{name.ljust(width)}  {prevalence:10.3f}  {rate:9.3f}  {f1:5.3f}")
        rows.append(f"micro F1 {summary.micro_f1:.3f}, macro F1 {summary.macro_f1:.3f}, {summary.samples} samples")
        return "\n".join(rows)


def correct_readings(
    key: str, summary: MultiLabelSummary, per_batch: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """The correct readings a logged ``key`` may be (F1s for an ``f1`` key, accuracies for an ``acc`` key, all of them
    otherwise), and the per-batch means of the same readings that only explain a wrong value.

    Example::

        >>> summary = MultiLabelSummary(10, (4, 2), (5, 2), (4, 3), exact=7, samples_f1=0.8)
        >>> sorted(correct_readings("val_acc", summary, {})[0])  # doctest: +NORMALIZE_WHITESPACE
        ['accumulated Hamming accuracy', 'accumulated accuracy of label 0', 'accumulated accuracy of label 1',
         'accumulated subset accuracy']
    """
    lowered = key.lower()
    f1 = {
        "accumulated micro F1": summary.micro_f1,
        "accumulated macro F1": summary.macro_f1,
        "accumulated macro F1 over present labels": summary.present_macro_f1,
        "accumulated weighted F1": summary.weighted_f1,
        "accumulated samples F1": summary.samples_f1,
    }
    accuracy = {
        "accumulated subset accuracy": summary.subset_accuracy,
        "accumulated Hamming accuracy": summary.hamming_accuracy,
    }
    # one label's own F1 or accuracy (a rare label's, logged beside the average) is a correct reading too
    for label, (label_f1, tp, predicted, actual) in enumerate(
        zip(summary.f1_scores, summary.true_positives, summary.predicted, summary.actual, strict=True)
    ):
        f1[f"accumulated F1 of label {label}"] = label_f1
        accuracy[f"accumulated accuracy of label {label}"] = 1.0 - (predicted + actual - 2 * tp) / max(
            summary.samples, 1
        )
    wanted = ("f1",) if "f1" in lowered else ("acc",) if "acc" in lowered else ("f1", "acc")
    correct = {**(f1 if "f1" in wanted else {}), **(accuracy if "acc" in wanted else {})}
    batch_means = {}
    for name in READINGS:
        if not any(kind in name for kind in wanted):
            continue
        words = name.replace("_", " ").replace(" f1", " F1").replace("hamming", "Hamming")
        batch_means[f"per-batch mean of the {words}"] = per_batch.get(f"batch_{name}", math.nan)
        batch_means[f"batch-size weighted per-batch mean of the {words}"] = per_batch.get(
            f"batch_{name}_weighted", math.nan
        )
    return correct, {name: value for name, value in batch_means.items() if math.isfinite(value)}


def learning_story(
    learning: str, losses: Sequence[float], history: Sequence[MultiLabelEpoch], input_code: str | None = None
) -> str:
    """One clause saying what the training side measured, with its numbers (what was ruled out)."""
    prior = history[-1].summary.prior_bce if history else math.nan
    eval_losses = [e.summary.eval_loss for e in history if e.summary.eval_loss is not None]
    recent = ", ".join(f"{v:.3f}" for v in losses[-4:])
    if learning == "memorising" and len(eval_losses) >= 2:
        cause = memorising_cause(input_code)
        return (
            f"the training loss fell from {losses[0]:.3f} to {losses[-1]:.3f} while the validation BCE went from "
            f"{eval_losses[0]:.3f} to {eval_losses[-1]:.3f} (predicting the prevalences scores {prior:.3f}): the "
            f"model memorises its training labels and nothing of it transfers: {cause}"
        )
    if learning == "constant throughout":
        return f"at all {len(history)} validations of the run the predicted label set was the same for every sample"
    if learning == "stuck":
        return (
            f"the training loss sits at {prior:.3f}, the BCE of predicting each label's prevalence ({recent}): the "
            "model learned the label frequencies and nothing else"
        )
    if learning == "never below the prior":
        return (
            f"the training loss never went below {prior:.3f}, the BCE of predicting each label's prevalence "
            f"({recent}): the model learned nothing beyond the label frequencies"
        )
    return (
        f"the training loss fell from {losses[0]:.3f} to {min(losses):.3f} (predicting the prevalences scores "
        f"{prior:.3f}), so the model did train"
    )


def verdict_text(
    code: str, label: str, summary: MultiLabelSummary, story: str, label_name: Callable[[int], str]
) -> tuple[str, str]:
    """The message and hint of ``eval.multilabel_collapse`` / ``eval.multilabel_chance_level`` on ``label``."""
    varying = summary.varying()
    positive = [label_name(c) for c in varying if summary.predicted_rate[c] >= 0.5]
    rates = ", ".join(
        f"{label_name(c)!r} {summary.prevalence[c]:.1%} true / {summary.predicted_rate[c]:.1%} predicted"
        for c in varying[:8]
    ) + (", ..." if len(varying) > 8 else "")
    scores = (
        f"micro F1 {summary.micro_f1:.3f} (ignoring the input scores up to {summary.constant_micro_f1():.3f}), "
        f"macro F1 {summary.macro_f1:.3f}, validation BCE "
        + (f"{summary.eval_loss:.3f}" if summary.eval_loss is not None else "unmeasured")
        + f" vs {summary.prior_bce:.3f} for predicting the prevalences"
    )
    if code == "eval.multilabel_collapse":
        what = (
            "every label negative"
            if not positive
            else "every label positive"
            if len(positive) == len(varying)
            else f"the same label set {positive}"
        )
        return (
            f"The model predicts {what} for (nearly) every {label} sample while the targets vary ({rates}); "
            f"{scores}; {story}.",
            "The model ignores its input: check that the multi-hot targets are aligned with the inputs (not "
            "shuffled or joined separately), that the outputs are raw logits for BCEWithLogitsLoss (no sigmoid "
            "before it), that pos_weight is per label and about negatives/positives, and the learning rate.",
        )
    told_apart = labels_told_apart(summary)
    measured = (
        f"the micro F1 is no higher than ignoring the input gets, and the labels whose balanced accuracy looks above "
        f"50 % ({', '.join(repr(label_name(c)) for c in told_apart)}) are within what look-alike inputs given random "
        "labels reach"
        if told_apart
        else f"for each of the {len(varying)} labels whose targets vary, balanced accuracy is within noise of 50 %"
    )
    return (
        f"No {label} label is predicted better than by ignoring the input: {measured} ({rates}); {scores}; {story}.",
        "The predictions do not follow the labels: check label alignment (targets shuffled or joined to other "
        "rows), the train/val preprocessing, and the learning rate (far too small leaves the random initial "
        "outputs).",
    )


def _label_names(trainer: pl.Trainer) -> list[str] | None:
    """``classes`` / ``labels`` of the datamodule or of the first validation dataset, when present."""
    loaders = getattr(trainer, "val_dataloaders", None)
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    for source in (getattr(trainer, "datamodule", None), getattr(loader, "dataset", None)):
        for attribute in ("labels_names", "label_names", "classes"):
            names = getattr(source, attribute, None)
            if isinstance(names, (list, tuple)) and names:
                return [str(n) for n in names]
    return None
