"""The task a run trains: what the model predicts and against which targets, decided once per run.

On the first training steps, the step's returned loss is recomputed from every captured output and batch tensor
(:func:`find_pairing`): the pair whose standard loss gives the returned value is the user's own
``(predictions, targets)``, and its shapes, dtypes and loss name say which kind of task it is (:func:`task_kind`). A
step that returns the loss its model computed (a Hugging Face ``outputs.loss``) is an ``internal_loss`` task. The
first callback that decides publishes the :class:`Task` on the run (:func:`lightning_sanity.run.publish_task`); every
other callback reads it from there (:func:`lightning_sanity.run.task_of`) instead of deciding again.
:class:`~lightning_sanity.ConfusionCallback` reads its evaluation batches by it, the step-zero checks of
:class:`~lightning_sanity.ModelChecksCallback` judge the loss on its pair.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_sanity.batch import BatchParts, batch_tensors, tensor_at
from lightning_sanity.losses import MATCH_TOLERANCE, MATCH_TOLERANCE_HALF, LossContext, multi_hot_rows, reproduces_loss
from lightning_sanity.observe import ForwardCall, StepObserver
from lightning_sanity.outputs import output_tensor, scored_outputs
from lightning_sanity.target_prior import target_reading

# Thresholds; the calibration behind each number is in docs/findings.md (ConfusionCallback section).
PAIRING_STEPS = 3
"""Training steps whose returned loss is recomputed from the captured outputs and batch tensors to find which pair
the user's loss reads (a custom loss matches none: accuracy verdicts are then left out)."""

KINDS = ("multiclass", "binary", "dense", "token", "multilabel", "regression", "internal_loss", "unknown")
"""Every :attr:`Task.kind`."""
CLASSIFICATION_KINDS = frozenset({"multiclass", "binary", "dense", "token"})
"""Kinds whose targets are class indices: a confusion matrix counts them."""
CLASS_LOSSES = frozenset({"cross_entropy", "nll", "nll_of_log"})
BINARY_LOSSES = frozenset({"bce_with_logits", "bce"})
REGRESSION_LOSSES = frozenset({"mse", "l1", "smooth_l1"})
INTERNAL_LOSS = "internal"
""":attr:`Task.loss` of a loss the model computed itself."""


@dataclass(frozen=True)
class ScorePairing:
    """Which output and which batch tensor the user's training loss was computed from
    (:func:`~lightning_sanity.losses.reproduces_loss`).

    Attributes:
        source: ``"call:<name>"`` for a top-level forward call (``""`` is the LightningModule itself), ``"child:<k>"``
            for the k-th last output of a direct child called inside it.
        target: Position or key of the target tensor in the batch; ``None`` for the one ``split_batch`` finds.
        loss: The standard loss that reproduced the user's (e.g. ``cross_entropy``, ``bce_with_logits``), or the
            class name of the model's own loss module that did.
    """

    source: str
    target: int | str | None
    loss: str


@dataclass(frozen=True)
class Task:
    """What the run's model predicts and against which targets: decided once per run, shared by every callback.

    Attributes:
        kind: One of :data:`KINDS`: ``multiclass`` (``[N, C]`` class scores), ``binary`` (one logit or probability
            per sample), ``dense`` (per-pixel / per-position class scores ``[N, C, ...]``), ``token`` (sequence
            labelling ``[N, L, C]``, or ``[N, C, L]`` with an ignore index), ``multilabel`` (``[N, C]`` against
            multi-hot targets), ``regression``, ``internal_loss`` (the model computes its loss: HF ``outputs.loss``),
            ``unknown`` (no output and batch tensor reproduce the returned loss).
        pairing: Where the predictions and the targets are in a step; ``None`` for ``internal_loss`` / ``unknown``.
        loss: The identified loss (``cross_entropy``, ``mse``, a loss module's class name, ``internal``), or ``None``.
        num_classes: Classes (labels for ``multilabel``) of the scores; ``None`` for regression and unknown tasks.
        ignore_index: A target value outside ``[0, C)`` the targets hold (``-100``, ``255``): left out of the loss.
        source: For ``internal_loss``: the call whose output carries the loss.

    Example::

        >>> task = Task("multiclass", ScorePairing("call:", 1, "cross_entropy"), "cross_entropy", 10)
        >>> task.describe()
        "multiclass classification (10 classes), loss cross_entropy on the model's output vs batch[1]"
    """

    kind: str
    pairing: ScorePairing | None = None
    loss: str | None = None
    num_classes: int | None = None
    ignore_index: int | None = None
    source: str | None = None

    def describe(self) -> str:
        """One line for the run report."""
        what = {
            "multiclass": "multiclass classification",
            "binary": "binary classification",
            "dense": "dense (per-pixel / per-position) classification",
            "token": "token classification",
            "multilabel": "multi-label classification",
            "regression": "regression",
            "internal_loss": "loss computed inside the model",
            "unknown": "unknown (no standard loss of a model output and a batch tensor gave the training loss)",
        }[self.kind]
        if self.num_classes is not None:
            what += f" ({self.num_classes} {'labels' if self.kind == 'multilabel' else 'classes'}"
            what += f", ignore index {self.ignore_index})" if self.ignore_index is not None else ")"
        if self.kind == "internal_loss":
            return f"{what} (`{self.source}` returns it as .loss)" if self.source else what
        if self.pairing is None:
            return what
        target = "the batch's targets" if self.pairing.target is None else f"batch[{self.pairing.target!r}]"
        target = f"batch[{self.pairing.target}]" if isinstance(self.pairing.target, int) else target
        return f"{what}, loss {self.loss} on {_readable(self.pairing.source)} vs {target}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the report's ``task`` field)."""
        data = dataclasses.asdict(self)
        data["description"] = self.describe()
        return data


