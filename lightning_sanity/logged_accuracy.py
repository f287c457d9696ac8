"""Logged accuracies: which metrics the user logged are epoch accuracies, and whether each is the accumulated one.

:class:`~lightning_sanity.ConfusionCallback` counts every evaluation batch itself
(:mod:`lightning_sanity.eval_metrics`); an accuracy the user logged for the same split must match one of its correct
readings (micro or macro). When it does not, the per-batch means of the same counts tell how the wrong value arose (a
metric computed per batch and averaged over the epoch) or that the evaluation code miscounts:
``eval.metric_mismatch``.

On a segmentation (a ``dense`` task) logged IoU / Jaccard and Dice / F1 scores are checked the same way, against
every correct reading of the same counts (:mod:`lightning_sanity.overlap`: pooled or averaged over classes, with or
without class 0, absent classes left out or counted 0 or 1, per-batch means weighted by batch size or not, and one
minus a logged Dice / Jaccard loss): an IoU assigned per batch instead of accumulated, computed on the argmax of the
wrong dimension or against the wrong masks matches none of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_sanity import compat
from lightning_sanity.learnability import ConfusionSummary, binomial_noise
from lightning_sanity.overlap import OVERLAP_READINGS, overlap_scores

_NOT_ACCURACY_TOKENS = ("best", "max", "min", "top", "ema", "std", "var", "diff", "gap", "delta", "loss", "train")
OVERLAP_TOKENS = {"IoU": ("iou", "jaccard"), "Dice": ("dice", "f1")}
"""What a logged metric's name contains to be read as an IoU or a Dice score (on a segmentation only: a token
tagger's F1 is usually seqeval's entity-level F1, which no token count gives)."""
_PER_IMAGE_TOKENS = ("image", "sample", "instance")
"""A score averaged per image (smp's ``micro-imagewise``) is not read from pooled or per-batch counts."""
_PER_IMAGE_METRICS = frozenset({"MeanIoU", "DiceScore", "GeneralizedDiceScore"})
"""torchmetrics.segmentation metrics, which average per image: a module holding one logs scores no count here gives."""
_EVAL_HOOKS = {"val": ("validation_step", "on_validation"), "test": ("test_step", "on_test")}

# Thresholds; the calibration behind each number is in docs/findings.md (ConfusionCallback section).
MISMATCH_TOLERANCE = 0.05
"""Absolute accuracy difference tolerated between a logged accuracy and the closest correct reading."""


@dataclass(frozen=True)
class Mismatch:
    """What ``eval.metric_mismatch`` says about one logged accuracy."""

    message: str
    hint: str
    evidence: dict[str, Any]


def closest_reading(logged: float, readings: Mapping[str, float]) -> tuple[str, float, float]:
    """The correct accuracy reading closest to ``logged`` (also tried as a percentage): name, value, distance.

    Example::

        >>> closest_reading(81.0, {"accumulated accuracy": 0.8, "accumulated macro accuracy": 0.7})[:2]
        ('accumulated accuracy', 0.8)
    """
    candidates = [logged] + ([logged / 100.0] if 1.0 < logged <= 100.0 else [])
    return min(
        ((name, value, abs(candidate - value)) for name, value in readings.items() for candidate in candidates),
        key=lambda item: item[2],
    )


def metric_mismatch(
    world_size: int,
    label: str,
    key: str,
    logged: float,
    summary: ConfusionSummary,
    correct: Mapping[str, float],
    per_batch: Mapping[str, float],
) -> Mismatch | None:
    """A logged accuracy must match an accumulated one (``correct``); a per-batch mean only explains how a wrong
    value arose. ``None`` when it matches (or is not finite)."""
    if not math.isfinite(logged):
        return None
    tolerance = MISMATCH_TOLERANCE
    if world_size > 1:
        # a value logged without sync_dist is one rank's: allow its sampling noise
        tolerance += 4 * binomial_noise(0.5, summary.total // world_size)
    _, _, distance = closest_reading(logged, correct)
    if distance <= tolerance:
        return None
    name, value, batch_distance = closest_reading(logged, {**correct, **per_batch})
    if name in per_batch and batch_distance <= tolerance:
        explanation = (
            f"it matches the {name} of the per-batch values ({value:.4f}): a metric computed per batch and "
            "averaged over the epoch is not the epoch's accuracy"
        )
        hint = (
            "Update a torchmetrics metric in the step and log the metric object itself (`self.acc(preds, y); "
            "self.log(key, self.acc)`), not the tensor it returns per batch, so Lightning computes it over the "
            "whole epoch; a per-batch macro average is only right when every batch holds every class."
        )
    else:
        name, value, _ = closest_reading(logged, correct)
        explanation = f"closest correct reading: {name} {value:.4f}"
        hint = (
            "The evaluation code miscounts: accumulate with `+=` (not `=`) and reset per epoch, divide by the "
            "number of samples, or log a torchmetrics Accuracy object (`self.log(key, self.acc)`) that does it "
            "right."
        )
    return Mismatch(
        f"Logged {key!r} = {logged:.4f} but the accuracy accumulated over the same {label} batches is "
        f"{summary.accuracy:.4f} (macro {summary.macro_accuracy:.4f}, {summary.total} samples); {explanation}.",
        hint,
        {
            "key": key,
            "logged": logged,
            "accumulated_accuracy": summary.accuracy,
            "accumulated_macro_accuracy": summary.macro_accuracy,
            "distance": distance,
            "closest_reading": name,
            "closest_value": value,
            "tolerance": tolerance,
            "samples": summary.total,
        },
    )


def overlap_metric(key: str) -> str | None:
    """``"IoU"`` or ``"Dice"`` when the logged ``key`` names one (:data:`OVERLAP_TOKENS`), else ``None``.

    Example::

        >>> overlap_metric("val/mIoU"), overlap_metric("val_dice"), overlap_metric("val_f1"), overlap_metric("val_acc")
        ('IoU', 'Dice', 'Dice', None)
    """
    lowered = key.lower()
    return next((metric for metric, tokens in OVERLAP_TOKENS.items() if any(t in lowered for t in tokens)), None)


def overlap_readings(
    metric: str, summary: ConfusionSummary, values: Mapping[str, Tensor], losses: Mapping[str, float]
) -> dict[str, float]:
    """Every correct reading of ``metric`` (``"IoU"`` / ``"Dice"``) over an epoch: from the epoch's pooled counts
    (``summary``), the per-batch means :class:`~lightning_sanity.eval_metrics.EvalCounts` kept (``values``), and one
    minus each logged loss in ``losses`` (a soft Dice / Jaccard score logged as ``1 - loss``)."""
    names = OVERLAP_READINGS[metric]
    readings: dict[str, float] = {}
    if summary.counts:
        pooled = overlap_scores(*torch.tensor(summary.counts, dtype=torch.long).unbind(dim=1))[metric]
        readings.update({f"accumulated {name}": value for name, value in zip(names, pooled.tolist(), strict=True)})
    row = list(OVERLAP_READINGS).index(metric)
    for state, mean in (
        ("overlap_batch_weighted", "per-batch mean (weighted by batch size)"),
        ("overlap_batch", "per-batch mean"),
    ):
        batches = values.get(state)
        if batches is not None and batches.numel() > 0:
            means = batches[row].tolist()
            readings.update({f"{mean} of the {name}": value for name, value in zip(names, means, strict=True)})
    readings.update({f"1 - {key}": 1.0 - loss for key, loss in losses.items()})
    return readings


def logged_mismatch(
    trainer: pl.Trainer,
    split: str,
    label: str,
    key: str,
    logged: float,
    summary: ConfusionSummary,
    values: Mapping[str, Tensor],
    segmentation: bool,
) -> Mismatch | None:
    """Judge one logged metric of ``label`` against the epoch's counts (``summary``, ``values`` of
    :class:`~lightning_sanity.eval_metrics.EvalCounts`): an accuracy (:func:`metric_mismatch`), or on a
    ``segmentation`` an IoU / Dice score (:func:`overlap_mismatch`)."""
    metric = overlap_metric(key) if segmentation else None
    if metric is not None:
        losses = _logged_losses(trainer, split, OVERLAP_TOKENS[metric])
        readings = overlap_readings(metric, summary, values, losses)
        return overlap_mismatch(trainer.world_size, label, key, logged, metric, summary, readings)
    correct = {"accumulated accuracy": summary.accuracy, "accumulated macro accuracy": summary.macro_accuracy}
    per_batch = {
        f"per-batch mean ({k.removeprefix('batch_').replace('_', ', ')})": float(values[k])
        for k in values
        if k.startswith("batch_")
    }
    return metric_mismatch(trainer.world_size, label, key, logged, summary, correct, per_batch)


def overlap_mismatch(
    world_size: int,
    label: str,
    key: str,
    logged: float,
    metric: str,
    summary: ConfusionSummary,
    readings: Mapping[str, float],
) -> Mismatch | None:
    """A logged IoU / Dice score (``metric``) must match one of its correct ``readings`` (:func:`overlap_readings`);
    ``None`` when it does (or is not finite).

    Example::

        >>> counts = [torch.tensor(c) for c in ([90, 5], [100, 10], [100, 10])]  # tp, predicted, actual
        >>> summary = ConfusionSummary.from_counts(*counts)
        >>> readings = overlap_readings("IoU", summary, {}, {})
        >>> overlap_mismatch(1, "val", "val_iou", 0.62, "IoU", summary, readings) is None  # the mean over classes
        True
        >>> overlap_mismatch(1, "val", "val_iou", 0.2, "IoU", summary, readings).evidence["closest_reading"]
        'accumulated IoU pooled over pixels without class 0'
    """
    if not math.isfinite(logged) or not readings:
        return None
    tolerance = MISMATCH_TOLERANCE
    if world_size > 1:
        tolerance += 4 * binomial_noise(0.5, summary.total // world_size)
    name, value, distance = closest_reading(logged, readings)
    if distance <= tolerance:
        return None
    pooled = readings.get(f"accumulated {metric} pooled over pixels", math.nan)
    mean = (
        summary.miou if metric == "IoU" else readings.get(f"accumulated {metric} mean over present classes", math.nan)
    )
    ious = [round(iou, 4) for iou in summary.ious]
    return Mismatch(
        f"Logged {key!r} = {logged:.4f} but the {metric} accumulated over the same {label} batches is {mean:.4f} "
        f"(mean over the classes present; pooled over pixels {pooled:.4f}, {summary.total} pixels), and none of its "
        f"{len(readings)} correct readings (pooled or per class, with or without class 0, per-batch means) is within "
        f"{tolerance:.2f} of it: the closest is the {name}, {value:.4f}.",
        f"A {metric} must be accumulated over the epoch: sum the intersections and unions (tp, fp, fn per class) "
        "with `+=` over the batches and divide at the epoch's end (not `iou = ...` per batch, which keeps the last "
        "batch's), take the argmax over the class dimension (dim=1 of [N, C, H, W] logits) and score against the "
        "same batch's masks; or update a torchmetrics JaccardIndex / F1Score object in the step and log the object "
        "itself (`self.log(key, self.iou)`).",
        {
            "key": key,
            "metric": metric,
            "logged": logged,
            "accumulated_mean": mean,
            "accumulated_pooled": pooled,
            "class_ious": ious,
            "distance": distance,
            "closest_reading": name,
            "closest_value": value,
            "tolerance": tolerance,
            "readings": len(readings),
            "pixels": summary.total,
        },
    )


def logged_scores(
    trainer: pl.Trainer, split: str, compare_keys: Sequence[str], segmentation: bool
) -> dict[int, dict[str, float]]:
    """User-logged accuracies of ``split`` per dataloader and, on a ``segmentation``, its IoU and Dice scores, except
    those averaged per image (named so, or when the module holds a torchmetrics segmentation metric): no count of
    :class:`~lightning_sanity.eval_metrics.EvalCounts` gives a per-image mean."""
    if not segmentation:
        return logged_accuracies(trainer, split, compare_keys)
    tokens = ("acc", *(token for names in OVERLAP_TOKENS.values() for token in names))
    found = logged_accuracies(trainer, split, compare_keys, tokens)
    per_image = _holds_per_image_metric(trainer.lightning_module)
    return {
        loader: {
            key: value
            for key, value in scores.items()
            if overlap_metric(key) is None or not (per_image or any(t in key.lower() for t in _PER_IMAGE_TOKENS))
        }
        for loader, scores in found.items()
    }


def logged_accuracies(
    trainer: pl.Trainer, split: str, compare_keys: Sequence[str], tokens: Sequence[str] = ("acc",)
) -> dict[int, dict[str, float]]:
    """User-logged accuracies of ``split`` per dataloader: ``{loader: {key: value}}``; ``tokens``: what a metric's
    name contains to count (e.g. ``("acc", "f1")`` for a multi-label F1 as well)."""
    metrics = trainer.callback_metrics
    found: dict[int, dict[str, float]] = {}
    for key, loader in _accuracy_keys(trainer, split, compare_keys, tokens).items():
        value = metrics.get(key)
        if (isinstance(value, Tensor) and value.numel() == 1) or isinstance(value, (int, float)):
            found.setdefault(loader, {})[key] = float(value)
    return found


def _accuracy_keys(
    trainer: pl.Trainer, split: str, compare_keys: Sequence[str], tokens: Sequence[str] = ("acc",)
) -> dict[str, int]:
    """Keys of epoch-level, mean-reduced accuracies logged during ``split``, and ``compare_keys``, with their loader."""
    keys = {key: _loader_of(key) for key in compare_keys if key in trainer.callback_metrics}
    step_hook, hook_prefix = _EVAL_HOOKS.get(split, ("", "-"))
    results = compat.logged_results(trainer)
    if results is None:
        return keys
    for result in results.values():
        meta = getattr(result, "meta", None)
        if meta is None:
            continue
        fx, name = str(meta.fx), str(meta.name)
        lowered = name.lower()
        if not (fx.startswith(step_hook) or fx.startswith(hook_prefix)) or not any(
            token in lowered for token in tokens
        ):
            continue
        if any(token in lowered for token in _NOT_ACCURACY_TOKENS) or not meta.on_epoch:
            continue
        value = getattr(result, "value", None)
        if result.is_tensor and not meta.is_mean_reduction:
            continue
        if type(value).__name__ in _PER_IMAGE_METRICS:
            continue
        if not result.is_tensor and (getattr(value, "top_k", 1) or 1) > 1:
            continue
        loader = meta.dataloader_idx
        key = name + (f"/dataloader_idx_{loader}" if meta.add_dataloader_idx and loader is not None else "")
        keys[key] = loader or 0
    return keys


def _loader_of(key: str) -> int:
    head, _, index = key.rpartition("/dataloader_idx_")
    return int(index) if head and index.isdigit() else 0


def _holds_per_image_metric(module: Any) -> bool:
    """``module`` holds a torchmetrics segmentation metric that averages per image (:data:`_PER_IMAGE_METRICS`)."""
    modules = module.modules() if isinstance(module, nn.Module) else ()
    return any(type(child).__name__ in _PER_IMAGE_METRICS for child in modules)


def _logged_losses(trainer: pl.Trainer, split: str, tokens: Sequence[str]) -> dict[str, float]:
    """Epoch losses logged for ``split`` (or naming one of ``tokens``, e.g. ``dice``): ``1 - loss`` of a Dice or
    Jaccard loss is a soft score a user may log as the metric."""
    losses: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        lowered = key.lower()
        if "loss" not in lowered or not (split in lowered or any(token in lowered for token in tokens)):
            continue
        if isinstance(value, Tensor) and value.numel() == 1:
            losses[key] = float(value)
    return losses
