"""Step-zero rules on the targets, judged from the identified loss (:func:`~lightning_sanity.losses.read_loss`):
multi-hot targets under a softmax loss, regression targets on a scale the model cannot reach, targets copied from
what the model receives.

Each rule is pure (tensors in, a :class:`TargetVerdict` or ``None`` out); :class:`~lightning_sanity.ModelChecksCallback`
records the verdicts at the first training step, before any parameter changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_sanity.findings import Severity
from lightning_sanity.losses import LossReading

# Thresholds; the calibration behind each number is in docs/findings.md (ModelChecksCallback section).
TARGET_SCALE_RATIO = 30.0
"""Regression targets this many times farther (RMS) from the untrained outputs than the outputs' own scale (at least
1) are unscaled: a standard network cannot move its outputs that far in a normal training run."""
MIN_COPIED_TOKENS = 64
"""Labelled token positions needed before "every label equals the input token at its position" is a copy."""
MIN_LABEL_SAMPLES = 16
"""Samples needed before a feature column that is an exact affine function of the label is a copy of it..."""
MIN_BINARY_LABEL_SAMPLES = 64
"""...and for two-valued labels, where a strongly predictive binary feature may agree with a small batch by chance."""
AFFINE_TOLERANCE = 1e-4
"""Largest difference between a standardised feature column and the standardised label that counts as equal."""
REGRESSION_LOSSES = ("mse", "l1", "smooth_l1")
TOKEN_LOSSES = ("cross_entropy", "nll", "nll_of_log")
TARGET_NAMES = frozenset({"label", "labels", "target", "targets", "y", "mask", "masks", "decoder_labels"})
"""Argument names under which a model receives its targets on purpose (to compute its loss inside)."""


@dataclass(frozen=True)
class TargetVerdict:
    """A finding of these rules, ready to record."""

    code: str
    severity: Severity
    message: str
    hint: str
    subject: str
    evidence: dict[str, Any] = field(default_factory=dict)


def softmax_multilabel(reading: LossReading, loss: float, culprit: str) -> TargetVerdict | None:
    """``loss.softmax_multilabel``: the loss is softmax cross-entropy (:func:`~lightning_sanity.losses.read_loss`
    verdict ``multilabel``) on targets whose rows hold 0/1 values with two or more positives."""
    if reading.verdict != "multilabel" or reading.multi_hot is None:
        return None
    rows, several, not_one_hot = reading.multi_hot
    share = not_one_hot / rows
    per_label = f"{reading.correct_value:.4f}" if reading.correct_value is not None else "n/a"
    return TargetVerdict(
        "loss.softmax_multilabel",
        Severity.ERROR,
        f"At step 0, the loss {loss:.4f} is softmax cross-entropy on the `{culprit}` outputs "
        f"{reading.output_shape} against multi-hot targets {reading.target_shape}: {share:.0%} of the target rows "
        f"are not one-hot ({several} of {rows} have 2 or more positive labels). Softmax makes the labels of a row "
        "compete for one unit of probability, so a sample's labels cannot all be predicted and a threshold per label "
        f"means nothing (per-label binary cross-entropy on the same outputs: {per_label}).",
        "Use BCEWithLogitsLoss / F.binary_cross_entropy_with_logits(logits, targets) on the multi-hot targets, and a "
        "sigmoid per label (probability > threshold) at inference.",
        "loss",
        {
            "returned_loss": loss,
            "identified_loss": reading.matched.label,
            "output_shape": list(reading.output_shape),
            "target_shape": list(reading.target_shape),
            "rows": rows,
            "rows_with_several_positives": several,
            "share_not_one_hot": share,
            "bce_with_logits": reading.correct_value,
        },
    )


@dataclass(frozen=True)
class TargetScale:
    """How far regression targets are from what an untrained model outputs."""

    target_mean: float
    target_std: float
    output_mean: float
    output_std: float
    residual: float
    """RMS of ``targets - outputs`` at step 0."""
    ratio: float
    """``residual / max(RMS of the outputs, 1)``."""


def target_scale(output: Tensor, targets: Tensor) -> TargetScale | None:
    """The scale of ``targets`` against ``output`` of the same size (``None`` otherwise, or when not finite).

    Example::

        >>> scale = target_scale(torch.full((64, 1), 0.1), torch.full((64, 1), -2700.0))
        >>> round(scale.ratio, -2)
        2700.0
    """
    if output.numel() != targets.numel() or output.numel() < 2 or targets.is_complex():
        return None
    out = output.detach().double().reshape(-1)
    tgt = targets.detach().double().reshape(-1)
    if not bool(torch.isfinite(out).all() and torch.isfinite(tgt).all()):
        return None
    residual = float((tgt - out).square().mean().sqrt())
    ratio = residual / max(float(out.square().mean().sqrt()), 1.0)
    return TargetScale(float(tgt.mean()), float(tgt.std()), float(out.mean()), float(out.std()), residual, ratio)


def unscaled_targets(
    reading: LossReading, output: Tensor, targets: Tensor, loss: float, culprit: str
) -> TargetVerdict | None:
    """``target.unscaled``: an MSE/L1/smooth-L1 loss on aligned outputs and targets whose targets lie
    :data:`TARGET_SCALE_RATIO` times farther from the untrained outputs than the outputs' own scale."""
    if reading.verdict != "ok" or reading.matched.name not in REGRESSION_LOSSES:
        return None
    scale = target_scale(output, targets)
    if scale is None or scale.ratio < TARGET_SCALE_RATIO:
        return None
    name = reading.matched.name
    tgt = targets.detach().double().reshape(-1)
    at_mean = float(_ELEMENTWISE[name](tgt - tgt.mean()).mean())  # the loss of predicting the targets' mean
    return TargetVerdict(
        "target.unscaled",
        Severity.WARNING,
        f"At step 0, the {name} targets {reading.target_shape} have mean {scale.target_mean:.4g} and std "
        f"{scale.target_std:.4g}, while the untrained `{culprit}` outputs have mean {scale.output_mean:.3g} and std "
        f"{scale.output_std:.3g}: the targets are {scale.ratio:.0f}x farther from the outputs than the outputs' own "
        f"scale. The step-0 loss {loss:.4g} is {loss / max(at_mean, 1e-12):.3g}x the loss of predicting the targets' "
        "mean: the gradients (or, under Adam, the many steps needed to reach that scale) are spent moving the "
        "outputs to the targets' mean, and the model learns little more than the mean.",
        "Standardise the targets with training-split statistics (y = (y - mean) / std; invert it on the "
        "predictions), or build the scale into the model's head (outputs * std + mean with the training statistics).",
        "targets",
        {
            "returned_loss": loss,
            "identified_loss": reading.matched.label,
            "target_mean": scale.target_mean,
            "target_std": scale.target_std,
            "output_mean": scale.output_mean,
            "output_std": scale.output_std,
            "residual_rms": scale.residual,
            "ratio": scale.ratio,
            "threshold": TARGET_SCALE_RATIO,
            "loss_at_target_mean": at_mean,
        },
    )