def _readable(source: str) -> str:
    """A pairing's source (:attr:`ScorePairing.source`) as the report says it."""
    kind, _, name = source.partition(":")
    if kind == "call":
        return f"the output of `{name}`" if name else "the model's output"
    if kind == "child":
        return "the output of a module called inside forward"
    return "the step's returned output"


def task_kind(scores: Tensor, targets: Tensor, loss: str) -> tuple[str, int | None, int | None]:
    """``(kind, num_classes, ignore_index)`` of predictions ``scores`` trained against ``targets`` with ``loss``
    (a name from :func:`~lightning_sanity.losses.reproduces_loss`), from their shapes and dtypes (a host read).

    Example::

        >>> task_kind(torch.randn(8, 5), torch.randint(0, 5, (8,)), "cross_entropy")
        ('multiclass', 5, None)
        >>> task_kind(torch.randn(8, 3, 4, 4), torch.full((8, 4, 4), 255), "cross_entropy")
        ('dense', 3, 255)
        >>> task_kind(torch.randn(8), torch.randn(8), "mse")
        ('regression', None, None)
    """
    if loss in REGRESSION_LOSSES or scores.ndim == 0 or targets.ndim == 0 or targets.is_complex():
        return ("regression", None, None) if loss in REGRESSION_LOSSES else ("unknown", None, None)
    per_sample = scores.numel() == scores.shape[0]
    if targets.is_floating_point() or targets.dtype == torch.bool or scores.shape == targets.shape:
        values = targets.float()
        over_classes = scores.ndim >= 2 and scores.shape == targets.shape and scores.shape[1] >= 2
        if over_classes and loss not in BINARY_LOSSES and bool(((values >= 0) & (values <= 1)).all()):
            rows = multi_hot_rows(targets)  # targets over the classes: soft labels, one-hot, or multi-hot
            kind = "multilabel" if rows is not None and rows[1] > 0 else "dense" if scores.ndim >= 3 else "multiclass"
            return kind, scores.shape[1], None
        if not bool(((values == 0) | (values == 1)).all()):
            return ("unknown" if loss in BINARY_LOSSES else "regression"), None, None
        if per_sample:
            return "binary", 2, None
        if scores.ndim >= 3 and scores.shape[1] == 1:
            return "dense", 2, None  # binary masks, one logit per pixel
        return "multilabel", scores.shape[1], None
    # integer targets: class indices
    if scores.ndim == targets.ndim + 1 and scores.ndim >= 2:
        channels_first = scores.shape[2:] == targets.shape[1:]
        classes = scores.shape[1] if channels_first else scores.shape[-1]
        ignore = _ignore_index(targets, classes)
        if scores.ndim == 2:
            return "multiclass", classes, ignore
        sequence = targets.ndim == 2 and (not channels_first or ignore is not None)
        return ("token" if sequence else "dense"), classes, ignore
    if per_sample and scores.numel() == targets.numel():
        return "binary", 2, None
    return "unknown", None, None


def _ignore_index(targets: Tensor, classes: int) -> int | None:
    """The first target value outside ``[0, classes)``: what the loss was told to leave out."""
    outside = targets[(targets < 0) | (targets >= classes)]
    return int(outside.min()) if outside.numel() else None


def _with_ignored_targets(context: LossContext, scores: Tensor, target: Tensor) -> LossContext:
    """``context`` with the target values that cannot be a class of ``scores`` (e.g. 255 borders passed as
    ``ignore_index`` to ``F.cross_entropy``, which no module shows) also tried as ignore indices."""
    if target.is_floating_point() or target.dtype == torch.bool or scores.ndim < 2:
        return context
    outside = target[(target < 0) | (target >= min(scores.shape[1], scores.shape[-1]))].unique()
    extra = tuple(int(v) for v in outside[:2].tolist() if int(v) not in context.ignore_indices)
    return dataclasses.replace(context, ignore_indices=context.ignore_indices + extra) if extra else context


