"""Multi-label evaluation: per-label counts accumulated on the device, what they say as numbers, and the pure rules
that judge them.

:class:`MultiLabelCounts` is the torchmetrics state :class:`~lightning_sanity.MultiLabelCallback` accumulates per
(split, dataloader); :class:`MultiLabelSummary` is one epoch of it read to the host; the rules
(:func:`labels_told_apart`, :func:`is_collapsed`, :func:`multilabel_learning`) decide from summaries and training
losses alone, so ``benchmarks/calibrate_multilabel.py`` calibrates them on the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lightning_sanity.folding import FoldingMetric
from lightning_sanity.learnability import (
    BALANCED_MARGIN,
    CHANCE_Z,
    IMPROVING_FALL,
    ONE_CLASS_SHARE,
    PRIOR_MARGIN,
    binomial_noise,
    is_memorising,
    training_evidence,
)

READINGS = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_accuracy")
"""The per-batch readings :class:`MultiLabelCounts` keeps the means of (what ``self.log`` of a per-step value gives)."""


class _Batch(NamedTuple):
    """What :class:`MultiLabelCounts` queues of one batch (its own copies)."""

    predicted: Tensor
    targets: Tensor
    losses: Tensor


class MultiLabelCounts(FoldingMetric):
    """Per-label true positive, predicted and actual positive counts of ``[N, C]`` multi-label predictions, with the
    samples, exact matches (subset accuracy), per-sample F1, the model's own binary cross-entropy, and the per-batch
    means of every reading (weighted by batch size and not) that a metric computed per step and averaged by
    ``self.log`` would give. Sum-reduced, so exact across DDP ranks; updates never read a tensor to the host.

    Example::

        counts = MultiLabelCounts(num_labels=5)
        counts.update(logits > 0, targets > 0.5, F.binary_cross_entropy_with_logits(logits, targets, reduction="none"))
        summary = MultiLabelSummary.from_counts(counts.compute())
    """

    full_state_update = False
    true_positives: Tensor
    predicted: Tensor
    actual: Tensor
    samples: Tensor
    exact: Tensor
    samples_f1: Tensor
    loss_total: Tensor
    loss_count: Tensor
    weight: Tensor
    batches: Tensor

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        for state in ("true_positives", "predicted", "actual"):
            self.add_state(state, torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")
        for state in ("samples", "exact"):
            self.add_state(state, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        scalars = ["samples_f1", "loss_total", "loss_count", "weight", "batches"]
        scalars += [f"batch_{name}{weighted}" for name in READINGS for weighted in ("", "_weighted")]
        for state in scalars:
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, targets: Tensor, losses: Tensor) -> None:
        """Queue a batch: ``predicted`` and ``targets`` ``[N, C]`` booleans, ``losses`` the ``[N, C]`` per-element
        binary cross-entropy of the model's scores (non-finite elements are left out)."""
        batch = _Batch(predicted.to(torch.bool, copy=True), targets.to(torch.bool, copy=True), losses.detach().float())
        self.queue(batch, targets.numel())

    @override
    def _fold(self, pending: list[_Batch]) -> None:
        groups: dict[tuple[int, ...], list[_Batch]] = {}  # batches of one shape are counted together
        for batch in pending:
            groups.setdefault(tuple(batch.targets.shape), []).append(batch)
        for batches in groups.values():
            predicted, targets, losses = (torch.stack(tensors) for tensors in zip(*batches, strict=True))
            self._count(predicted, targets, losses)

    def _count(self, predicted: Tensor, targets: Tensor, losses: Tensor) -> None:
        """Add ``[batches, N, C]`` predictions."""
        rows, size = predicted.shape[0], predicted.shape[1]
        hits = predicted & targets
        tp, pred, act = hits.sum(1), predicted.sum(1), targets.sum(1)  # [batches, C]
        self.true_positives += tp.sum(0)
        self.predicted += pred.sum(0)
        self.actual += act.sum(0)
        self.samples += rows * size
        matches = (predicted == targets).all(-1)
        self.exact += matches.sum()
        sample_f1 = _f1(hits.sum(-1), predicted.sum(-1) + targets.sum(-1))  # [batches, N]
        self.samples_f1 += sample_f1.double().sum()
        finite = losses.isfinite()
        self.loss_total += torch.where(finite, losses, 0.0).double().sum()
        self.loss_count += finite.sum()
        per_batch = {
            "micro_f1": _f1(tp.sum(-1), pred.sum(-1) + act.sum(-1)),
            "macro_f1": _f1(tp, pred + act).mean(-1),
            "samples_f1": sample_f1.mean(-1),
            "subset_accuracy": matches.double().mean(-1),
            "hamming_accuracy": (predicted == targets).double().mean((-2, -1)),
        }
        for name, values in per_batch.items():
            setattr(self, f"batch_{name}", getattr(self, f"batch_{name}") + values.double().sum())
            weighted = getattr(self, f"batch_{name}_weighted") + values.double().sum() * size
            setattr(self, f"batch_{name}_weighted", weighted)
        self.weight += rows * size
        self.batches += rows

    def compute(self) -> dict[str, Tensor]:
        values = {
            state: getattr(self, state)
            for state in ("true_positives", "predicted", "actual", "samples", "exact", "samples_f1")
        }
        values["eval_loss"] = self.loss_total / self.loss_count.clamp(min=1)
        values["loss_count"] = self.loss_count
        for name in READINGS:
            values[f"batch_{name}"] = getattr(self, f"batch_{name}") / self.batches.clamp(min=1)
            values[f"batch_{name}_weighted"] = getattr(self, f"batch_{name}_weighted") / self.weight.clamp(min=1)
        return values