_ELEMENTWISE: dict[str, Callable[[Tensor], Tensor]] = {
    "mse": torch.square,
    "l1": torch.abs,
    "smooth_l1": lambda d: torch.where(d.abs() < 1, 0.5 * d.square(), d.abs() - 0.5),
}


def named_tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, Tensor]]:
    """Every tensor a call received, named by its argument position or key path, except those under a target name
    (:data:`TARGET_NAMES`): a model that gets ``labels=`` computes its loss inside, it does not read them as input.

    Example::

        >>> ids = torch.zeros(2, 4, dtype=torch.long)
        >>> [name for name, _ in named_tensors((ids,), {"batch": {"input_ids": ids, "labels": ids}})]
        ['args[0]', 'batch.input_ids']
    """
    found: list[tuple[str, Tensor]] = []

    def walk(name: str, key: str, value: Any) -> None:
        if key.lower() in TARGET_NAMES:
            return
        if isinstance(value, Tensor):
            found.append((name, value))
        elif isinstance(value, Mapping):
            for sub, item in value.items():
                walk(f"{name}.{sub}", str(sub), item)
        elif isinstance(value, (tuple, list)):
            for index, item in enumerate(value):
                walk(f"{name}[{index}]", "", item)

    for index, value in enumerate(args):
        walk(f"args[{index}]", "", value)
    for key, value in kwargs.items():
        walk(str(key), str(key), value)
    return found