def pairing_targets(batch: object, parts: BatchParts) -> list[tuple[int | str | None, Tensor]]:
    """Candidate targets of a training batch by position or key: the one ``split_batch`` finds (``None``), every
    other tensor of the batch but the inputs, and each 1-d one as a column (the step may give the loss
    ``y.unsqueeze(1)``, e.g. an MSE broadcasting it against ``[N, C]``). A graph's are cut to the split's nodes."""
    targets: list[tuple[int | str | None, Tensor]] = [(None, parts.targets)] if parts.targets is not None else []
    targets += [
        (where, parts.select(tensor))
        for where, tensor in batch_tensors(batch)
        if tensor is not parts.targets and tensor is not parts.inputs
    ]
    targets += [(where, target.unsqueeze(-1)) for where, target in targets if target.ndim == 1]
    return targets


def find_pairing(
    observer: StepObserver,
    targets: list[tuple[int | str | None, Tensor]],
    loss: float,
    context: LossContext,
    parts: BatchParts | None = None,
) -> ScorePairing | None:
    """Recompute the step's returned ``loss`` from each captured module output and each candidate target (a host
    read, on the first training steps only): the first pair that gives it is the user's own (scores, target).
    ``parts``: a graph's outputs are cut to the split's nodes first, as the step cuts them for its loss."""
    for source, scores in _step_outputs(observer, parts):
        for where, target in targets:
            if target.ndim == 0 or target.shape[0] != scores.shape[0]:
                continue
            matched = reproduces_loss(scores, target, loss, _with_ignored_targets(context, scores, target))
            if matched is not None:
                return ScorePairing(source, where, matched.name)
    return None


def _step_outputs(observer: StepObserver, parts: BatchParts | None) -> list[tuple[str, Tensor]]:
    """The module calls' float outputs by source (the step's own output is the loss), cut to the split's rows."""
    found = []
    for source, output, _ in scored_outputs(None, observer)[1:]:
        scores = output_tensor(output)
        if scores is None or not scores.is_floating_point() or scores.ndim == 0:
            continue
        found.append((source, parts.select(scores) if parts is not None else scores))
    return found


def locate(
    pairing: ScorePairing, observer: StepObserver | None, batch: Any, parts: BatchParts
) -> tuple[Tensor, Tensor, ForwardCall | None] | None:
    """The ``(scores, targets, call)`` of ``pairing`` in one step (``call`` is ``None`` for a child's output), cut to
    the split's rows; ``None`` when the step has no such output or target."""
    target = tensor_at(batch, pairing.target) if pairing.target is not None else parts.targets
    if observer is None or target is None:
        return None
    target = parts.select(target)
    calls = {f"call:{call.name}": call for call in observer.calls if call.returned}
    for source, output, _ in scored_outputs(None, observer)[1:]:
        scores = output_tensor(output) if source == pairing.source else None
        if scores is None or scores.ndim == 0:
            continue
        return parts.select(scores), target, calls.get(source)
    return None


def internal_loss_source(observer: StepObserver, loss: float) -> str | None:
    """The call whose output carries the returned ``loss`` itself (``output.loss`` / ``output["loss"]``): the model
    computed its loss (Hugging Face models given ``labels``)."""
    for source, output, _ in scored_outputs(None, observer)[1:]:
        carried = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(carried, Tensor) or carried.numel() != 1 or not carried.is_floating_point():
            continue
        tolerance = MATCH_TOLERANCE_HALF if carried.dtype in (torch.float16, torch.bfloat16) else MATCH_TOLERANCE
        value = float(carried.detach())
        if math.isfinite(value) and abs(value - loss) <= tolerance * max(abs(loss), 1e-2):
            return source
    return None


def _reads_shifted_labels(observer: StepObserver, source: str, batch: Any) -> bool:
    """The model's own loss is its cross-entropy against its ``labels`` shifted by one position (a causal LM)."""
    reading = target_reading(observer, source, batch)
    return reading is not None and reading.shifted


def decide_task(
    observer: StepObserver, batch: Any, parts: BatchParts, loss: float, context: LossContext
) -> Task | None:
    """The task of a training step that returned ``loss``: its pairing and kind, ``internal_loss`` when the model's
    own output carries the loss, or ``None`` when neither is found on this step."""
    pairing = find_pairing(observer, pairing_targets(batch, parts), loss, context, parts)
    source = internal_loss_source(observer, loss)
    if source is not None and (pairing is None or _reads_shifted_labels(observer, source, batch)):
        # a causal LM's own loss reads its labels shifted by one: an unshifted pair that also gave the loss did so
        # by chance (near initialisation every cross-entropy is about ln V)
        return Task("internal_loss", loss=INTERNAL_LOSS, source=source)
    if pairing is None:
        return None
    located = locate(pairing, observer, batch, parts)
    if located is None:
        return Task("unknown", pairing, pairing.loss)
    kind, classes, ignore = task_kind(located[0], located[1], pairing.loss)
    return Task(kind, pairing, pairing.loss, classes, ignore)