def _f1(true_positives: Tensor, positives: Tensor) -> Tensor:
    """``2 TP / (predicted + actual positives)``, 0 where both are empty (torchmetrics' ``zero_division=0``)."""
    return 2 * true_positives.double() / positives.double().clamp(min=1)


def element_losses(scores: Tensor, targets: Tensor, probabilities: bool) -> Tensor:
    """Per-element binary cross-entropy of ``scores`` (logits, or ``probabilities``) against multi-hot ``targets``:
    the model's own validation loss, whatever loss the user trains with."""
    scores, targets = scores.detach().float(), targets.detach().float()
    if probabilities:
        return F.binary_cross_entropy(scores.clamp(1e-7, 1 - 1e-7), targets.clamp(0, 1), reduction="none")
    return F.binary_cross_entropy_with_logits(scores, targets.clamp(0, 1), reduction="none")


@dataclass(frozen=True)
class MultiLabelSummary:
    """What one epoch's :class:`MultiLabelCounts` say, as numbers (per label: positives, predictions, hits)."""

    samples: int
    true_positives: tuple[int, ...]
    predicted: tuple[int, ...]
    actual: tuple[int, ...]
    exact: int = 0
    samples_f1: float = 0.0
    eval_loss: float | None = None

    @classmethod
    def from_counts(cls, values: dict[str, Tensor]) -> MultiLabelSummary:
        """From :meth:`MultiLabelCounts.compute` (one host read)."""
        samples = int(values["samples"])
        loss = float(values["eval_loss"]) if float(values["loss_count"]) > 0 else None
        return cls(
            samples=samples,
            true_positives=tuple(int(v) for v in values["true_positives"].tolist()),
            predicted=tuple(int(v) for v in values["predicted"].tolist()),
            actual=tuple(int(v) for v in values["actual"].tolist()),
            exact=int(values["exact"]),
            samples_f1=float(values["samples_f1"]) / max(samples, 1),
            eval_loss=loss if loss is not None and math.isfinite(loss) else None,
        )

    @property
    def labels(self) -> int:
        return len(self.actual)

    @property
    def prevalence(self) -> list[float]:
        """Each label's share of positive targets."""
        return [a / max(self.samples, 1) for a in self.actual]

    @property
    def predicted_rate(self) -> list[float]:
        """Each label's share of positive predictions."""
        return [p / max(self.samples, 1) for p in self.predicted]

    @property
    def f1_scores(self) -> list[float]:
        """Each label's F1 (0 when it has neither positives nor predictions)."""
        return [2 * t / max(p + a, 1) for t, p, a in zip(self.true_positives, self.predicted, self.actual, strict=True)]

    @property
    def micro_f1(self) -> float:
        return 2 * sum(self.true_positives) / max(sum(self.predicted) + sum(self.actual), 1)

    @property
    def macro_f1(self) -> float:
        """torchmetrics' ``MultilabelF1Score(average="macro")``: every label counts, an empty one as 0."""
        return sum(self.f1_scores) / max(self.labels, 1)

    @property
    def present_macro_f1(self) -> float:
        """Macro F1 over the labels that have positives or predictions."""
        present = [f for f, p, a in zip(self.f1_scores, self.predicted, self.actual, strict=True) if p + a > 0]
        return sum(present) / len(present) if present else 0.0

    @property
    def weighted_f1(self) -> float:
        """F1 per label weighted by its positives (sklearn / torchmetrics ``average="weighted"``)."""
        return sum(f * a for f, a in zip(self.f1_scores, self.actual, strict=True)) / max(sum(self.actual), 1)

    @property
    def subset_accuracy(self) -> float:
        """Share of samples whose every label is right (``(pred == y).all(1)``)."""
        return self.exact / max(self.samples, 1)

    @property
    def hamming_accuracy(self) -> float:
        """Share of right (sample, label) elements: torchmetrics ``MultilabelAccuracy`` (micro or macro)."""
        wrong = sum(p + a - 2 * t for t, p, a in zip(self.true_positives, self.predicted, self.actual, strict=True))
        return 1.0 - wrong / max(self.samples * self.labels, 1)

    def balanced_accuracy(self, label: int) -> float:
        """``(TPR + TNR) / 2`` of one label: 0.5 for a constant or label-independent prediction."""
        n, tp, pred, act = self.samples, self.true_positives[label], self.predicted[label], self.actual[label]
        if act == 0 or act == n:
            return 0.5
        return (tp / act + (n - act - (pred - tp)) / (n - act)) / 2

    def varying(self) -> list[int]:
        """Labels whose targets vary on this split (some positive, some negative)."""
        return [c for c, a in enumerate(self.actual) if 0 < a < self.samples]

    @property
    def prior_bce(self) -> float:
        """The binary cross-entropy of predicting each label's prevalence: ``Σ_c H(p_c) / C``, the least a model that
        ignores its input can score."""
        return sum(_entropy(p) for p in self.prevalence) / max(self.labels, 1)

    def constant_micro_f1(self) -> float:
        """The best micro F1 of predictions that ignore the input: always predicting the ``k`` most prevalent labels
        (every label negative: 0; every label positive: ``2p / (1 + p)`` for the positive share ``p`` of the
        elements), best over ``k``. Micro F1 is linear-fractional in each label's predicted rate, so no random
        input-independent prediction does better than one of these.

        Example::

            >>> round(MultiLabelSummary(100, (0, 0), (0, 0), (50, 2)).constant_micro_f1(), 3)  # the common label only
            0.658
        """
        shares = sorted((a / max(self.samples, 1) for a in self.actual), reverse=True)
        total, best, hits = sum(shares), 0.0, 0.0
        for k, share in enumerate(shares, start=1):
            hits += share
            best = max(best, 2 * hits / (k + total))
        return best


