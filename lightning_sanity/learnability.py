"""Learnability: the pure rules that judge a run's measured evidence, epoch by epoch.

A :class:`ConfusionSummary` is what one confusion matrix says as numbers; an :class:`EpochEvidence` is one validation
next to the training loss at that point. The rules here decide, from those alone, whether the predictions collapsed,
stay at chance, are masked by class imbalance or systematically wrong (:func:`verdict_checks`), and whether training
had its chance to learn (:func:`learning_evidence`). No trainer, no tensor on a device: what
:class:`~lightning_sanity.ConfusionCallback` measures is judged here, and ``benchmarks/calibrate_learnability.py``
calibrates the thresholds on the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sanity.overlap import class_ious

# Thresholds; the calibration behind each number is in docs/findings.md (ConfusionCallback section).
COLLAPSE_SHARE = 0.95
"""Fraction of predictions in one class that counts as collapsed..."""
COLLAPSE_MARGIN = 0.15
"""...when that class's true share is at least this much lower."""
BALANCED_MARGIN = 0.05
"""Balanced accuracy within this (or 2 standard errors) of 1/K counts as no better than one class."""
CHANCE_Z = 2.0
"""Standard errors above the majority rate that accuracy must reach to count as learned."""
LOSS_CHANCE_TOLERANCE = 0.02
"""Relative distance from ln(C) of an epoch's mean training loss that counts as "at chance"..."""
IMBALANCE_SHARE = 0.6
"""Majority-class share from which always predicting it gives an accuracy that looks acceptable."""
LEARNED_RATIO = 0.75
"""An epoch-mean training loss at or below this fraction of the first epoch's shows the model learned."""
STUCK_TOLERANCE = 0.03
"""Relative distance from the class-prior entropy of a training loss that is stuck..."""
STUCK_SPREAD = 0.02
"""...and the relative range of its last three epoch means (Adam jitter around the prior: 1 %)."""
LOSS_CHANCE_SPREAD = 0.01
"""Relative range of the last three epoch means at ln(C) that counts as a plateau (slow learners: > 2 %)."""
MIN_STEPS = 100
"""Optimizer steps before a flat loss counts as stuck rather than not started."""
MEMORISE_DROP = 0.02
"""Relative fall of the epoch-mean training loss from the first epoch that shows the model is fitting something..."""
GENERALISE_SHARE = 0.25
"""...while the validation loss follows less than this share of that fall: it memorises labels without signal."""
IMPROVING_FALL = 0.002
"""Relative fall (of ln C) of the validation loss over its last four epochs, each lower than the one before, that
shows a slow learner still on its way: no verdict about learning while it holds."""
PRIOR_MARGIN = 0.02
"""Relative margin below the class-prior entropy of a validation loss that proves the model uses its input."""
ONE_CLASS_SHARE = 0.99
"""Share of the validation predictions in one class (up to ``CHANCE_Z`` binomial standard errors of that share on
the split's samples) at every validation of the run that counts as one class throughout: a trained model told
nothing apart, whatever the training loss did."""
BELOW_CHANCE_Z = 4.0
"""Standard errors below the accuracy that predictions independent of the labels would get, from which accuracy is
systematically wrong rather than at chance (a label mapping that differs between splits)."""


