"""What a verdict about learning says: the message, the hint and the evidence of ``eval.below_chance``,
``eval.prediction_collapse``, ``eval.imbalance_masked``, ``eval.chance_level``, ``eval.loss_at_chance``,
``eval.loss_at_prior`` and ``output.activated``.

Which verdict holds is for :mod:`lightning_sanity.learnability`; the words and numbers that tell the user are here,
so that :class:`~lightning_sanity.ConfusionCallback` only watches and concludes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_sanity.findings import Severity
from lightning_sanity.learnability import (
    STUCK_TOLERANCE,
    ConfusionSummary,
    EpochEvidence,
    below_chance_z,
    binomial_noise,
    is_one_class,
)


def evidence_numbers(
    label: str,
    summary: ConfusionSummary,
    learning: str,
    losses: Sequence[float],
    history: Sequence[EpochEvidence],
    class_name: Callable[[int], str],
    matrix: Tensor | None,
    report_classes: int,
) -> dict[str, Any]:
    """The numbers behind a verdict about learning on ``label``: accuracy against chance with its noise, the class
    the model predicts most, the latest losses and balanced accuracies, and the confusion matrix when it has at most
    ``report_classes`` classes."""
    chance = 1.0 / max(summary.present_classes, 1)
    evidence: dict[str, Any] = {
        "split": label,
        "samples": summary.total,
        "accuracy": round(summary.accuracy, 4),
        "balanced_accuracy": round(summary.balanced_accuracy, 4),
        "chance": round(chance, 4),
        "chance_noise": round(binomial_noise(chance, summary.total // max(summary.present_classes, 1)), 4),
        "majority_share": round(summary.majority_share, 4),
        "top_predicted_class": class_name(summary.top_predicted_class),
        "top_predicted_share": round(summary.top_predicted_share, 4),
        "top_predicted_true_share": round(summary.top_predicted_true_share, 4),
        "training": learning,
        "epoch_train_losses": [round(loss, 4) for loss in losses[-4:]],
        "eval_losses": [None if e.eval_loss is None else round(e.eval_loss, 4) for e in history[-4:]],
        "balanced_accuracies": [round(e.summary.balanced_accuracy, 4) for e in history[-4:]],
        "ln_classes": round(math.log(max(summary.present_classes, 2)), 4),
        "prior_entropy": round(summary.prior_entropy, 4),
        "independent_accuracy": round(summary.independent_accuracy, 4),
        "below_chance_z": round(below_chance_z(summary), 2),
    }
    if matrix is not None and matrix.shape[0] <= report_classes:
        evidence["confusion_matrix"] = matrix.tolist()
    return evidence


def wrong_mapping(matrix: Tensor | None, class_name: Callable[[int], str], shown_classes: int) -> str:
    """Where the true classes go in the confusion matrix ``matrix`` when most of a class lands on one
    other class: ``"true -> predicted: 'a' -> 'b' (14/15), ..."``; empty without a matrix or such a class."""
    if matrix is None:
        return ""
    moved = []
    for true, row in enumerate(matrix.tolist()):
        total, top = sum(row), max(range(len(row)), key=row.__getitem__)
        if total > 0 and top != true and row[top] > total / 2:
            moved.append(f"{class_name(true)!r} -> {class_name(top)!r} ({int(row[top])}/{int(total)})")
    shown = moved[: shown_classes or 5]
    return "true -> predicted: " + ", ".join(shown) + (", ..." if len(moved) > len(shown) else "") if moved else ""


def memorising_cause(input_code: str | None) -> str:
    """Why what a model fits in training does not transfer: the ``input_code`` finding saying the evaluation inputs
    differ from the training inputs, else the two usual causes."""
    if input_code:
        return f"the validation inputs differ from the training inputs ({input_code})"
    return "training labels without signal, or validation inputs unlike the training inputs"


def learning_story(
    learning: str,
    losses: Sequence[float],
    history: Sequence[EpochEvidence],
    input_code: str | None = None,
) -> str:
    """One clause saying what the training side measured, with its numbers; ``input_code`` is a finding that
    the evaluation inputs differ from the training inputs, which explains why nothing learned transfers."""
    eval_losses = [e.eval_loss for e in history if e.eval_loss is not None]
    if learning == "memorising" and len(eval_losses) >= 2:
        cause = memorising_cause(input_code)
        return (
            f"the training loss fell from {losses[0]:.3f} to {losses[-1]:.3f} while the validation loss went from "
            f"{eval_losses[0]:.3f} to {eval_losses[-1]:.3f}: the model memorises its training data and nothing "
            f"of it transfers: {cause}"
        )
    if learning == "one class throughout":
        latest = next((i for i, e in enumerate(reversed(history)) if not is_one_class(e.summary)), len(history))
        if latest == len(history):
            return f"at all {latest} validations of the run nearly every prediction was one class"
        return (
            f"at the last {latest} of the run's {len(history)} validations nearly every prediction was one class "
            "and the validation loss stopped falling"
        )
    summary = history[-1].summary if history else None
    prior = summary.input_free_entropy if summary is not None else None
    # the bar an input-ignoring model reaches: the class frequencies, or where the classes tend to be (a position
    # prior, on dense and token tasks) when that is lower
    positional = summary is not None and summary.position_is_the_prior
    bar, learned = (
        ("the position-prior entropy", "where each class tends to be")
        if positional
        else ("the class-prior entropy", "the class frequencies")
    )
    if learning == "stuck" and prior is not None and _fell_to(losses, prior):
        return (
            f"the training loss fell from {losses[0]:.3f} (its first epoch's mean) to {bar} {prior:.3f} and stayed "
            f"there ({_values(losses[-3:])}): the model learned {learned} and nothing else"
        )
    if learning == "stuck":
        return f"the training loss sits at {bar} ({_values(losses[-3:])}): the model learned {learned} and nothing else"
    if learning == "never below the prior" and prior is not None:
        fell = f"fell from {losses[0]:.3f} (its first epoch's mean) but " if _fell_to(losses, prior) else ""
        return (
            f"the training loss {fell}never went below {bar} {prior:.3f} ({_values(losses[-4:])}): the model learned "
            f"nothing beyond {learned}"
        )
    return f"the training loss fell from {losses[0]:.3f} to {min(losses):.3f}, so the model did train"


def _fell_to(losses: Sequence[float], prior: float) -> bool:
    """The first epoch's mean training loss lay clearly above the prior entropy (by ``STUCK_TOLERANCE``): the loss
    came down from a higher start (initial logits far from uniform) before it reached the prior."""
    return bool(losses) and losses[0] > (1.0 + STUCK_TOLERANCE) * prior and len(losses) > 1


def _values(losses: Sequence[float]) -> str:
    return ", ".join(f"{value:.3f}" for value in losses)


UNITS = {"dense": "pixels", "token": "tokens"}
"""What a confusion matrix counts, by task kind (samples otherwise)."""
ALIGNMENT = {
    "multiclass": "that labels are aligned with the features (not shuffled or joined separately), that training "
    "batches are shuffled",
    "dense": "that each mask belongs to its image (the same index, and the same geometric augmentation applied to "
    "both: a joint transform such as albumentations' `transform(image=..., mask=...)` or torchvision.transforms.v2 "
    "with a `tv_tensors.Mask`)",
    "token": "that each tag sequence belongs to its tokens (the same order, padding and truncation; sub-word pieces "
    "after the first labelled -100 or with the word's tag)",
}
"""The first thing to check when a model learned nothing from its input, by task kind."""
IMBALANCE_HINTS = {
    "multiclass": "Report balanced accuracy / per-class recall (torchmetrics MulticlassAccuracy(average='macro')) and "
    "counter the imbalance: class weights in the loss, a WeightedRandomSampler, or more minority data. If every "
    "prediction is the majority class, check that the model uses its input at all.",
    "dense": "Report per-class IoU / mIoU (logged as sanity/confusion/<split>/miou) rather than pixel accuracy, and "
    "counter the imbalance: class weights in the cross-entropy, a Dice or Focal loss (e.g. smp's DiceLoss), or crops "
    "that oversample the rare classes. If every pixel is background, check that the model uses its input at all.",
    "token": "Report per-class or entity-level F1 (e.g. seqeval) rather than token accuracy, and counter the "
    "imbalance with class weights in the loss. If every token gets the majority tag (e.g. 'O'), check that the "
    "model uses its input and that the tags are aligned with the tokens.",
}
"""How to read and counter a dominant class, by task kind."""


@dataclass(frozen=True)
class VerdictText:
    """What one verdict about learning tells the user."""

    severity: Severity
    message: str
    hint: str


def verdict_text(
    code: str,
    label: str,
    summary: ConfusionSummary,
    evidence: dict[str, Any],
    story: str,
    class_name: Callable[[int], str],
    *,
    mapping: str = "",
    epochs: int = 0,
    kind: str = "multiclass",
) -> VerdictText:
    """The severity, message and hint of the verdict ``code`` on ``label``, from its ``evidence``
    (:func:`evidence_numbers`), the training side's ``story`` (:func:`learning_story`), for ``eval.below_chance`` the
    class ``mapping`` (:func:`wrong_mapping`) and for ``eval.chance_level`` the training ``epochs`` so far. The task
    ``kind`` (:attr:`~lightning_sanity.task.Task.kind`) says what is counted (samples, pixels, tokens) and which fix
    applies (a mask that belongs to another image is not fixed by a sampler)."""
    unit, alignment = UNITS.get(kind, "samples"), ALIGNMENT.get(kind, ALIGNMENT["multiclass"])
    if code == "eval.below_chance":
        return VerdictText(
            Severity.ERROR,
            f"{label} accuracy {summary.accuracy:.1%} is far below the {summary.independent_accuracy:.1%} that "
            f"predictions ignoring the labels would get ({evidence['below_chance_z']:.1f} standard errors, "
            f"{summary.total} {unit}): the predictions are systematically wrong, not random"
            + (f"; {mapping}" if mapping else "")
            + f"; {story}.",
            "The model tells the classes apart but names them differently on this split: make the train and "
            "eval datasets share one label encoding (one `classes` list / `class_to_idx`, one LabelEncoder "
            "fitted once), and check that the eval targets are not shifted or reordered against the inputs.",
        )
    if code == "eval.prediction_collapse":
        return VerdictText(
            Severity.ERROR,
            f"{summary.top_predicted_share:.1%} of the {label} predictions are class "
            f"{class_name(summary.top_predicted_class)!r}, whose true share is only "
            f"{summary.top_predicted_true_share:.1%} (accuracy {summary.accuracy:.1%}, balanced "
            f"{summary.balanced_accuracy:.1%}); {story}.",
            f"The model ignores its input: check {alignment}, that the train and val "
            "inputs are preprocessed alike, that nothing (ReLU/softmax, a frozen or zero-initialised head, a far too "
            "high or low learning rate) stops the logits from learning.",
        )
    if code == "eval.imbalance_masked":
        return VerdictText(
            Severity.WARNING,
            f"{label} accuracy {summary.accuracy:.1%} only reflects class imbalance: the majority class is "
            f"{summary.majority_share:.1%} of the {unit} and balanced accuracy is {summary.balanced_accuracy:.1%} "
            f"(1/{summary.present_classes} = {1 / summary.present_classes:.1%} is chance); {story}.",
            IMBALANCE_HINTS.get(kind, IMBALANCE_HINTS["multiclass"]),
        )
    if code == "eval.chance_level":
        return VerdictText(
            Severity.WARNING,
            f"{label} accuracy {summary.accuracy:.1%} stays at chance (majority-class rate "
            f"{summary.majority_share:.1%}, balanced accuracy {summary.balanced_accuracy:.1%}, chance "
            f"{1 / max(summary.present_classes, 1):.1%} ± {evidence['chance_noise']:.1%}) after "
            f"{epochs} epochs; {story}.",
            f"The model has learned nothing that transfers to this split: check {alignment}, "
            "the train/val preprocessing, and the learning rate.",
        )
    raise ValueError(f"{code!r} is not a verdict about learning")


def loss_at_chance_text(epoch_losses: Sequence[float], num_classes: int) -> VerdictText:
    """``eval.loss_at_chance``: the last ``epoch_losses`` sat at ln(``num_classes``)."""
    chance = math.log(num_classes)
    return VerdictText(
        Severity.WARNING,
        f"The training loss has stayed at ln({num_classes}) = {chance:.3f} for {len(epoch_losses)} epochs "
        f"({', '.join(f'{loss:.3f}' for loss in epoch_losses)}): the model predicts a uniform "
        "distribution and learns nothing.",
        "Check that labels match the inputs, that the logits are not squashed (ReLU/softmax before the loss), "
        "that gradients reach the head, and the learning rate. A deep network without normalisation layers on "
        "plain SGD can sit here for a few epochs before it learns: this finding is marked resolved if it does.",
    )


def loss_at_prior_text(
    split: str,
    epoch_losses: Sequence[float],
    train_losses: Sequence[float],
    prior_entropy: float,
    distinct_targets: int,
    unigram_entropy: float | None = None,
) -> VerdictText:
    """``eval.loss_at_prior``: the loss a model computes itself never went below ``prior_entropy``, the entropy of
    the frequencies of the ``distinct_targets`` target ids of ``split``, in its last ``epoch_losses`` (the training
    split's are ``train_losses``); with ``unigram_entropy``, ``prior_entropy`` is the lower position prior (each
    position's target frequencies)."""
    baseline = (
        f"the entropy of the frequencies of its {distinct_targets} {split} target ids (epoch means "
        f"{_values(epoch_losses)}): that is the loss of a model that ignores its input and predicts how often each "
        "target occurs"
    )
    if unigram_entropy is not None:
        baseline = (
            f"the loss of predicting each target from its position in the sequence alone (epoch means "
            f"{_values(epoch_losses)}; the frequencies of its {distinct_targets} {split} target ids alone give "
            f"{unigram_entropy:.3f}): what it learned is which tokens sit at which position"
        )
    if split == "train":
        message = (
            f"The training loss the model computes itself never went below {prior_entropy:.3f}, {baseline}, so it "
            "learned nothing from its input."
        )
    else:
        message = (
            f"The model's own loss on the {split} split never went below {prior_entropy:.3f}, {baseline}, while its "
            f"training loss went to {train_losses[-1]:.3f}: it memorises its training targets and nothing of it "
            "transfers."
        )
    return VerdictText(
        Severity.WARNING,
        message,
        "Check that the `labels` belong to their inputs (for a causal LM pass labels=input_ids and let the model "
        "shift them; do not draw, shuffle or join labels separately from input_ids), that the model receives its "
        "input (input_ids not replaced, attention_mask not all zero), the train/val preprocessing (one tokenizer), "
        "and the learning rate.",
    )


def activated_text(kind: str, split: str, floor: float, probability_nll: float | None) -> VerdictText:
    """``output.activated``: the ``split`` outputs used as logits went through ``kind`` (softmax, sigmoid, relu); for
    a softmax or sigmoid, the training loss stayed above the ``floor`` of a logit loss on probabilities while the
    outputs read as probabilities score ``probability_nll``."""
    described = {
        "softmax": "already probabilities (non-negative, every row sums to 1): a softmax",
        "sigmoid": "all in [0, 1]: a sigmoid",
        "relu": "non-negative with many exact zeros: a ReLU",
    }[kind]
    return VerdictText(
        Severity.WARNING,
        f"The model's {split} outputs used as logits are {described} is applied before the loss"
        + (
            ""
            if kind == "relu"
            else f" (the training loss never went below {floor:.3f}, the least a logit loss can reach on "
            f"probabilities, though read as probabilities they score {probability_nll:.3f})"
        )
        + ".",
        "Return raw logits from forward: remove the final softmax/sigmoid/ReLU; CrossEntropyLoss and "
        "BCEWithLogitsLoss apply (log-)softmax/sigmoid themselves. Apply it only for inference outputs.",
    )
