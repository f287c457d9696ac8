"""What a regression run measures, and the pure rules that judge it.

:class:`RegressionSums` accumulates an evaluation split's predictions against its targets (torchmetrics states,
sum-reduced, per output column); :class:`RegressionSummary` is what those sums say as numbers: R² against predicting
the training targets' mean, with its standard error, the spread of the predictions against that of the targets.
:class:`TrainingFit` keeps each training step's loss beside its targets, so that each epoch's training loss is compared
with the loss of the best constant prediction *on the same batches* (:class:`EpochFit`: a paired difference, whose
noise is that of the model's fit, not of the batches). The rules (:func:`at_mean_checks`, :func:`fit_evidence`) judge
those numbers alone; ``benchmarks/calibrate_regression.py`` calibrates their thresholds on the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sanity.folding import FoldingMetric
from lightning_sanity.learnability import CHANCE_Z, MIN_STEPS

# Thresholds; the calibration behind each number is in docs/findings.md (RegressionCallback section).
CONSTANT_SHARE = 0.05
"""Standard deviation of the predictions, as a share of the targets', at or below which the predictions are constant:
the model answers (nearly) the same value whatever its input."""
GENERALISE_SHARE = 0.25
"""A training loss that beats the best constant prediction's while the validation R² (plus ``CHANCE_Z`` standard
errors) keeps less than this share of the training R²: what the model fits does not transfer."""
IMPROVING_RISE = 0.01
"""Rise of the validation R² over its last four validations, each higher than the one before and the last above 0,
that shows a slow learner on its way: no verdict while it holds."""
MAX_COLUMNS = 64
"""Outputs with more values per sample are judged as one pooled column (a dense map, not a few named targets)."""
MAX_TRAIN_VALUES = 1 << 20
"""Training target values kept per epoch (8 MB of float64); the steps after it are left out of the paired fit."""

LOSS_KINDS = ("mse", "l1", "smooth_l1")


def as_columns(output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
    """Predictions and targets lined up as ``[N, E]`` (``E`` values per sample: ``[N]``, ``[N, 1]``, ``[N, K]``, a
    forecast ``[N, horizon]``), one pooled column ``[N * E, 1]`` above :data:`MAX_COLUMNS` values per sample;
    ``None`` when the two do not hold the same number of values per sample.

    Example::

        >>> [tuple(t.shape) for t in as_columns(torch.zeros(8, 1), torch.zeros(8))]
        [(8, 1), (8, 1)]
        >>> as_columns(torch.zeros(8, 3), torch.zeros(8)) is None
        True
    """
    if output.ndim == 0 or targets.ndim == 0 or output.shape[0] != targets.shape[0] or output.numel() == 0:
        return None
    if output.numel() != targets.numel() or not output.is_floating_point() or targets.is_complex():
        return None
    rows = output.shape[0]
    width = output.numel() // rows
    if width > MAX_COLUMNS:
        return output.reshape(-1, 1), targets.reshape(-1, 1)
    return output.reshape(rows, width), targets.reshape(rows, width)


def target_columns(targets: Tensor) -> Tensor:
    """Training targets as ``[N, E]`` (pooled above :data:`MAX_COLUMNS`), as :func:`as_columns` lines them up."""
    rows = targets.shape[0] if targets.ndim else 1
    width = targets.numel() // max(rows, 1)
    return targets.reshape(-1, 1) if width > MAX_COLUMNS else targets.reshape(rows, width)


def elementwise_loss(kind: str, predictions: Tensor, targets: Tensor) -> Tensor:
    """The per-element loss ``kind`` (``mse``, ``l1``, ``smooth_l1`` with beta 1) of the user's training loss."""
    difference = predictions - targets
    if kind == "mse":
        return difference**2
    if kind == "l1":
        return difference.abs()
    size = difference.abs()
    return torch.where(size < 1, 0.5 * size**2, size - 0.5)


