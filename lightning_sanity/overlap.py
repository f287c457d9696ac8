"""Overlap scores of a segmentation (IoU / Jaccard and Dice / F1) from per-class counts, in every convention a user
may log them.

Libraries disagree on three things: pooled over the pixels of all classes (``micro``) or averaged over classes
(``macro``); whether class 0 (the background) counts; and what a class absent from both the targets and the
predictions contributes to a mean: left out (torchmetrics ``JaccardIndex`` / ``F1Score``, ``average="macro"``), 0
(segmentation-models-pytorch ``iou_score(..., reduction="macro")``, whose ``zero_division`` defaults to 0) or 1 (its
``zero_division=1``). :func:`overlap_scores` computes each of them from ``tp``, predicted and actual counts per class,
one row per batch or for a whole epoch, on the device (no host read). A binary segmentation's foreground IoU is the
IoU "without background" of its two classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

_AVERAGES = (
    "pooled over pixels",
    "mean over present classes",
    "mean over classes, absent 0",
    "mean over classes, absent 1",
)
_SUBSETS = ("", " without class 0")

OVERLAP_READINGS: dict[str, tuple[str, ...]] = {
    metric: tuple(f"{metric} {average}{subset}" for subset in _SUBSETS for average in _AVERAGES)
    for metric in ("IoU", "Dice")
}
"""Names of the readings :func:`overlap_scores` returns, per metric, in the order of its last dimension."""


def overlap_scores(true_positives: Tensor, predicted: Tensor, actual: Tensor) -> dict[str, Tensor]:
    """Every reading of IoU and Dice (:data:`OVERLAP_READINGS`) from ``[..., C]`` per-class counts, as
    ``{"IoU": [..., R], "Dice": [..., R]}`` float64 tensors (rows without any count score 0).

    Example::

        >>> tp, predicted, actual = torch.tensor([6, 1, 0]), torch.tensor([7, 3, 0]), torch.tensor([8, 2, 0])
        >>> scores = overlap_scores(tp, predicted, actual)
        >>> [round(v, 3) for v in scores["IoU"][:4].tolist()]  # pooled, present classes, absent as 0, absent as 1
        [0.538, 0.458, 0.306, 0.639]
        >>> [round(v, 3) for v in scores["Dice"][4:6].tolist()]  # without class 0: pooled, present classes
        [0.4, 0.4]
    """
    tp, pred, act = (t.double() for t in (true_positives, predicted, actual))
    union = pred + act - tp
    present = union > 0
    per_class = {"IoU": tp / union.clamp(min=1), "Dice": 2 * tp / (pred + act).clamp(min=1)}
    pooled_denominator = {"IoU": union, "Dice": (pred + act) / 2}
    foreground = torch.ones(tp.shape[-1], dtype=torch.bool, device=tp.device)
    foreground[0] = tp.shape[-1] < 2  # a single class has no background to leave out
    scores: dict[str, Tensor] = {}
    for metric, values in per_class.items():
        columns = []
        for subset in (torch.ones_like(foreground), foreground):
            counted = present & subset
            size = subset.sum()
            hits = (tp * subset).sum(-1)
            columns.append(hits / (pooled_denominator[metric] * subset).sum(-1).clamp(min=1e-12))
            total = (values * counted).sum(-1)
            columns.append(total / counted.sum(-1).clamp(min=1))
            columns.append(total / size.clamp(min=1))
            columns.append((total + (subset & ~present).sum(-1)) / size.clamp(min=1))
        scores[metric] = torch.stack(columns, dim=-1)
    return scores


def class_ious(true_positives: Tensor, predicted: Tensor, actual: Tensor) -> Tensor:
    """Per-class IoU ``tp / (predicted + actual - tp)``; NaN for a class absent from both targets and predictions.

    Example::

        >>> class_ious(torch.tensor([6, 1, 0]), torch.tensor([7, 3, 0]), torch.tensor([8, 2, 0]))
        tensor([0.6667, 0.2500,    nan], dtype=torch.float64)
    """
    tp, pred, act = (t.double() for t in (true_positives, predicted, actual))
    union = pred + act - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