@dataclass(frozen=True)
class ConfusionSummary:
    """What a confusion matrix says, as numbers (from per-class true positive, predicted and actual counts)."""

    total: int
    accuracy: float
    balanced_accuracy: float
    macro_accuracy: float
    recalls: list[float]
    present_classes: int
    majority_share: float
    top_predicted_class: int
    top_predicted_share: float
    top_predicted_true_share: float
    prior_entropy: float
    independent_accuracy: float = 0.0
    """Accuracy that predictions independent of the labels, with the same class shares, would get:
    ``sum_k predicted_share_k * true_share_k`` (a constant prediction gets its class's true share)."""
    class_shares: tuple[float, ...] = ()
    """True share of each class among the samples: the class prior."""
    counts: tuple[tuple[int, int, int], ...] = ()
    """Per class: true positives, predictions and targets (what every other number here is computed from)."""
    position_entropy: float | None = None
    """For a dense or token task, the entropy of each target's class given its position (bias-corrected,
    :class:`~lightning_sanity.position_prior.PositionPrior`): what a model that ignores its input but knows where a
    pixel is reaches; ``None`` when not measured."""
    position_noise: float = 0.0
    """Standard error of :attr:`position_entropy` over the split's samples (images, sequences)."""
    position_accuracy: float | None = None
    """Accuracy of predicting each position's most frequent class on these targets (the best any prediction that
    ignores the input gets); ``None`` when not measured."""

    @property
    def input_free_entropy(self) -> float:
        """The lowest cross-entropy a model that ignores its input reaches on these targets: the class prior's
        entropy, or the position prior's when it is lower (objects near the centre, sky at the top)."""
        if self.position_entropy is None:
            return self.prior_entropy
        return min(self.prior_entropy, self.position_entropy)

    @property
    def position_is_the_prior(self) -> bool:
        """The position prior, not the class frequencies, is what an input-ignoring model reaches."""
        return self.input_free_entropy < self.prior_entropy

    @property
    def ious(self) -> list[float]:
        """Per-class IoU (Jaccard) ``tp / (predicted + actual - tp)``; NaN for a class absent from both the targets
        and the predictions (torchmetrics ``JaccardIndex(average="none")`` gives such a class 0)."""
        if not self.counts:
            return []
        return class_ious(*torch.tensor(self.counts, dtype=torch.long).unbind(dim=1)).tolist()

    @property
    def miou(self) -> float:
        """Mean IoU over the classes present in the targets or the predictions (absent classes do not count): the
        convention of torchmetrics ``JaccardIndex(task="multiclass", average="macro")``; segmentation-models-pytorch's
        ``iou_score(..., reduction="macro")`` counts an absent class as 0 instead.

        Example::

            >>> counts = [torch.tensor(c) for c in ([6, 1, 0], [7, 3, 0], [8, 2, 0])]  # tp, predicted, actual
            >>> round(ConfusionSummary.from_counts(*counts).miou, 4)  # (6/9 + 1/4) / 2: class 2 is absent
            0.4583
        """
        present = [iou for iou in self.ious if not math.isnan(iou)]
        return sum(present) / len(present) if present else 0.0

    @classmethod
    def from_counts(cls, true_positives: Tensor, predicted: Tensor, actual: Tensor) -> ConfusionSummary:
        tp, pred, act = (t.double().cpu() for t in (true_positives, predicted, actual))
        total = float(act.sum())
        present = act > 0
        recalls = torch.where(present, tp / act.clamp(min=1), torch.zeros_like(tp))
        # torchmetrics' macro accuracy also averages classes that were only predicted (recall 0)
        counted = present | (pred > 0)
        top = int(pred.argmax())
        n = max(total, 1.0)
        shares = act / n
        return cls(
            total=int(total),
            accuracy=float(tp.sum()) / n,
            balanced_accuracy=float(recalls[present].mean()) if bool(present.any()) else 0.0,
            macro_accuracy=float(recalls[counted].mean()) if bool(counted.any()) else 0.0,
            recalls=recalls.tolist(),
            present_classes=int(present.sum()),
            majority_share=float(act.max()) / n,
            top_predicted_class=top,
            top_predicted_share=float(pred[top]) / n,
            top_predicted_true_share=float(act[top]) / n,
            prior_entropy=float(-(shares[shares > 0] * shares[shares > 0].log()).sum()),
            independent_accuracy=float((pred / n * shares).sum()),
            class_shares=tuple(shares.tolist()),
            counts=tuple(zip(*(t.long().tolist() for t in (tp, pred, act)), strict=True)),
        )


def binomial_noise(rate: float, total: int) -> float:
    """Standard error of an observed rate over ``total`` independent samples."""
    return math.sqrt(max(rate * (1.0 - rate), 0.0) / max(total, 1))


def is_prediction_collapse(summary: ConfusionSummary) -> bool:
    """Nearly all predictions are one class whose true share is clearly lower."""
    return (
        summary.present_classes >= 2
        and summary.top_predicted_share >= COLLAPSE_SHARE
        and summary.top_predicted_true_share <= summary.top_predicted_share - COLLAPSE_MARGIN
    )


