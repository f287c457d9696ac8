"""The class prior of a loss computed inside the model: the token frequencies of the targets it was given.

A Hugging Face model called with ``labels=`` returns its own cross-entropy (``outputs.loss``); which output and which
targets it read are inside the model. A model that ignores its input and predicts how often each target id occurs
scores the entropy of those frequencies (for a language model: the unigram entropy of its targets), so an epoch-mean
training loss that never goes below that entropy shows nothing was learned from the input (labels that do not belong
to the inputs, a model that never sees them). :func:`target_reading` confirms, on the first training step, which
targets the model's loss read (its cross-entropy on ``.logits`` against ``labels``, shifted by one position for a
causal LM, gives ``.loss``); :class:`UnigramCounts` counts them on the device over the first training epoch.

Targets can also depend on where they are: in text built from phrases at fixed offsets (or templates, headers), a
model that ignores its input learns each position's token frequencies and beats the unigram entropy.
:class:`PositionTokenCounts` counts the training targets per position and token alongside, and
:func:`position_entropy` turns them into what such a model scores on a sequence it has not seen: the lower of the two
is the bar.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lightning_sanity.eval_metrics import TrainLoss
from lightning_sanity.folding import FoldingMetric
from lightning_sanity.learnability import ConfusionSummary, prior_loss_floor, training_evidence
from lightning_sanity.losses import MATCH_TOLERANCE, MATCH_TOLERANCE_HALF
from lightning_sanity.observe import StepObserver
from lightning_sanity.outputs import scored_outputs
from lightning_sanity.position_prior import entropy_levels, pool_positions

IGNORE_INDEX = -100
"""The target value Hugging Face losses leave out (any value outside ``[0, V)`` is left out here)."""
POSITION_TOKEN_BUDGET = 1 << 22
"""Counts kept per (position bucket, token), 32 MB of int64: a 50k vocabulary keeps 83 buckets, longer sequences are
counted on buckets of ``2**k`` positions; a vocabulary past half the budget keeps no position counts."""
SMOOTHING = 1.0
"""Pseudo-targets per bucket of the position prior's held-out probabilities, spread evenly over the vocabulary: a
token never seen at a position costs about ``ln(n V)``; a pseudo-count per token (``V`` in all) would outweigh a few
hundred real targets and lift the estimate far above what the model reaches (measured: 2.21 against 2.09, 256
sequences of 8 phrases over 100 tokens)."""


@dataclass(frozen=True)
class TargetReading:
    """Where the targets of a loss computed inside the model are, as confirmed on one training step.

    Attributes:
        source: The call whose output carries ``.loss`` and ``.logits`` (``"call:model"``, see
            :func:`~lightning_sanity.outputs.scored_outputs`).
        shifted: The loss reads the targets one position ahead (a causal LM shifts ``labels`` inside).
        vocab: The logits' last dim: the number of classes (tokens) a target can be.
    """

    source: str
    shifted: bool
    vocab: int


def step_labels(observer: StepObserver | None, source: str, batch: Any) -> Tensor | None:
    """The integer ``labels`` a model computing its own loss was given this step: the ``labels`` keyword of the call
    ``source`` (or a mapping it was passed), else the batch's ``labels`` entry (the Hugging Face convention)."""
    found: Any = None
    calls = [call for call in observer.calls if call.returned] if observer is not None else []
    call = next((c for c in calls if f"call:{c.name}" == source), None)
    if call is not None:
        found = call.kwargs.get("labels")
        for argument in call.args:
            if found is None and isinstance(argument, Mapping):
                found = argument.get("labels")
    if found is None and isinstance(batch, Mapping):
        found = batch.get("labels")
    if not isinstance(found, Tensor) or found.is_floating_point() or found.is_complex() or found.ndim == 0:
        return None
    return found if found.dtype != torch.bool else None


