"""The evaluation metrics :class:`~lightning_sanity.ConfusionCallback` accumulates: torchmetrics states, exact across
DDP ranks.

:class:`EvalCounts` counts per-class hits and predictions (the confusion matrix) and the per-batch accuracies a step's
``self.log`` would average; :class:`EvalLoss` is the model's own cross-entropy on an evaluation split;
:class:`TrainLoss` the epoch mean, minimum and standard error of the training loss; :class:`ProbabilityLoss` the
likelihood of outputs read as probabilities. Updates never read a tensor to the host.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from lightning_sanity.folding import FOLD_BATCHES, FoldingMetric
from lightning_sanity.outputs import ClassPredictions
from lightning_sanity.overlap import OVERLAP_READINGS, overlap_scores


class _EvalBatch(NamedTuple):
    """What :class:`EvalCounts` queues of one batch (its own copies)."""

    predicted: Tensor
    targets: Tensor
    valid: Tensor
    batch_size: int


class EvalCounts(FoldingMetric):
    """Per-epoch counts behind every accuracy reading; sum-reduced, so exact across DDP ranks.

    ``dense=True`` keeps the full ``[C, C]`` confusion matrix; otherwise only per-class true positive, predicted and
    actual counts (O(C) memory for very large heads). It also keeps per-batch micro and macro accuracies,
    sample-weighted (what ``self.log`` in a step produces) and unweighted, to recognise a correctly logged accuracy;
    with the matrix, also every per-batch IoU / Dice reading (:func:`~lightning_sanity.overlap.overlap_scores`).
    Updates never read a tensor to the host: ignored targets go to an extra bin that is dropped. Batches are queued
    and counted together, one row per batch (see :class:`~lightning_sanity.folding.FoldingMetric`).
    """

    full_state_update = False
    matrix: Tensor
    true_positives: Tensor
    predicted: Tensor
    actual: Tensor
    micro_weighted: Tensor
    macro_weighted: Tensor
    weight: Tensor
    micro: Tensor
    macro: Tensor
    batches: Tensor
    overlap_weighted: Tensor
    overlap: Tensor

    def __init__(self, num_classes: int, dense: bool) -> None:
        # each fold counts [batches, C + 1] per-batch bins three times: bound that for very large heads
        super().__init__(fold_batches=max(1, min(FOLD_BATCHES, (1 << 18) // (num_classes + 1))))
        self.num_classes = num_classes
        self.dense = dense
        if dense:
            self.add_state("matrix", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        else:
            for state in ("true_positives", "predicted", "actual"):
                self.add_state(state, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        for state in ("micro_weighted", "macro_weighted", "weight", "micro", "macro", "batches"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # per-batch IoU / Dice in every convention (lightning_sanity.overlap), weighted by batch size and not
        readings = (len(OVERLAP_READINGS), len(OVERLAP_READINGS["IoU"]))
        for state in ("overlap_weighted", "overlap"):
            self.add_state(state, torch.zeros(readings if dense else (0,), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, targets: Tensor, valid: Tensor, batch_size: int) -> None:
        batch = _EvalBatch(
            predicted.to(torch.long, copy=True), targets.to(torch.long, copy=True), valid.clone(), batch_size
        )
        self.queue(batch, targets.numel())

    @override
    def _fold(self, pending: list[_EvalBatch]) -> None:
        groups: dict[tuple[int, int], list[_EvalBatch]] = {}  # batches of one shape are counted together
        for batch in pending:
            groups.setdefault((batch.targets.numel(), batch.batch_size), []).append(batch)
        for (_, batch_size), batches in groups.items():
            predicted, targets, valid = (
                torch.stack(tensors) for tensors in zip(*(b[:3] for b in batches), strict=True)
            )
            self._count(predicted, targets, valid, batch_size)

    def _count(self, predicted: Tensor, targets: Tensor, valid: Tensor, batch_size: int) -> None:
        """Add ``[batches, elements]`` predictions of batches of ``batch_size`` samples."""
        classes, rows = self.num_classes, targets.shape[0]
        trash = torch.full_like(targets, classes)
        correct = valid & (predicted == targets)
        tp = _bincount_rows(torch.where(correct, targets, trash), classes)
        actual = _bincount_rows(torch.where(valid, targets, trash), classes)
        pred = _bincount_rows(torch.where(valid, predicted, trash), classes)
        if self.dense:
            cells = torch.where(valid, targets * classes + predicted, torch.full_like(targets, classes * classes))
            counts = torch.zeros(classes * classes + 1, dtype=torch.long, device=targets.device)
            self.matrix += counts.index_add_(0, cells.reshape(-1), torch.ones_like(cells).reshape(-1))[:-1].view(
                classes, classes
            )
        else:
            self.true_positives += tp.sum(0)
            self.predicted += pred.sum(0)
            self.actual += actual.sum(0)
        micro = tp.sum(1) / actual.sum(1).clamp(min=1)
        counted = (actual > 0) | (pred > 0)
        recall = tp / actual.clamp(min=1)
        macro = (recall * counted).sum(1) / counted.sum(1).clamp(min=1)
        self.micro_weighted += (micro * batch_size).double().sum()
        self.macro_weighted += (macro * batch_size).double().sum()
        self.weight += batch_size * rows
        self.micro += micro.double().sum()
        self.macro += macro.double().sum()
        self.batches += rows
        if self.dense:
            overlap = torch.stack(list(overlap_scores(tp, pred, actual).values()), dim=1)  # [rows, metrics, R]
            self.overlap_weighted += (overlap * batch_size).sum(0)
            self.overlap += overlap.sum(0)

    def compute(self) -> dict[str, Tensor]:
        if self.dense:
            tp, predicted, actual = self.matrix.diagonal(), self.matrix.sum(dim=0), self.matrix.sum(dim=1)
        else:
            tp, predicted, actual = self.true_positives, self.predicted, self.actual
        return {
            "matrix": self.matrix if self.dense else torch.zeros(0),
            "true_positives": tp,
            "predicted": predicted,
            "actual": actual,
            "batch_micro_weighted": self.micro_weighted / self.weight.clamp(min=1),
            "batch_macro_weighted": self.macro_weighted / self.weight.clamp(min=1),
            "batch_micro": self.micro / self.batches.clamp(min=1),
            "batch_macro": self.macro / self.batches.clamp(min=1),
            "overlap_batch_weighted": self.overlap_weighted / self.weight.clamp(min=1),
            "overlap_batch": self.overlap / self.batches.clamp(min=1),
        }


def _bincount_rows(indices: Tensor, classes: int) -> Tensor:
    """Counts of ``0..classes-1`` in each row of ``[rows, n]`` ``indices`` (``classes`` is a dropped trash bin), as
    ``[rows, classes]``, without a host sync."""
    rows = indices.shape[0]
    offsets = torch.arange(rows, device=indices.device)[:, None] * (classes + 1)
    counts = torch.zeros(rows * (classes + 1), dtype=torch.long, device=indices.device)
    flat = (indices + offsets).reshape(-1)
    return counts.index_add_(0, flat, torch.ones_like(flat)).view(rows, classes + 1)[:, :-1]


class TrainLoss(Metric):
    """Mean and minimum of the training loss over an epoch (sum-reduced / min-reduced across ranks).

    ``update`` takes the losses of several steps at once: :class:`ConfusionCallback` keeps each step's loss (a
    detached reference to the step's own tensor) and hands them over every ``FOLD_BATCHES`` steps and before any
    read, so a training step pays a list append instead of a metric update (tens of microseconds between the step's
    kernels).
    """

    full_state_update = False
    total: Tensor
    squares: Tensor
    steps: Tensor
    lowest: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("squares", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("steps", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("lowest", torch.full((), math.inf, dtype=torch.float64), dist_reduce_fx="min")

    def update(self, losses: Tensor) -> None:
        losses = losses.detach().double().reshape(-1)
        self.total += losses.sum()
        self.squares += losses.square().sum()
        self.steps += losses.numel()
        self.lowest = torch.minimum(self.lowest, losses.min())

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """The mean, the lowest step loss, and the standard error of the mean (from the spread of the step losses)."""
        steps = self.steps.clamp(min=1)
        mean = self.total / steps
        variance = (self.squares / steps - mean.square()).clamp(min=0) * steps / (steps - 1).clamp(min=1)
        return mean, self.lowest, (variance / steps).sqrt()


class ProbabilityLoss(Metric):
    """Mean negative log-likelihood of outputs read as probabilities (softmax rows, or sigmoid values)."""

    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        # Created only on ranks whose outputs looked activated, so computing it must not be a collective
        # (a rank without it would never join); each rank judges its own shard, and findings merge at teardown.
        super().__init__(sync_on_compute=False)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, predictions: ClassPredictions) -> None:
        targets = predictions.targets.clamp(0, max(scores.shape[1] - 1, 1))
        probs = scores.detach().double().clamp(1e-12, 1.0)
        if scores.shape[1] == 1:
            likelihood = torch.where(targets == 1, probs[:, 0], 1.0 - probs[:, 0]).clamp(min=1e-12)
        else:
            likelihood = probs.gather(1, targets.unsqueeze(1))[:, 0]
        weight = predictions.valid.double()
        self.total += (-likelihood.log() * weight).sum()
        self.count += weight.sum()

    def compute(self) -> Tensor:
        return self.total / self.count.clamp(min=1)


class EvalLoss(FoldingMetric):
    """Mean cross-entropy of the scores against the targets over an evaluation epoch (softmax cross-entropy, or
    binary cross-entropy of a single logit): the model's own validation loss, whatever loss the user trains with.
    Per batch the per-element losses are queued; their weighted sum is taken when folded."""

    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, predictions: ClassPredictions) -> None:
        scores = scores.detach().float()
        if scores.shape[1] == 1:
            targets = predictions.targets.clamp(0, 1).float()
            losses = F.binary_cross_entropy_with_logits(scores[:, 0], targets, reduction="none")
        else:
            losses = F.cross_entropy(scores, predictions.targets.clamp(0, scores.shape[1] - 1), reduction="none")
        self.queue((losses, predictions.valid.clone()), losses.numel())

    @override
    def _fold(self, pending: list[tuple[Tensor, Tensor]]) -> None:
        losses, valid = (torch.cat(tensors) for tensors in zip(*pending, strict=True))
        weight = valid.double()
        self.total += (losses.double() * weight).sum()
        self.count += weight.sum()

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.total / self.count.clamp(min=1), self.count