def is_no_better_than_one_class(summary: ConfusionSummary) -> bool:
    """Balanced accuracy within noise of 1/K (K present classes): the model tells no class apart."""
    if summary.present_classes < 2:
        return False
    chance = 1.0 / summary.present_classes
    noise = binomial_noise(chance, summary.total // summary.present_classes)
    return summary.balanced_accuracy <= chance + max(BALANCED_MARGIN, CHANCE_Z * noise)


def is_chance_level(summary: ConfusionSummary) -> bool:
    """Accuracy within noise of the majority-class rate, and no class told apart."""
    noise = binomial_noise(summary.majority_share, summary.total)
    return is_no_better_than_one_class(summary) and summary.accuracy <= summary.majority_share + CHANCE_Z * noise


def is_position_level(summary: ConfusionSummary) -> bool:
    """On a dense or token task whose classes depend on position (:attr:`ConfusionSummary.position_is_the_prior`),
    the accuracy is no better, within ``CHANCE_Z`` binomial standard errors, than predicting each position's most
    frequent class: the position-prior twin of :func:`is_chance_level` (objects near the centre told apart from the
    background by where they are, not by what the image shows)."""
    position = summary.position_accuracy
    if position is None or not summary.position_is_the_prior or summary.present_classes < 2:
        return False
    return summary.accuracy <= position + CHANCE_Z * binomial_noise(position, summary.total)


def is_imbalance_masked(summary: ConfusionSummary) -> bool:
    """Accuracy looks fine only because one class dominates: the model mostly predicts the majority class, so its
    accuracy is about the majority rate and balanced accuracy 1/K (a model that predicts a minority class is not
    masked by the imbalance: its accuracy is low)."""
    predicts_majority = summary.top_predicted_true_share >= summary.majority_share
    return summary.majority_share >= IMBALANCE_SHARE and predicts_majority and is_chance_level(summary)


def below_chance_z(summary: ConfusionSummary) -> float:
    """How many binomial standard errors the accuracy lies below :attr:`ConfusionSummary.independent_accuracy`
    (negative when above): predictions that ignore the labels, or a constant class, land within noise of it; far
    below it the predictions are informative but systematically mapped to the wrong classes.

    Example::

        >>> counts = torch.tensor([14, 15, 15])  # predicted and true per class: 1 of 44 right
        >>> permuted = ConfusionSummary.from_counts(torch.tensor([1, 0, 0]), counts, counts)
        >>> round(below_chance_z(permuted), 1)
        4.4
    """
    expected = summary.independent_accuracy
    noise = binomial_noise(expected, summary.total)
    if summary.present_classes < 2 or noise <= 0:
        return 0.0
    return (expected - summary.accuracy) / noise


def is_below_chance(summary: ConfusionSummary) -> bool:
    """Accuracy ``BELOW_CHANCE_Z`` standard errors below what label-independent predictions would get."""
    return below_chance_z(summary) >= BELOW_CHANCE_Z


def prior_loss_floor(summary: ConfusionSummary, loss_noise: float = 0.0) -> float:
    """The lowest epoch-mean training loss, within noise, of a model that learned only the class frequencies.

    Such a model's cross-entropy is at least the entropy of the training class prior, which the validation split
    estimates: the plug-in entropies of two samples of one prior differ by the binomial sampling of their labels,
    ``sqrt(Var[-ln p_y] / n)`` each (``n`` validation samples, at most as many as the training samples), and by up to
    their bias ``(K - 1) / 2n`` (Miller-Madow); the epoch mean of the training loss varies by its standard error
    ``loss_noise`` (from its step losses). The floor lies that bias and ``CHANCE_Z`` standard errors of the
    difference below the validation prior's entropy. On a dense or token task whose position prior is lower
    (:attr:`ConfusionSummary.input_free_entropy`), the floor is ``CHANCE_Z`` standard errors (of that prior over the
    split's images, and of the loss) below it when that is lower.

    Example::

        >>> balanced = ConfusionSummary.from_counts(*[torch.tensor([0, 0])] * 2, torch.tensor([225, 224]))
        >>> skewed = ConfusionSummary.from_counts(*[torch.tensor([0, 0])] * 2, torch.tensor([404, 45]))
        >>> round(balanced.prior_entropy - prior_loss_floor(balanced), 4)
        0.0013
        >>> round(balanced.prior_entropy - prior_loss_floor(balanced, loss_noise=0.002), 4)
        0.0051
        >>> round(skewed.prior_entropy, 3), round(prior_loss_floor(skewed), 3)  # 449 labels: a 90/10 prior +-0.03
        (0.326, 0.262)
    """
    n = max(summary.total, 1)
    shares = torch.tensor([share for share in summary.class_shares if share > 0], dtype=torch.float64)
    if len(shares) < 2:
        return summary.prior_entropy
    spread = float((shares * shares.log() ** 2).sum()) - summary.prior_entropy**2
    noise = math.sqrt(max(spread, 0.0) / n + loss_noise**2)
    floor = summary.prior_entropy - (len(shares) - 1) / (2.0 * n) - CHANCE_Z * noise
    if summary.position_is_the_prior:
        # already bias-corrected; its noise is over the split's images, whose pixels are not independent
        noise = math.sqrt(summary.position_noise**2 + loss_noise**2)
        floor = min(floor, summary.input_free_entropy - CHANCE_Z * noise)
    return floor


def is_above_the_prior(epoch_losses: Sequence[float], floors: Sequence[float], remaining_epochs: float) -> bool:
    """No epoch-mean training loss went below the prior's floor for that epoch (:func:`prior_loss_floor`), and at the
    pace of its last epochs (the mean fall over up to three) it would not get there before training ends
    (``remaining_epochs``): whatever it learned, it is no more than the class frequencies. A loss above the prior
    entropy that creeps down towards it is a model unlearning its initial bias, not learning; a slow learner above
    it falls fast enough to cross it within the planned epochs.

    Example::

        >>> floors = [0.689] * 3
        >>> is_above_the_prior([0.717, 0.713, 0.710], floors, 0), is_above_the_prior([0.717, 0.713], floors[:2], 1)
        (True, True)
        >>> is_above_the_prior([0.641, 0.493], [0.27] * 2, 4)  # on imbalanced data, falling through the prior
        False
    """
    if len(epoch_losses) < 2 or len(floors) != len(epoch_losses):
        return False
    if any(loss < floor for loss, floor in zip(epoch_losses, floors, strict=True)):
        return False
    recent = epoch_losses[-3:]
    pace = (recent[0] - recent[-1]) / (len(recent) - 1)
    return pace <= 0 or recent[-1] - pace * remaining_epochs >= floors[-1]


def verdict_checks(summary: ConfusionSummary) -> dict[str, bool]:
    """Which verdicts about learning one validation's confusion matrix supports, before any training evidence: at
    most one of below chance, imbalance masked and chance level (in that order), and prediction collapse."""
    below = is_below_chance(summary)
    imbalance = is_imbalance_masked(summary) and not below
    return {
        "eval.below_chance": below,
        "eval.prediction_collapse": is_prediction_collapse(summary),
        "eval.imbalance_masked": imbalance,
        "eval.chance_level": (is_chance_level(summary) or is_position_level(summary)) and not imbalance and not below,
    }


def training_evidence(
    epoch_losses: Sequence[float],
    prior_entropy: float,
    steps: int,
    floors: Sequence[float] = (),
    remaining_epochs: float = math.inf,
) -> str | None:
    """Whether training had its chance: ``"learned"`` if the epoch-mean training loss fell by a quarter from the
    first epoch, and below the prior's noise floor in some epoch when the ``floors`` are known (a loss that starts
    far above the prior entropy, e.g. from huge initial logits, and falls only to it learned the class frequencies and
    nothing else); after ``MIN_STEPS`` optimizer steps, ``"stuck"`` if the last three epochs sit flat at the entropy of
    the class prior (the loss of a model that learned only the class frequencies), ``"never below the prior"`` if it
    never went below that entropy's noise floor in any epoch (``floors``, one per epoch) and is not on pace to
    (:func:`is_above_the_prior`); ``None`` while training is still on its way.

    Example::

        >>> training_evidence([0.69, 0.40, 0.21], 0.69, 30), training_evidence([0.70, 0.632, 0.643, 0.638], 0.6365, 150)
        ('learned', 'stuck')
        >>> training_evidence([0.717, 0.713, 0.710], 0.6927, 129, floors=[0.689] * 3, remaining_epochs=0)
        'never below the prior'
        >>> training_evidence([3.9, 2.31, 2.303, 2.302], 2.3026, 160, floors=[2.29] * 4)  # fell to the prior only
        'stuck'
    """
    if len(epoch_losses) < 2:
        return None
    below = not floors or any(loss < floor for loss, floor in zip(epoch_losses, floors, strict=False))
    if below and min(epoch_losses) <= LEARNED_RATIO * epoch_losses[0]:
        return "learned"
    if steps < MIN_STEPS:
        return None
    if is_plateau(epoch_losses, prior_entropy, STUCK_TOLERANCE, STUCK_SPREAD):
        return "stuck"
    if floors and is_above_the_prior(epoch_losses, floors, remaining_epochs):
        return "never below the prior"
    return None


@dataclass(frozen=True)
class EpochEvidence:
    """What one validation epoch of a fit showed, next to the training loss at that point."""

    epoch: int
    steps: int
    train_loss: float | None
    eval_loss: float | None
    summary: ConfusionSummary


def is_memorising(
    epoch_losses: Sequence[float], eval_losses: Sequence[float | None], prior_floor: float = math.inf
) -> bool:
    """The training loss fell by ``MEMORISE_DROP`` from the first epoch, to below ``prior_floor`` (the class prior's
    noise floor, :func:`prior_loss_floor`), while the validation loss (the model's cross-entropy on the validation
    split) followed less than ``GENERALISE_SHARE`` of that fall: the model fits the training labels and nothing of it
    transfers. A loss that fell from above the prior only to it fits nothing but the class frequencies.

    Example::

        >>> is_memorising([0.712, 0.672, 0.655], [0.70, 0.71, 0.72]), is_memorising([2.34, 2.31], [2.32, 2.29])
        (True, False)
        >>> is_memorising([8.1, 2.31, 2.304], [2.31, 2.31, 2.31], prior_floor=2.29)  # from huge logits to ln 10
        False
    """
    measured = [loss for loss in eval_losses if loss is not None and math.isfinite(loss)]
    if len(epoch_losses) < 2 or len(measured) < 2 or epoch_losses[0] <= 0 or epoch_losses[-1] >= prior_floor:
        return False
    train_fall = epoch_losses[0] - epoch_losses[-1]
    if train_fall < MEMORISE_DROP * epoch_losses[0]:
        return False
    return measured[0] - measured[-1] < GENERALISE_SHARE * train_fall


def is_one_class(summary: ConfusionSummary) -> bool:
    """Nearly every prediction is one class: the top share is within ``CHANCE_Z`` binomial standard errors of
    ``ONE_CLASS_SHARE`` or above it (on 44 samples one stray prediction, 43/44, is within that noise; on 449
    samples eight are)."""
    noise = binomial_noise(ONE_CLASS_SHARE, summary.total)
    return summary.top_predicted_share >= ONE_CLASS_SHARE - CHANCE_Z * noise


def is_one_class_throughout(history: Sequence[EpochEvidence]) -> bool:
    """Nearly every prediction was one class (a constant output whose bias oscillates may change which one) at every
    validation of the run (at least two); or at the latest ones, at least two and half of the run's, while the
    validation loss stopped falling: a model that died in its first epochs (weights decayed to a constant output)
    and stays dead. A slow learner leaving the prior also predicts one class for a while, but its validation loss
    falls at every validation.

    Example::

        >>> counts = [torch.tensor(c) for c in ([8, 0], [16, 0], [8, 8])]  # right, predicted, true per class
        >>> one, two = ConfusionSummary.from_counts(*counts), ConfusionSummary.from_counts(counts[0], *counts[2:] * 2)
        >>> def run(*epochs): return [EpochEvidence(e, 9 * e, None, loss, s) for e, (s, loss) in enumerate(epochs)]
        >>> is_one_class_throughout(run((two, 1.14), (one, 1.11), (one, 1.13)))  # died, loss flat
        True
        >>> is_one_class_throughout(run((two, 2.313), (one, 2.312), (one, 2.309)))  # slow learner, loss falls
        False
    """
    latest = 0
    for entry in reversed(history):
        if not is_one_class(entry.summary):
            break
        latest += 1
    if latest < 2 or latest < len(history) / 2:
        return False
    if latest == len(history):
        return True
    losses = [entry.eval_loss for entry in history[-latest - 1 :]]
    if any(loss is None for loss in losses):
        return False
    return not all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False))  # type: ignore[operator]