def _entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log(1 - p))


# Thresholds; the calibration behind each number is in docs/findings.md (MultiLabelCallback section).
# BALANCED_MARGIN, CHANCE_Z, ONE_CLASS_SHARE and PRIOR_MARGIN are the classification rules' (learnability.py), read
# here per label: a label is a two-class problem whose chance balanced accuracy is 1/2.


def told_apart_margin(summary: MultiLabelSummary, label: int) -> float:
    """How far label ``label``'s balanced accuracy lies above 1/2, in units of what chance allows:
    ``max(BALANCED_MARGIN, CHANCE_Z * sigma)`` with sigma the balanced accuracy's standard error under predictions
    independent of the label at the observed predicted rate; > 1 is told apart, a constant prediction scores 0."""
    n, act = summary.samples, summary.actual[label]
    if act == 0 or act == n:
        return 0.0
    rate = summary.predicted[label] / n
    sigma = math.sqrt(rate * (1 - rate) * (1 / act + 1 / (n - act))) / 2
    return (summary.balanced_accuracy(label) - 0.5) / max(BALANCED_MARGIN, CHANCE_Z * sigma)


def labels_told_apart(summary: MultiLabelSummary) -> list[int]:
    """Labels whose predictions beat chance clearly (:func:`told_apart_margin` above 1).

    Example::

        >>> summary = MultiLabelSummary(100, (40, 0), (45, 0), (50, 3))  # label 0 learned, rare label 1 never predicted
        >>> labels_told_apart(summary)
        [0]
    """
    return [c for c in summary.varying() if told_apart_margin(summary, c) > 1.0]