def copied_tokens(inputs: list[tuple[str, Tensor]], targets: Tensor, classes: int) -> tuple[str, int] | None:
    """The integer input equal to the ``[N, L]`` token targets at every labelled position (a label in ``[0,
    classes)``; ignored and padded positions are skipped), and how many positions; ``None`` without one or with fewer
    than :data:`MIN_COPIED_TOKENS` labelled positions.

    Example::

        >>> ids = torch.randint(0, 50, (4, 32))
        >>> copied_tokens([("input_ids", ids)], ids.clone(), 50), copied_tokens([("input_ids", ids)], ids.roll(1), 50)
        (('input_ids', 128), None)
    """
    if targets.ndim != 2 or targets.is_floating_point() or targets.dtype == torch.bool:
        return None
    labelled = (targets >= 0) & (targets < classes)
    count = int(labelled.sum())
    if count < MIN_COPIED_TOKENS:
        return None
    for name, tensor in inputs:
        integer = tensor.shape == targets.shape and not tensor.is_floating_point() and not tensor.is_complex()
        if integer and bool((tensor.to(targets.device)[labelled] == targets[labelled]).all()):
            return name, count
    return None


def shifted_token_loss(reading: LossReading, output: Tensor, targets: Tensor) -> float | None:
    """The identified token loss on the next-token pairing (logits at ``t`` against the label at ``t + 1``), on the
    labelled positions: what a causal LM that shifts its labels (inside the model or in the step) returns."""
    if output.ndim != 3 or output.shape[1] < 2:
        return None
    scores = output[:, :-1].reshape(-1, output.shape[-1]).float()
    labels = targets[:, 1:].reshape(-1).long()
    keep = (labels >= 0) & (labels < output.shape[-1])
    scores, labels = scores[keep], labels[keep]
    if len(labels) == 0:
        return None
    if reading.matched.name == "nll_of_log":
        scores = scores.clamp_min(1e-12).log()
    value = F.cross_entropy(scores, labels) if reading.matched.name == "cross_entropy" else F.nll_loss(scores, labels)
    return float(value) if math.isfinite(float(value)) else None


def label_column(inputs: list[tuple[str, Tensor]], targets: Tensor) -> tuple[str, int, float] | None:
    """A column of a ``[N, F]`` (``F >= 2``) input that is an exact affine function of the one-per-sample targets
    (equal, negated, scaled, standardised): ``(input name, column, slope)``; ``None`` without one or with too few
    samples (:data:`MIN_LABEL_SAMPLES`, :data:`MIN_BINARY_LABEL_SAMPLES` for two-valued targets).

    Example::

        >>> features, labels = torch.randn(32, 5), torch.randint(0, 3, (32,))
        >>> features[:, 2] = (labels - 1.0) / 0.8
        >>> label_column([("x", features)], labels)
        ('x', 2, 1.25)
    """
    if targets.numel() == 0 or targets.shape[0] != targets.numel() or targets.is_complex():
        return None
    label = targets.detach().reshape(-1).double()
    distinct = int(label.unique().numel())
    needed = MIN_BINARY_LABEL_SAMPLES if distinct == 2 else MIN_LABEL_SAMPLES
    if distinct < 2 or len(label) < needed or not bool(torch.isfinite(label).all()):
        return None
    label_z = (label - label.mean()) / label.std()
    for name, tensor in inputs:
        if tensor.ndim != 2 or tensor.shape[0] != len(label) or tensor.shape[1] < 2 or tensor.is_complex():
            continue
        columns = tensor.detach().to(label.device).double()
        spread = columns.std(dim=0)
        usable = torch.isfinite(columns).all(dim=0) & (spread > 0)
        columns_z = (columns - columns.mean(dim=0)) / spread.clamp_min(1e-300)
        for sign in (1.0, -1.0):
            equal = usable & ((columns_z - sign * label_z[:, None]).abs().max(dim=0).values <= AFFINE_TOLERANCE)
            if bool(equal.any()):
                column = int(equal.nonzero()[0])
                return name, column, round(sign * float(spread[column]) / float(label.std()), 6)
    return None