def best_constant(kind: str, targets: Tensor) -> Tensor:
    """Per column of ``[M, E]`` targets, the constant with the lowest loss ``kind``: the mean for MSE, the median for
    L1, the Huber minimiser (a convex search between the two extremes) for smooth L1.

    Example::

        >>> best_constant("l1", torch.tensor([[0.0], [1.0], [9.0]])).tolist()
        [1.0]
    """
    if kind == "mse":
        return targets.mean(0)
    if kind == "l1":
        return targets.median(0).values
    low, high = targets.min(0).values, targets.max(0).values
    for _ in range(60):  # ternary search: the mean Huber loss is convex in the constant
        left, right = low + (high - low) / 3, high - (high - low) / 3
        worse_left = elementwise_loss(kind, left, targets).mean(0) > elementwise_loss(kind, right, targets).mean(0)
        low, high = torch.where(worse_left, left, low), torch.where(worse_left, high, right)
    return (low + high) / 2


@dataclass(frozen=True)
class EpochFit:
    """One training epoch's loss next to the loss of the best constant prediction on the same batches.

    Attributes:
        loss: Mean of the step losses.
        baseline: Mean, over the same steps, of the loss the best constant prediction (of the epoch's targets: their
            mean for MSE) gets on each step's targets.
        difference: Mean of ``loss - baseline`` per step: below 0 the model beats the constant.
        noise: Standard error of :attr:`difference`, from its spread over the steps (paired: the batch-to-batch
            spread of the targets cancels).
        steps: Steps measured.
        target_mean, target_std: Of the epoch's training targets, per column.
    """

    loss: float
    baseline: float
    difference: float
    noise: float
    steps: int
    target_mean: tuple[float, ...]
    target_std: tuple[float, ...]

    @property
    def r2(self) -> float:
        """The training loss's fall below the constant's, relative to it (the training R² for an MSE)."""
        return -self.difference / self.baseline if self.baseline > 0 else 0.0

    def beats_the_mean(self) -> bool:
        """The training loss is below the constant prediction's by more than ``CHANCE_Z`` standard errors."""
        return self.difference < -CHANCE_Z * self.noise and self.r2 > 0


class TrainingFit:
    """The training steps' losses beside their targets, epoch by epoch: what the training side of the verdict reads.

    Per step, :meth:`track` keeps a detached reference to the loss and a private copy of the targets (no host read);
    :meth:`current` measures the running epoch (one host read, at a validation), :meth:`end_epoch` closes it.

    Example::

        fit = TrainingFit("mse")
        fit.track(loss, targets)  # in on_train_batch_end
        epochs = fit.so_far()  # at a validation
        fit.end_epoch()  # in on_train_epoch_end
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.epochs: list[EpochFit] = []
        """Every completed epoch with a measured step."""
        self._losses: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._values = 0
        self._reference: Tensor | None = None

    def track(self, loss: Tensor, targets: Tensor) -> None:
        """Keep one step's (scaled) loss and its ``[n, E]`` targets, up to :data:`MAX_TRAIN_VALUES` per epoch."""
        if self._values + targets.numel() > MAX_TRAIN_VALUES or targets.numel() == 0:
            return
        self._losses.append(loss.detach().reshape(()))
        self._targets.append(target_columns(targets.detach()).to(torch.float64, copy=True))
        self._values += targets.numel()

    def reference_mean(self) -> Tensor | None:
        """The training targets' mean per column (on their device, no host read): the running epoch's, else the last
        epoch's; ``None`` before any training step."""
        widths = {t.shape[1] for t in self._targets}
        if len(widths) == 1:
            self._reference = torch.cat(self._targets).mean(0)
        return self._reference

    def current(self) -> EpochFit | None:
        """The running epoch's :class:`EpochFit` so far, ``None`` without two measured steps."""
        if len(self._targets) < 2 or len({t.shape[1] for t in self._targets}) != 1:
            return None
        targets = torch.cat(self._targets).cpu()
        losses = torch.stack(self._losses).double().cpu()
        constant = best_constant(self.kind, targets)
        baselines = torch.stack([elementwise_loss(self.kind, constant, t.cpu()).mean() for t in self._targets])
        differences = losses - baselines
        if not bool(torch.isfinite(differences).all()):
            return None
        steps = len(differences)
        return EpochFit(
            loss=float(losses.mean()),
            baseline=float(baselines.mean()),
            difference=float(differences.mean()),
            noise=float(differences.std() / math.sqrt(steps)),
            steps=steps,
            target_mean=tuple(targets.mean(0).tolist()),
            target_std=tuple(targets.std(0, unbiased=False).tolist()),
        )

    def so_far(self) -> list[EpochFit]:
        """The completed epochs and the running one so far."""
        running = self.current()
        return [*self.epochs, running] if running is not None else list(self.epochs)

    def end_epoch(self) -> None:
        running = self.current()
        if running is not None:
            self.epochs.append(running)
        self.reference_mean()
        self._losses, self._targets, self._values = [], [], 0


