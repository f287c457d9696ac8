"""The task a run trains: which output of the step holds the predictions and which batch tensor the targets, as
the user's own training loss reads them.

Found once, on the first training steps, by recomputing the step's returned loss from every captured output and batch
tensor (:func:`find_pairing`): the pair whose standard loss gives the returned value is the user's own
``(predictions, targets)``. :class:`~lightning_sanity.ConfusionCallback` reads its evaluation batches that way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sanity.batch import BatchParts, batch_tensors
from lightning_sanity.losses import LossContext, reproduces_loss
from lightning_sanity.observe import StepObserver
from lightning_sanity.outputs import output_tensor, scored_outputs

# Thresholds; the calibration behind each number is in docs/findings.md (ConfusionCallback section).
PAIRING_STEPS = 3
"""Training steps whose returned loss is recomputed from the captured outputs and batch tensors to find which pair
the user's loss reads (a custom loss matches none: accuracy verdicts are then left out)."""


@dataclass(frozen=True)
class ScorePairing:
    """Which output and which batch tensor the user's training loss was computed from
    (:func:`~lightning_sanity.losses.reproduces_loss`).

    Attributes:
        source: ``"call:<name>"`` for a top-level forward call (``""`` is the LightningModule itself), ``"child:<k>"``
            for the k-th last output of a direct child called inside it.
        target: Position or key of the target tensor in the batch; ``None`` for the one ``split_batch`` finds.
        loss: The standard loss that reproduced the user's (e.g. ``cross_entropy``, ``bce_with_logits``).
    """

    source: str
    target: int | str | None
    loss: str


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
    ``y.unsqueeze(1)``, e.g. an MSE broadcasting it against ``[N, C]``)."""
    targets: list[tuple[int | str | None, Tensor]] = [(None, parts.targets)] if parts.targets is not None else []
    targets += [
        (where, tensor)
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
) -> ScorePairing | None:
    """Recompute the step's returned ``loss`` from each captured module output and each candidate target (a host
    read, on the first training steps only): the first pair that gives it is the user's own (scores, target)."""
    candidates = scored_outputs(None, observer)[1:]  # the module calls: the step's own output is the loss
    for source, output, _ in candidates:
        scores = output_tensor(output)
        if scores is None or not scores.is_floating_point() or scores.ndim == 0:
            continue
        for where, target in targets:
            if target.ndim == 0 or target.shape[0] != scores.shape[0]:
                continue
            matched = reproduces_loss(scores, target, loss, _with_ignored_targets(context, scores, target))
            if matched is not None:
                return ScorePairing(source, where, matched.name)
    return None