def beats_the_prior(entry: EpochEvidence) -> bool:
    """The validation loss is below the entropy of the validation class prior, and on a dense or token task below
    that of its position prior (:attr:`ConfusionSummary.input_free_entropy`): no model that ignores its input can
    get there (its cross-entropy is at least that entropy), so the model uses its input in a way that transfers,
    even while its argmax still picks the majority class.

    The position prior is corrected for the bias of few images per position; the noise of that estimate needs no
    margin of its own: the model's loss is measured on the same targets, and the plug-in entropy it corrects is a
    hard floor for an input-ignoring model on them (any fixed per-position distribution scores at least it)."""
    loss = entry.eval_loss
    return loss is not None and loss < (1.0 - PRIOR_MARGIN) * entry.summary.input_free_entropy


def is_still_improving(eval_losses: Sequence[float | None], num_classes: int) -> bool:
    """The validation loss fell at each of the last three validations (four values), by ``IMPROVING_FALL * ln C`` in
    all: on a fixed validation set a deterministic model's loss does not drift down three times in a row by chance
    (a model stuck at chance jitters around its level: two falls in a row happen every fourth epoch), and to below
    ln C: a loss above that of a uniform guess that creeps down towards it is a model unlearning its initial bias,
    not learning. It only postpones a verdict; it never resolves one.

    Example::

        >>> is_still_improving([2.313, 2.309, 2.304, 2.301], 10), is_still_improving([0.694, 0.692, 0.693, 0.692], 2)
        (True, False)
    """
    recent = [loss for loss in eval_losses[-4:] if loss is not None and math.isfinite(loss)]
    if len(recent) < 4 or num_classes < 2:
        return False
    falling = all(later < earlier for earlier, later in zip(recent, recent[1:], strict=False))
    chance = math.log(num_classes)
    return falling and recent[-1] < chance and recent[0] - recent[-1] >= IMPROVING_FALL * chance