class RegressionSums(FoldingMetric):
    """Sums behind every reading of one evaluation split's regression, per output column; sum-reduced, so exact
    across DDP ranks. Values are shifted by ``shift`` (the training targets' mean, or the first batch's) before
    summing, so that the sums of squares and fourth powers stay well conditioned for targets far from zero.

    With ``z = y - shift``, ``p = ŷ - shift``, ``e = y - ŷ`` and ``d = z² - e²`` (the improvement of ``ŷ`` on one
    value over predicting ``shift``): ``n``, ``Σz``, ``Σz²``, ``Σp``, ``Σp²``, ``Σe²``, ``Σ|e|``, ``Σd``, ``Σd²``,
    ``Σzd``; the improvement over any other constant, and its standard error, follow from them.
    """

    full_state_update = False
    count: Tensor
    z: Tensor
    zz: Tensor
    p: Tensor
    pp: Tensor
    squared_error: Tensor
    absolute_error: Tensor
    d: Tensor
    dd: Tensor
    zd: Tensor

    _SUMS = ("count", "z", "zz", "p", "pp", "squared_error", "absolute_error", "d", "dd", "zd")

    def __init__(self, columns: int, shift: Tensor | None = None) -> None:
        super().__init__()
        self.columns = columns
        self.shift = None if shift is None else shift.detach().to(torch.float64, copy=True)
        self.shift_is_reference = shift is not None
        """The shift is the training targets' mean: R² is measured against it (else against the split's mean)."""
        for name in self._SUMS:
            self.add_state(name, torch.zeros(columns, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        """Queue copies of ``[N, E]`` predictions and targets (from :func:`as_columns`)."""
        pair = (predictions.detach().to(torch.float64, copy=True), targets.detach().to(torch.float64, copy=True))
        self.queue(pair, 2 * targets.numel())

    def _fold(self, pending: list[tuple[Tensor, Tensor]]) -> None:
        predictions = torch.cat([p for p, _ in pending])
        targets = torch.cat([t for _, t in pending])
        if self.shift is None:
            self.shift = targets.mean(0)  # on the device, no host read
        z, p = targets - self.shift, predictions - self.shift
        e = targets - predictions
        d = z**2 - e**2
        for name, values in (
            ("count", torch.ones_like(z)), ("z", z), ("zz", z**2), ("p", p), ("pp", p**2),
            ("squared_error", e**2), ("absolute_error", e.abs()), ("d", d), ("dd", d**2), ("zd", z * d),
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + values.sum(0))

    def compute(self) -> dict[str, Tensor]:
        sums = {name: getattr(self, name) for name in self._SUMS}
        sums["shift"] = self.shift if self.shift is not None else torch.zeros_like(self.count)
        return sums


@dataclass(frozen=True)
class RegressionSummary:
    """What one evaluation epoch's :class:`RegressionSums` say, pooled over the output columns.

    Attributes:
        samples: Values per column (samples, or sample-positions for a pooled column).
        columns: Output columns.
        mse, mae: Mean squared / absolute error of the predictions.
        r2: R² against predicting :attr:`reference` (``1 - SSE / Σ(y - reference)²``).
        r2_noise: Standard error of :attr:`r2` (of the mean per-value improvement over the reference).
        reference: ``"training mean"`` or, without training targets (a test-only run), ``"split mean"``.
        r2_own, r2_own_noise: The usual R², against the split's own mean (the best constant for the split: far
            below :attr:`r2` when the split's targets are offset from the training targets), and its standard error.
        target_mean, target_std: Of the split's targets (first column; pooled std over the columns).
        prediction_std: Pooled standard deviation of the predictions.
        reference_mean: The training targets' mean (first column), when it is the reference.
    """

    samples: int
    columns: int
    mse: float
    mae: float
    r2: float
    r2_noise: float
    reference: str
    r2_own: float
    r2_own_noise: float
    target_mean: float
    target_std: float
    prediction_std: float
    reference_mean: float | None = None

    @property
    def worst_r2_bound(self) -> float:
        """The lower of the two R² (against the training mean, against the split's mean) plus ``CHANCE_Z`` standard
        errors: the most of the training fit that the validation can show transferred."""
        return min(self.r2 + CHANCE_Z * self.r2_noise, self.r2_own + CHANCE_Z * self.r2_own_noise)

    @property
    def no_better(self) -> bool:
        """One of the two R² within ``CHANCE_Z`` standard errors of 0 or below: no better than a constant."""
        return min(self.r2 - CHANCE_Z * self.r2_noise, self.r2_own - CHANCE_Z * self.r2_own_noise) <= 0

    @property
    def std_ratio(self) -> float:
        """Spread of the predictions as a share of the targets' (0: a constant)."""
        return self.prediction_std / self.target_std if self.target_std > 0 else math.inf

    @classmethod
    def from_sums(cls, sums: dict[str, Tensor], training_reference: bool) -> RegressionSummary | None:
        """Pool per-column sums (from :meth:`RegressionSums.compute`); the reference is the shift (the training
        mean) when ``training_reference``, the split's own mean otherwise. ``None`` for an empty split."""
        s = {name: value.detach().double().cpu().reshape(-1) for name, value in sums.items()}  # compute() squeezes
        n = s["count"]
        if float(n.sum()) < 2:
            return None
        safe = n.clamp(min=1)
        mean_z = s["z"] / safe
        var_y = (s["zz"] / safe - mean_z**2).clamp(min=0)
        var_p = (s["pp"] / safe - (s["p"] / safe) ** 2).clamp(min=0)
        reference = torch.zeros_like(mean_z) if training_reference else mean_z
        r2, noise = _r2(s, reference)
        r2_own, own_noise = _r2(s, mean_z)
        count = float(n.sum())
        shift = s["shift"]
        return cls(
            samples=int(n[0]),
            columns=len(n),
            mse=float(s["squared_error"].sum()) / count,
            mae=float(s["absolute_error"].sum()) / count,
            r2=r2,
            r2_noise=noise,
            reference="training mean" if training_reference else "split mean",
            r2_own=r2_own,
            r2_own_noise=own_noise,
            target_mean=float(shift[0] + mean_z[0]),
            target_std=math.sqrt(float(var_y.mean())),
            prediction_std=math.sqrt(float(var_p.mean())),
            reference_mean=float(shift[0]) if training_reference else None,
        )


def _r2(s: dict[str, Tensor], mu: Tensor) -> tuple[float, float]:
    """R² of the predictions against predicting ``shift + mu`` per column, and its standard error (of the mean
    per-value improvement ``d = (y - shift - mu)² - (y - ŷ)²``, from the shifted sums)."""
    n = s["count"]
    ss_reference = s["zz"] - 2 * mu * s["z"] + n * mu**2
    improvement = s["d"] - 2 * mu * s["z"] + n * mu**2
    squares = s["dd"] + 4 * mu**2 * s["zz"] + n * mu**4 - 4 * mu * s["zd"] + 2 * mu**2 * s["d"] - 4 * mu**3 * s["z"]
    safe = n.clamp(min=1)
    spread = (squares / safe - (improvement / safe) ** 2).clamp(min=0)
    total = float(ss_reference.sum())
    if total <= 0:
        return (0.0 if float(s["squared_error"].sum()) == 0 else -math.inf), 0.0
    return float(improvement.sum()) / total, math.sqrt(float((spread * n).sum())) / total


def at_mean_checks(summary: RegressionSummary) -> dict[str, bool]:
    """What one validation supports before any training evidence: R² against the training mean or against the
    split's own mean within ``CHANCE_Z`` standard errors of 0 or below it (``no_better``), and predictions of
    (nearly) one value (``constant``)."""
    return {
        "no_better": summary.no_better,
        "constant": summary.std_ratio <= CONSTANT_SHARE,
    }


def is_at_mean(summary: RegressionSummary) -> bool:
    """The model does no better than predicting the training mean, or predicts a constant."""
    return any(at_mean_checks(summary).values())


def beats_the_mean(summary: RegressionSummary) -> bool:
    """R² clearly above 0 (``CHANCE_Z`` standard errors) with predictions that vary: a verdict no longer holds."""
    return not is_at_mean(summary)


def is_still_improving(r2s: Sequence[float]) -> bool:
    """The validation R² rose at each of the last three validations, by ``IMPROVING_RISE`` in all, to above 0: a
    slow learner on its way (a model far below the mean that creeps towards it is unlearning an offset, not learning).

    Example::

        >>> is_still_improving([0.0, 0.02, 0.05, 0.09]), is_still_improving([-40.0, -20.0, -9.0, -3.0])
        (True, False)
    """
    recent = list(r2s[-4:])
    if len(recent) < 4:
        return False
    rising = all(later > earlier for earlier, later in zip(recent, recent[1:], strict=False))
    return rising and recent[-1] > 0 and recent[-1] - recent[0] >= IMPROVING_RISE


def fit_evidence(
    epochs: Sequence[EpochFit], history: Sequence[RegressionSummary], steps: int, remaining_epochs: float = math.inf
) -> str | None:
    """Whether the run had its chance, from the training fit and the validations so far (``history``, latest last):

    - ``"at the mean"``: after ``MIN_STEPS`` optimizer steps, the training loss of neither of the last two epochs
      went below the best constant prediction's (by ``CHANCE_Z`` paired standard errors; one epoch among many does
      by chance), and at the pace of its latest fall it would not before training ends (``remaining_epochs``;
      :func:`is_above_the_mean`): the model learned the targets' mean at most;
    - ``"memorising"``: the training loss of one of the last two epochs beats the constant while the latest
      validation R², even ``CHANCE_Z`` standard errors higher, keeps less than ``GENERALISE_SHARE`` of the training R²;
    - ``None`` otherwise (still on its way, a weak learner that transfers what it learns, a validation R² still
      rising: :func:`is_still_improving`).
    """
    if not epochs or not history or is_still_improving([entry.r2 for entry in history]):
        return None
    if not any(epoch.beats_the_mean() for epoch in epochs[-2:]):
        return "at the mean" if steps >= MIN_STEPS and is_above_the_mean(epochs, remaining_epochs) else None
    fitted = max(epoch.r2 for epoch in epochs[-2:])
    return "memorising" if history[-1].worst_r2_bound < GENERALISE_SHARE * fitted else None


def is_above_the_mean(epochs: Sequence[EpochFit], remaining_epochs: float) -> bool:
    """Neither of the last two epochs' training loss beat the best constant prediction's
    (:meth:`EpochFit.beats_the_mean`), and at the pace of its latest fall it would not before training ends: a fall
    counts only beyond ``CHANCE_Z`` standard errors of the two epochs' difference (a loss bouncing around the
    constant's does not fall), and a model unlearning a large initial offset falls fast in its first epochs, so only
    the latest fall sets the pace.

    Example::

        >>> def epoch(difference, noise): return EpochFit(1.0, 1.0, difference, noise, 11, (0.0,), (1.0,))
        >>> is_above_the_mean([epoch(0.5, 0.1), epoch(0.02, 0.03), epoch(0.01, 0.03)], 5)  # stuck at the mean
        True
        >>> is_above_the_mean([epoch(0.9, 0.1), epoch(0.6, 0.05), epoch(0.3, 0.05)], 5)  # falling towards it
        False
    """
    if len(epochs) < 2 or any(epoch.beats_the_mean() for epoch in epochs[-2:]):
        return False
    before, latest = epochs[-2], epochs[-1]
    fall = before.difference - latest.difference
    pace = fall if fall > CHANCE_Z * math.hypot(before.noise, latest.noise) else 0.0
    if pace == 0.0:
        return True
    return latest.difference - pace * remaining_epochs >= -CHANCE_Z * latest.noise