def is_constant(summary: MultiLabelSummary, label: int) -> bool:
    """Label ``label`` is predicted the same way (positive, or negative) for nearly every sample: a share of at least
    ``ONE_CLASS_SHARE`` up to ``CHANCE_Z`` binomial standard errors."""
    rate = summary.predicted[label] / max(summary.samples, 1)
    floor = ONE_CLASS_SHARE - CHANCE_Z * binomial_noise(ONE_CLASS_SHARE, summary.samples)
    return max(rate, 1 - rate) >= floor


def is_collapsed(summary: MultiLabelSummary) -> bool:
    """Every label whose targets vary is predicted constant (all negative, all positive, or one fixed label set)
    and none is told apart: the model outputs the same label set whatever its input.

    Example::

        >>> is_collapsed(MultiLabelSummary(100, (0, 0, 0), (0, 0, 0), (40, 30, 5)))  # everything negative
        True
        >>> is_collapsed(MultiLabelSummary(100, (38, 0, 0), (41, 0, 0), (40, 30, 5)))  # label 0 learned
        False
    """
    varying = summary.varying()
    return bool(varying) and all(is_constant(summary, c) for c in varying) and not labels_told_apart(summary)


def is_chance_level(summary: MultiLabelSummary) -> bool:
    """Predictions vary but do no better than ignoring the input: no label whose targets vary is told apart, or the
    micro F1 is no higher than the best input-independent prediction's (:meth:`MultiLabelSummary.constant_micro_f1`).
    The second reading covers a model that memorised labels without signal: its predictions follow its input, so a
    label may look told apart by chance (they are alike for look-alike inputs, which binomial noise ignores).

    Example::

        >>> is_chance_level(MultiLabelSummary(100, (20, 10), (42, 20), (40, 30)))  # rates independent of the labels
        True
    """
    if not summary.varying() or is_collapsed(summary):
        return False
    return not labels_told_apart(summary) or summary.micro_f1 <= summary.constant_micro_f1()


def verdict_checks(summary: MultiLabelSummary) -> dict[str, bool]:
    """Which verdict about learning one validation supports, before any training evidence."""
    return {
        "eval.multilabel_collapse": is_collapsed(summary),
        "eval.multilabel_chance_level": is_chance_level(summary),
    }


@dataclass(frozen=True)
class MultiLabelEpoch:
    """One validation of a fit next to the training loss at that point."""

    epoch: int
    steps: int
    train_loss: float | None
    summary: MultiLabelSummary


def beats_the_prior(summary: MultiLabelSummary) -> bool:
    """The validation binary cross-entropy is ``PRIOR_MARGIN`` below :attr:`MultiLabelSummary.prior_bce`: no model
    that ignores its input gets there, so the model uses it in a way that transfers (even if it still predicts
    some labels never)."""
    loss = summary.eval_loss
    return loss is not None and loss < (1.0 - PRIOR_MARGIN) * summary.prior_bce