def target_reading(observer: StepObserver, source: str, batch: Any) -> TargetReading | None:
    """Which targets the model's own loss read on this step (a host read, once): its cross-entropy on the ``.logits``
    of the call ``source`` against :func:`step_labels`, as given or shifted by one position (a causal LM), must give
    the ``.loss`` that call returned. ``None`` when neither does (a regression or multi-label head, a weighted or
    smoothed loss, logits that are not returned): the prior of such targets is not what the loss is measured against.

    Example::

        >>> from lightning_sanity.observe import ForwardCall
        >>> logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
        >>> loss = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
        >>> call = ForwardCall(torch.nn.Identity(), "model", (), {"labels": labels}, {"loss": loss, "logits": logits})
        >>> observer = StepObserver.__new__(StepObserver)
        >>> observer.calls, observer.child_outputs, call.returned = [call], [], True
        >>> target_reading(observer, "call:model", None)
        TargetReading(source='call:model', shifted=True, vocab=7)
    """
    labels = step_labels(observer, source, batch)
    output = next((output for name, output, _ in scored_outputs(None, observer)[1:] if name == source), None)
    loss, logits = (_field(output, "loss"), _field(output, "logits")) if output is not None else (None, None)
    if labels is None or loss is None or logits is None or loss.numel() != 1 or not logits.is_floating_point():
        return None
    vocab = logits.shape[-1]
    value = float(loss.float())
    tolerance = MATCH_TOLERANCE_HALF if logits.dtype in (torch.float16, torch.bfloat16) else MATCH_TOLERANCE
    # both readings are tried and the closer one wins: near initialisation (logits almost uniform) the unshifted
    # cross-entropy of a causal LM can fall within the tolerance by chance, the shifted one is its loss exactly
    errors = {}
    for shifted in (False, True):
        recomputed = _cross_entropy(logits, labels, shifted)
        if recomputed is not None and abs(recomputed - value) <= tolerance * max(abs(value), 1e-2):
            errors[shifted] = abs(recomputed - value)
    return TargetReading(source, min(errors, key=errors.__getitem__), vocab) if errors else None


def _field(output: Any, name: str) -> Tensor | None:
    value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
    return value if isinstance(value, Tensor) else None


def _cross_entropy(logits: Tensor, labels: Tensor, shifted: bool) -> float | None:
    """Mean cross-entropy of ``logits [..., V]`` against ``labels`` (their shape without ``V``), targets outside
    ``[0, V)`` left out; ``shifted``: the logits at position ``t`` against the label at ``t + 1`` (dim 1)."""
    if shifted:
        if labels.ndim < 2 or logits.ndim < 3:
            return None
        logits, labels = logits[:, :-1], labels[:, 1:]
    if logits.shape[:-1] != labels.shape or labels.numel() == 0:
        return None
    flat, targets = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long()
    targets = targets.masked_fill((targets < 0) | (targets >= logits.shape[-1]), IGNORE_INDEX)
    with torch.no_grad():
        value = float(F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX))
    return value if math.isfinite(value) else None


class UnigramCounts(FoldingMetric):
    """How often each target id occurs among the targets a loss read: ``counts[V]``, sum-reduced (exact across DDP
    ranks). Targets outside ``[0, V)`` (``-100``) go to an extra bin that is dropped; updates are a copy of the
    labels, counted a few batches at a time by one ``scatter_add`` on their device (no host read: ``bincount`` on a
    GPU reads its maximum to the host).

    Example::

        >>> counts = UnigramCounts(4, shifted=False)
        >>> counts.update(torch.tensor([[0, 1, 1, -100], [3, 3, 3, 1]]))
        >>> counts.compute().tolist()
        [1, 3, 0, 3]
    """

    full_state_update = False
    counts: Tensor

    def __init__(self, vocab: int, shifted: bool) -> None:
        super().__init__()
        self.vocab = vocab
        self.shifted = shifted
        self.add_state("counts", torch.zeros(vocab + 1, dtype=torch.long), dist_reduce_fx="sum")

    @override
    def update(self, labels: Tensor) -> None:
        targets = labels[:, 1:] if self.shifted and labels.ndim >= 2 else labels
        self.queue(targets.reshape(-1).to(torch.long, copy=True), targets.numel())

    @override
    def _fold(self, pending: list[Tensor]) -> None:
        targets = torch.cat(pending)
        ignored = (targets < 0) | (targets >= self.vocab)
        bins = targets.masked_fill(ignored, self.vocab)
        self.counts.scatter_add_(0, bins, torch.ones_like(bins))

    @override
    def compute(self) -> Tensor:
        return self.counts[: self.vocab]