def has_learning_signal(history: Sequence[EpochEvidence]) -> bool:
    """The validation history shows the model learning something that transfers: its loss beats the class prior
    (:func:`beats_the_prior`) or still falls (:func:`is_still_improving`)."""
    if not history:
        return False
    classes = history[-1].summary.present_classes
    return beats_the_prior(history[-1]) or is_still_improving([entry.eval_loss for entry in history], classes)


def learning_evidence(
    epoch_losses: Sequence[float],
    history: Sequence[EpochEvidence],
    prior_entropy: float,
    steps: int,
    remaining_epochs: float = math.inf,
    loss_noise: Sequence[float] = (),
) -> str | None:
    """Whether the run had its chance to learn, from what it measured: ``"learned"`` / ``"stuck"`` / ``"never below
    the prior"`` (see :func:`training_evidence`; the prior's noise floor from the latest validation's class shares and
    the standard error of each epoch's mean training loss, ``loss_noise``; ``remaining_epochs`` of training planned
    after this one), ``"one class throughout"``
    (:func:`is_one_class_throughout`), ``"memorising"`` (:func:`is_memorising`), or ``None`` while the evidence is
    still out (early epochs, slow learners whose validation loss still falls: :func:`is_still_improving`)."""
    if has_learning_signal(history):
        return None
    noise = [*loss_noise, *[0.0] * (len(epoch_losses) - len(loss_noise))][: len(epoch_losses)]
    floors = [prior_loss_floor(history[-1].summary, n) for n in noise] if history else []
    evidence = training_evidence(epoch_losses, prior_entropy, steps, floors, remaining_epochs)
    if evidence is not None:
        return evidence
    if is_one_class_throughout(history):
        return "one class throughout"
    if is_memorising(epoch_losses, [entry.eval_loss for entry in history], floors[-1] if floors else math.inf):
        return "memorising"
    return None