def prior_bce_floor(summary: MultiLabelSummary, loss_noise: float = 0.0) -> float:
    """The lowest epoch-mean training BCE, within noise, of a model that learned only the label prevalences.

    The validation split estimates each prevalence from ``n`` samples: the plug-in entropy of label ``c`` has the
    sampling standard deviation ``sd_c = sqrt(p(1-p)) |ln(p / (1-p))| / sqrt(n)`` and bias ``1 / 2n``; the labels of a
    sample may be correlated, so the mean over labels gets the bound ``Σ sd_c / C`` on its standard error. The floor
    lies that bias and ``CHANCE_Z`` standard errors (with the training mean's own ``loss_noise``) below the prior.

    Example::

        >>> summary = MultiLabelSummary(450, (0, 0), (0, 0), (225, 45))  # prevalences 0.5 and 0.1
        >>> round(summary.prior_bce, 3), round(prior_bce_floor(summary), 3)
        (0.509, 0.477)
    """
    n = max(summary.samples, 1)
    spreads = [math.sqrt(p * (1 - p)) * abs(math.log(p / (1 - p))) for p in summary.prevalence if 0 < p < 1]
    if not spreads:
        return summary.prior_bce
    noise = math.sqrt((sum(spreads) / summary.labels) ** 2 / n + loss_noise**2)
    return summary.prior_bce - 1 / (2 * n) - CHANCE_Z * noise


def is_constant_throughout(history: Sequence[MultiLabelEpoch]) -> bool:
    """The predictions collapsed (:func:`is_collapsed`) at every validation of the run, at least two."""
    return len(history) >= 2 and all(is_collapsed(entry.summary) for entry in history)


def is_still_improving(eval_losses: Sequence[float | None], prior_bce: float) -> bool:
    """The validation BCE fell at each of the last three validations, by ``IMPROVING_FALL`` of the prior BCE in all,
    to below that prior (the multi-label reading of
    :func:`~lightning_sanity.learnability.is_still_improving`): a loss above the prior that creeps down towards it is
    a model unlearning its initial bias, not learning."""
    recent = [loss for loss in eval_losses[-4:] if loss is not None and math.isfinite(loss)]
    if len(recent) < 4 or prior_bce <= 0:
        return False
    falling = all(later < earlier for earlier, later in zip(recent, recent[1:], strict=False))
    return falling and recent[-1] < prior_bce and recent[0] - recent[-1] >= IMPROVING_FALL * prior_bce


def has_learning_signal(history: Sequence[MultiLabelEpoch]) -> bool:
    """The validation BCE beats the prior (:func:`beats_the_prior`) or still falls below it
    (:func:`is_still_improving`)."""
    if not history:
        return False
    summary = history[-1].summary
    return beats_the_prior(summary) or is_still_improving([e.summary.eval_loss for e in history], summary.prior_bce)


def multilabel_learning(
    epoch_losses: Sequence[float],
    history: Sequence[MultiLabelEpoch],
    steps: int,
    remaining_epochs: float = math.inf,
    loss_noise: Sequence[float] = (),
) -> str | None:
    """Whether the run had its chance to learn, the multi-label twin of
    :func:`~lightning_sanity.learnability.learning_evidence`: ``"learned"`` (the training loss fell to 75 % of its
    first epoch), ``"stuck"`` (flat at the prior BCE), ``"never below the prior"`` (never below
    :func:`prior_bce_floor`, not on pace to), ``"constant throughout"``, ``"memorising"``; ``None`` while the evidence
    is still out or the validation shows learning (:func:`has_learning_signal`)."""
    if not history or has_learning_signal(history):
        return None
    summary = history[-1].summary
    noise = [*loss_noise, *[0.0] * (len(epoch_losses) - len(loss_noise))][: len(epoch_losses)]
    floors = [prior_bce_floor(summary, n) for n in noise]
    evidence = training_evidence(epoch_losses, summary.prior_bce, steps, floors, remaining_epochs)
    if evidence is not None:
        return evidence
    if is_constant_throughout(history):
        return "constant throughout"
    below_floor = len(epoch_losses) >= 2 and epoch_losses[-1] < floors[-1]
    if below_floor or is_memorising(epoch_losses, [entry.summary.eval_loss for entry in history]):
        return "memorising"  # the training loss went below the prior, the validation loss did not
    return None