class PositionTokenCounts(FoldingMetric):
    """How often each target id occurs at each position of its sequence: ``counts[buckets, V + 1]`` (the last column
    for targets left out), sum-reduced across ranks. Positions are counted in buckets of ``width`` positions, doubled
    (the counts pooled pairwise, on their device) whenever a longer batch would not fit the buckets: memory stays
    :data:`POSITION_TOKEN_BUDGET` whatever the sequence length. The shape of a batch is all it reads on the host.

    Example::

        >>> counts = PositionTokenCounts(3, shifted=True)
        >>> counts.update(torch.tensor([[0, 1, 2], [0, 1, -100]]))
        >>> counts.compute()[:2].tolist()  # positions 0 and 1 of the shifted targets (token 1, then 2 or left out)
        [[0, 2, 0], [0, 0, 1]]
    """

    full_state_update = False
    counts: Tensor
    width_low: Tensor
    width_high: Tensor

    def __init__(self, vocab: int, shifted: bool) -> None:
        super().__init__()
        self.vocab = vocab
        self.shifted = shifted
        self.buckets = POSITION_TOKEN_BUDGET // (vocab + 1)
        self.width = 1
        self.add_state("counts", torch.zeros(max(self.buckets, 1) * (vocab + 1), dtype=torch.long), "sum")
        # every rank's bucket width, lowest and highest: counts of different widths cannot be summed
        self.add_state("width_low", torch.tensor(1 << 62), dist_reduce_fx="min")
        self.add_state("width_high", torch.tensor(0), dist_reduce_fx="max")
        self.usable = self.buckets >= 2
        """Whether the counts hold every target by position (sequences ``[N, L]``, a vocabulary the budget fits)."""

    @override
    def update(self, labels: Tensor) -> None:
        targets = labels[:, 1:] if self.shifted and labels.ndim >= 2 else labels
        if targets.ndim != 2:
            self.usable = False
        if not self.usable or targets.numel() == 0:
            return
        while targets.shape[1] > self.buckets * self.width:
            self.fold()  # the queued batches go into buckets of the current width before they are pooled
            grid = self.counts.view(self.buckets, self.vocab + 1)
            pooled = pool_positions(grid.T).T
            grid.zero_()[: len(pooled)] = pooled
            self.width *= 2
        self.queue(targets.to(torch.long, copy=True), targets.numel())

    @override
    def _fold(self, pending: list[Tensor]) -> None:
        for targets in pending:
            bucket = torch.arange(targets.shape[1], device=targets.device) // self.width
            ignored = (targets < 0) | (targets >= self.vocab)
            index = bucket * (self.vocab + 1) + targets.masked_fill(ignored, self.vocab)
            self.counts.scatter_add_(0, index.reshape(-1), torch.ones_like(index).reshape(-1))
        self.width_low.fill_(self.width)
        self.width_high.fill_(self.width)

    @override
    def compute(self) -> Tensor:
        """The ``[buckets, V]`` counts, empty when they do not hold every target by position."""
        if not self.usable or int(self.width_low) != int(self.width_high):
            return torch.zeros(0, self.vocab, dtype=torch.long)
        return self.counts.view(self.buckets, self.vocab + 1)[:, : self.vocab]


class PositionEntropy(NamedTuple):
    """What a model that ignores its input but knows each target's position scores on sequences it has not seen."""

    entropy: float
    """Held-out (leave-one-sequence-position-out) cross-entropy of each bucket's smoothed token frequencies, at the
    bucket width where it is lowest."""
    noise: float
    """Upper bound of its standard error over the sequences (their targets are not independent)."""
    corrected: float
    """The Miller-Madow corrected plug-in ``H(target | bucket)`` at that width (reported, never the bar: biased low
    when a bucket's targets are few for its vocabulary)."""
    width: int
    """Positions per bucket it was estimated on."""