def target_in_input(
    reading: LossReading,
    inputs: list[tuple[str, Tensor]],
    output: Tensor,
    targets: Tensor,
    loss: float,
    culprit: str,
) -> TargetVerdict | None:
    """``data.target_in_input``: the identified loss compares the outputs with targets the model receives as input:
    token labels equal to the input ids at the same positions under an unshifted token loss (the shifted reading does
    is farther from the loss), or a feature column that is an exact affine function of the label."""
    if reading.verdict not in ("ok", "activated"):
        return None
    if output.ndim == 3 and targets.ndim == 2 and output.shape[:2] == targets.shape:
        if reading.matched.name not in TOKEN_LOSSES:
            return None
        copied = copied_tokens(inputs, targets, output.shape[-1])
        shifted = shifted_token_loss(reading, output.detach(), targets)
        # At initialisation both pairings give about ln(V): the loss is the one it is closer to.
        if copied is None or (shifted is not None and abs(shifted - loss) <= abs(reading.matched.value - loss)):
            return None
        name, positions = copied
        return TargetVerdict(
            "data.target_in_input",
            Severity.ERROR,
            f"At step 0, the token labels {tuple(targets.shape)} equal `{culprit}`'s input `{name}` at every one of "
            f"their {positions} labelled positions, and the loss {loss:.4f} is {reading.matched.name} of the logits "
            f"at position t against the label at the same position t (the next-token pairing gives "
            f"{_value(shifted)}): the model is trained to copy the token it receives. The loss falls to ~0 within an "
            "epoch and the model predicts nothing.",
            "Shift the labels for next-token prediction: loss = cross_entropy(logits[:, :-1].flatten(0, 1), "
            "labels[:, 1:].flatten()), or build (input_ids[:, :-1], input_ids[:, 1:]) pairs in the dataset "
            "(Hugging Face causal LMs shift labels=input_ids inside the model). A masked LM must replace the "
            "labelled positions in the input and set the others to -100.",
            "targets",
            {
                "returned_loss": loss,
                "identified_loss": reading.matched.label,
                "identified_value": reading.matched.value,
                "input": name,
                "labelled_positions": positions,
                "next_token_loss": shifted,
            },
        )
    column = label_column(inputs, targets)
    if column is None:
        return None
    name, index, slope = column
    how = "equal to the target" if slope == 1 else f"the target times {slope:g} plus a constant"
    return TargetVerdict(
        "data.target_in_input",
        Severity.ERROR,
        f"At step 0, column {index} of `{culprit}`'s input `{name}` is {how} for "
        f"all {targets.shape[0]} samples of the batch, and the loss {loss:.4f} ({reading.matched.name}) is computed "
        "against that target: the model can read the answer from its input, so it learns nothing it could use on "
        "data without the label.",
        "Drop the target column from the features (e.g. X = df.drop(columns=[target]); check feature lists built "
        "with df.columns), and anything computed from the target.",
        "inputs",
        {
            "returned_loss": loss,
            "identified_loss": reading.matched.label,
            "input": name,
            "column": index,
            "slope": slope,
            "samples": int(targets.shape[0]),
        },
    )


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
