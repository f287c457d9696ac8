"""Logged accuracies: which metrics the user logged are epoch accuracies, and whether each is the accumulated one.

:class:`~lightning_sanity.ConfusionCallback` counts every evaluation batch itself
(:mod:`lightning_sanity.eval_metrics`); an accuracy the user logged for the same split must match one of its correct
readings (micro or macro). When it does not, the per-batch means of the same counts tell how the wrong value arose (a
metric computed per batch and averaged over the epoch) or that the evaluation code miscounts:
``eval.metric_mismatch``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_sanity import compat
from lightning_sanity.learnability import ConfusionSummary, binomial_noise

_NOT_ACCURACY_TOKENS = ("best", "max", "min", "top", "ema", "std", "var", "diff", "gap", "delta", "loss", "train")
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
        if not result.is_tensor and (getattr(value, "top_k", 1) or 1) > 1:
            continue
        loader = meta.dataloader_idx
        key = name + (f"/dataloader_idx_{loader}" if meta.add_dataloader_idx and loader is not None else "")
        keys[key] = loader or 0
    return keys


def _loader_of(key: str) -> int:
    head, _, index = key.rpartition("/dataloader_idx_")
    return int(index) if head and index.isdigit() else 0