def position_entropy(counts: Tensor, width: int) -> PositionEntropy | None:
    """The position prior of ``[buckets, V]`` target counts on buckets of ``width`` positions (``None`` if empty).

    The plug-in ``H(target | position)`` is biased low, and the Miller-Madow correction is first order only: with a
    few hundred sequences and a vocabulary of thousands, each position's tokens are mostly seen once and both still
    lie far below what the input-ignoring model scores, which would make a healthy model look like it beats nothing.
    Each target is scored instead under its bucket's frequencies without itself, smoothed by :data:`SMOOTHING`
    (a held-out estimate, biased high: a token seen once at a position costs about ``ln(n V)``); pooled buckets
    (``2**k`` positions) trade position detail for samples, the lowest is kept. Its standard error is over sequences,
    whose targets may all move together: ``Var(sum t / M) <= S * sum_b n_b sd_b / M**2``, ``sd_b`` the spread of a
    target's cost in bucket ``b``, ``S`` the most one sequence can add up (``sum_b width_b sd_b``).

    Example::

        >>> counts = torch.tensor([[900, 100, 0], [100, 900, 0]])  # 2 positions, 3 tokens
        >>> prior = position_entropy(counts, 1)
        >>> round(prior.entropy, 3), round(prior.corrected, 3), prior.width
        (0.326, 0.326, 1)
    """
    if counts.numel() == 0 or int(counts.sum()) == 0:
        return None
    best: PositionEntropy | None = None
    corrected = {cell: value for cell, value, _ in entropy_levels(counts.T)}
    grid, cell = counts.double(), 1
    vocab = counts.shape[1]
    while True:
        sizes = grid.sum(1, keepdim=True)
        pseudo = SMOOTHING / vocab
        held_out = (grid - 1 + pseudo).clamp(min=pseudo) / (sizes - 1 + SMOOTHING).clamp(min=1e-12)
        costs = -held_out.log()
        total = float(sizes.sum())
        entropy = float((grid * costs).sum()) / total
        mean = (grid * costs).sum(1, keepdim=True) / sizes.clamp(min=1)
        spread = ((grid * (costs - mean).square()).sum(1) / sizes.squeeze(1).clamp(min=1)).sqrt()
        reach = float(spread.sum()) * cell * width
        noise = math.sqrt(max(reach * float((sizes.squeeze(1) * spread).sum()), 0.0)) / total
        if best is None or entropy < best.entropy:
            best = PositionEntropy(entropy, noise, corrected.get(cell, math.nan), cell * width)
        if len(grid) == 1:
            return best
        grid, cell = pool_positions(grid.T).T, cell * 2


class TargetPrior(NamedTuple):
    """The prior of the targets a loss computed inside the model read over one epoch of a split."""

    summary: ConfusionSummary
    """The target counts as a :class:`~lightning_sanity.learnability.ConfusionSummary` (no predictions): its
    ``prior_entropy``, ``class_shares`` and position prior are what
    :func:`~lightning_sanity.learnability.prior_loss_floor` reads."""
    vocab: int
    shifted: bool
    position: PositionEntropy | None = None
    """The prior of each target given its position, when counted (:class:`PositionTokenCounts`)."""

    @classmethod
    def of(cls, counts: UnigramCounts, positions: PositionTokenCounts | None = None) -> TargetPrior | None:
        """The prior of the counted targets and of their positions (collectives under DDP), ``None`` before any
        target was counted."""
        actual = counts.compute().detach().cpu()
        position = position_entropy(positions.compute().cpu(), positions.width) if positions is not None else None
        if int(actual.sum()) == 0:
            return None
        zeros = torch.zeros_like(actual)
        summary = ConfusionSummary.from_counts(zeros, zeros, actual)
        if position is not None:
            summary = dataclasses.replace(summary, position_entropy=position.entropy, position_noise=position.noise)
        return cls(summary, counts.vocab, counts.shifted, position)

    @property
    def entropy(self) -> float:
        """The loss of a model that ignores its input: the entropy of the target frequencies, or the position
        prior's when lower."""
        return self.summary.input_free_entropy

    @property
    def by_position(self) -> bool:
        """The position prior, not the unigram frequencies, is the bar."""
        return self.summary.position_is_the_prior

    def evidence(self) -> dict[str, Any]:
        """The prior's numbers as a finding shows them."""
        numbers: dict[str, Any] = {
            "prior_entropy": round(self.summary.prior_entropy, 4),
            "ln_vocab": round(math.log(self.vocab), 4),
            "targets_counted": self.summary.total,
            "distinct_targets": self.summary.present_classes,
            "shifted_targets": self.shifted,
            "bar": "position prior" if self.by_position else "unigram prior",
        }
        if self.position is not None:
            numbers.update(
                position_prior_entropy=round(self.position.entropy, 4),
                position_prior_noise=round(self.position.noise, 4),
                position_miller_madow=round(self.position.corrected, 4),
                positions_per_bucket=self.position.width,
            )
        return numbers