def is_learning_now(summary: ConfusionSummary) -> bool:
    """Balanced accuracy clearly above chance: a verdict of "learns nothing" no longer holds."""
    return summary.present_classes >= 2 and not is_no_better_than_one_class(summary)


def is_plateau(
    epoch_losses: Sequence[float], level: float, tolerance: float, spread: float, epochs: int = 3, above: bool = False
) -> bool:
    """The last ``epochs`` losses are all within ``tolerance * level`` of ``level`` (or anywhere above it, with
    ``above``) and flat (their range within ``spread * level``): not a slow learner on its way down."""
    if level <= 0 or len(epoch_losses) < epochs:
        return False
    recent = epoch_losses[-epochs:]
    near = all(loss - level >= -tolerance * level and (above or loss - level <= tolerance * level) for loss in recent)
    return near and max(recent) - min(recent) <= spread * level


def is_loss_at_chance(epoch_losses: Sequence[float], num_classes: int, steps: int) -> bool:
    """After ``MIN_STEPS`` optimizer steps the training loss sits flat at ``ln(C)`` or above it for the last three
    epochs: a loss above that of a uniform guess is no better than one.

    Example::

        >>> is_loss_at_chance([0.724, 0.6932, 0.6931, 0.6931], 2, 150), is_loss_at_chance([0.73, 0.728, 0.726], 2, 150)
        (True, True)
    """
    if num_classes < 2 or steps < MIN_STEPS:
        return False
    return is_plateau(epoch_losses, math.log(num_classes), LOSS_CHANCE_TOLERANCE, LOSS_CHANCE_SPREAD, above=True)