class InternalLossWatch:
    """What a loss computed inside the model is judged on: the frequencies of its training targets over the first
    training epoch (:attr:`train_prior`, which holds every training target once; later epochs repeat them), those
    of its validation targets over the first validation (:attr:`val_prior`), and the mean and standard error of the
    model's own validation loss at every validation (:attr:`val_losses`, :attr:`val_noise`).

    Example::

        watch = InternalLossWatch(reading, device)  # on the step that decided the task
        watch.count("train", observer, batch)  # each training step of the first epoch
        watch.count("val", observer, batch)  # each validation step
        watch.end_epoch()  # in on_train_epoch_end, after the epoch's validation
    """

    def __init__(self, reading: TargetReading, device: torch.device) -> None:
        self.reading = reading
        self.train_prior: TargetPrior | None = None
        self.val_prior: TargetPrior | None = None
        self.val_losses: list[float] = []
        """The model's own mean validation loss at each validation of the fit."""
        self.val_noise: list[float] = []
        """The standard error of each of :attr:`val_losses` (from the spread of its batch losses)."""
        self._counts = {split: UnigramCounts(reading.vocab, reading.shifted).to(device) for split in ("train", "val")}
        self._positions: PositionTokenCounts | None = PositionTokenCounts(reading.vocab, reading.shifted).to(device)
        self._batch_losses: list[Tensor] = []

    def counting(self, split: str) -> bool:
        """Whether the targets of ``split`` are still counted (the observer must run for them)."""
        return (self.train_prior if split == "train" else self.val_prior) is None

    def count(self, split: str, observer: StepObserver | None, batch: Any) -> None:
        """Count this step's targets while ``split``'s prior is open; keep a validation step's own loss (detached,
        no host read)."""
        if split == "val" and observer is not None:
            output = next((o for name, o, _ in scored_outputs(None, observer)[1:] if name == self.reading.source), None)
            loss = _field(output, "loss") if output is not None else None
            if loss is not None and loss.numel() == 1 and loss.is_floating_point():
                self._batch_losses.append(loss.detach().reshape(1))
        if self.counting(split):
            labels = step_labels(observer, self.reading.source, batch)
            if labels is not None:
                self._counts[split].update(labels)
                if split == "train" and self._positions is not None:
                    self._positions.update(labels)

    def end_epoch(self) -> None:
        """Close the epoch: the first training epoch's and the first validation's priors, the validation loss (each
        a collective under DDP, on every rank alike)."""
        if self.train_prior is None:
            self.train_prior = TargetPrior.of(self._counts["train"], self._positions)
            self._positions = None  # counted once: its memory goes back
        if self.val_prior is None and self._batch_losses:
            self.val_prior = TargetPrior.of(self._counts["val"])
        losses, self._batch_losses = self._batch_losses, []
        if not losses:
            return
        metric = TrainLoss().to(losses[0].device)
        metric.update(torch.cat(losses))
        mean, _, error = (float(value) for value in metric.compute())
        if math.isfinite(mean):
            self.val_losses.append(mean)
            self.val_noise.append(error if math.isfinite(error) else 0.0)


def loss_at_prior(
    epoch_losses: Sequence[float], noise: Sequence[float], prior: TargetPrior, steps: int, remaining_epochs: float
) -> tuple[str | None, float]:
    """Whether the epoch means ``epoch_losses`` (standard errors ``noise``) of a loss computed inside the model learned
    nothing beyond the frequencies of its targets, ``prior``: ``"never below the prior"`` / ``"stuck"`` as
    :func:`~lightning_sanity.learnability.training_evidence` says (never below the prior's noise floor, not on pace
    to get there in ``remaining_epochs``, after ``MIN_STEPS`` optimizer ``steps``), else ``None``; and the latest
    floor (:func:`~lightning_sanity.learnability.prior_loss_floor`). A latest loss below its floor is never judged.

    Example::

        >>> counts = UnigramCounts(4, shifted=False)
        >>> counts.update(torch.arange(4).repeat(500))
        >>> prior = TargetPrior.of(counts)  # 4 equally frequent targets: ln 4 = 1.386
        >>> loss_at_prior([1.62, 1.45, 1.40, 1.388], [0.002] * 4, prior, 160, 0)[0]  # falling to it only
        'never below the prior'
        >>> loss_at_prior([1.39, 1.388, 1.387], [0.002] * 3, prior, 160, 0)[0]  # flat at it
        'stuck'
        >>> loss_at_prior([1.52, 1.2, 0.9, 0.7], [0.002] * 4, prior, 160, 0)[0] is None
        True
    """
    if not epoch_losses:
        return None, prior.entropy
    floors = [prior_loss_floor(prior.summary, error) for error in noise][: len(epoch_losses)]
    floors += [floors[-1] if floors else prior_loss_floor(prior.summary)] * (len(epoch_losses) - len(floors))
    if epoch_losses[-1] < floors[-1]:
        return None, floors[-1]
    learning = training_evidence(epoch_losses, prior.entropy, steps, floors, remaining_epochs)
    return (learning if learning in ("stuck", "never below the prior") else None), floors[-1]
