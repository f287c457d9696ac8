"""Where an evaluation batch's class scores are: the step's output, a forward call observed during the step, or (last
resort) a forward pass run again on the batch's inputs; and whether its targets are class indices at all.

:class:`SplitReader` is what :class:`~lightning_sanity.ConfusionCallback` knows about one split (val, test, train):
whether it is classification, how many batches were checked, whether a recompute was announced or failed. It speaks
through its callback's ``record`` (``eval.not_classification``, ``sanity.recomputed``, ``sanity.skipped``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_sanity.batch import BatchParts
from lightning_sanity.findings import Finding, Severity
from lightning_sanity.observe import StepObserver, own_forward
from lightning_sanity.outputs import (
    NotClassification,
    class_scores,
    not_class_indices,
    output_tensor,
    reconstructs_input,
    scored_outputs,
)
from lightning_sanity.rng import forked_rng

Align = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor] | None"]
"""``(output, targets) -> (predictions, targets)`` lined up, ``None`` when the shapes do not fit; raises
:class:`~lightning_sanity.outputs.NotClassification` when the pair is not what the reader judges."""

CLASSIFICATION_HINT = (
    "Nothing to fix if this is regression or multi-label; for classification return [N, C] logits and integer class "
    "targets (or pass batch_adapter / num_classes)."
)


class SplitReader:
    """Reads the predictions of one split's batches for an evaluation callback (by default the class scores
    :class:`~lightning_sanity.ConfusionCallback` counts).

    Args:
        split: ``"val"``, ``"test"`` or ``"train"``.
        record: The callback's :meth:`~lightning_sanity.SanityCallback.record`.
        ignore_index: The callback's ``ignore_index``.
        owner: The callback's class name, for the messages.
        align: How an output lines up with the targets (:func:`~lightning_sanity.outputs.class_scores` for class
            scores; a regression or multi-label reader passes its own).
        unread_hint: The fix hint when a split's outputs are not what this reader judges.

    Example::

        reader = SplitReader("val", callback.record, ignore_index=None)
        aligned = reader.aligned_scores(trainer, pl_module, outputs, observer, parts, targets, source=None)
    """

    def __init__(
        self,
        split: str,
        record: Callable[..., Finding],
        ignore_index: int | None,
        *,
        owner: str = "ConfusionCallback",
        align: Align = class_scores,
        unread_hint: str = CLASSIFICATION_HINT,
    ) -> None:
        self.split = split
        self.ignore_index = ignore_index
        self.owner = owner
        self._record = record
        self._align = align
        self._unread_hint = unread_hint
        self.classification: bool | None = None
        """Whether the split's targets are class indices; ``None`` until decided on its first batches."""
        self.quiet = False
        """Leave a split whose outputs are not what this reader judges without a finding (another callback judges
        them)."""
        self.batches_checked = 0
        self.recompute_announced = False
        self.recompute_failed = False

    def aligned_scores(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        observer: StepObserver | None,
        parts: BatchParts,
        targets: Tensor,
        source: str | None,
    ) -> tuple[Tensor, Tensor] | None:
        """Scores aligned with targets from the step output, the observed forward calls, or (last resort) a recompute.

        Candidates (:func:`~lightning_sanity.outputs.scored_outputs`): the output the training loss was found to read
        first, then the step's output, the LightningModule's own calls, the direct children called by the step, the
        children ``forward`` called. A graph's per-node outputs are cut to the split's nodes (``parts.select``), as
        its targets are.
        """
        calls = [call for call in observer.calls if call.returned] if observer is not None else []
        candidates = scored_outputs(outputs, observer)
        if source is not None:
            candidates.sort(key=lambda candidate: candidate[0] != source)
        shapes: list[tuple[int, ...]] = []
        """Shapes of the observed model outputs that did not line up with the targets."""
        for _, candidate, call in candidates:
            tensor = output_tensor(candidate)
            if tensor is None:
                continue
            scores = parts.select(tensor.detach())
            try:
                aligned = self._align(scores, targets)
            except NotClassification as reason:
                self.not_classification(trainer, str(reason))
                return None
            checking = aligned is not None and self.batches_checked < 3
            if checking and call is not None and reconstructs_input(tensor, call, targets):
                name = call.name or type(pl_module).__name__
                shaped = f"`{name}` returns a tensor shaped like its input {list(tensor.shape)} (a reconstruction)"
                self.not_classification(trainer, shaped)
                return None
            if aligned is not None:
                return aligned
            if call is not None:
                shapes.append(tuple(scores.shape))
        if self.split == "train" or pl_module.training:
            return None
        if any(call.name == "" for call in calls) or (calls and type(pl_module).forward is pl.LightningModule.forward):
            # the model's own call was seen: replaying what the step passed to it gives the same unaligned output
            if shapes:
                self.not_classification(
                    trainer,
                    f"the model's outputs (shape {list(shapes[0])}) do not line up with the targets (shape "
                    f"{list(targets.shape)})",
                )
            return None
        return None if parts.inputs is None else self.recompute(trainer, pl_module, parts.inputs, targets)

    def recompute(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: Tensor,
        targets: Tensor,
    ) -> tuple[Tensor, Tensor] | None:
        """Run ``forward`` on the batch's inputs: only when the step called no module whose call could be replayed."""
        # a module in train mode here would update BatchNorm statistics: never recompute then
        if self.recompute_failed or any(m.training for m in pl_module.modules()):
            return None
        if type(pl_module).forward is pl.LightningModule.forward:
            self.cannot_recompute(trainer, "the LightningModule has no forward")
            return None
        try:
            with forked_rng(), torch.no_grad(), own_forward():
                tensor = output_tensor(pl_module(inputs))
        except Exception as error:  # the step may feed forward something else than the batch's inputs
            self.cannot_recompute(trainer, f"forward(inputs) raised {error!r}")
            return None
        if tensor is None:
            return None
        try:
            aligned = self._align(tensor, targets)
        except NotClassification as reason:
            self.not_classification(trainer, str(reason))
            return None
        if aligned is not None and not self.recompute_announced:
            self.recompute_announced = True
            self._record(
                trainer,
                "sanity.recomputed",
                Severity.INFO,
                f"{self.owner} could not find the {self.split} predictions in the step's output or forward call "
                "and runs an extra forward pass per batch to get them.",
                "Return the logits from the step (e.g. `return {'logits': logits}`) or call `self(x)` in it.",
                subject=self.split,
            )
        return aligned

    def cannot_recompute(self, trainer: pl.Trainer, reason: str) -> None:
        self.recompute_failed = True
        self._record(
            trainer,
            "sanity.skipped",
            Severity.INFO,
            f"{self.owner} found no {self.split} predictions in the step's output or in a forward call of the "
            f"module or its direct children, and cannot recompute them from the batch: {reason}.",
            "Return the logits from the step (e.g. `return {'logits': logits}`), call `self(x)` or a direct child "
            "module in it, or pass batch_adapter so the batch's inputs are what forward takes.",
            subject=f"{self.split}:predictions",
            evidence={"reason": reason},
        )

    def is_classification(self, trainer: pl.Trainer, scores: Tensor, targets: Tensor) -> bool:
        """Decide on the first batches whether the targets are class indices (a host read, on check steps only)."""
        if targets.numel() == 0:
            return False
        reason = not_class_indices(scores, targets, self.ignore_index)
        if reason is not None:
            self.not_classification(trainer, reason)
            return False
        self.classification = True
        return True

    def not_classification(self, trainer: pl.Trainer, reason: str) -> None:
        self.classification = False
        if self.quiet:
            return
        self._record(
            trainer,
            "eval.not_classification",
            Severity.INFO,
            f"{self.owner} left the {self.split} split alone: {reason}.",
            self._unread_hint,
            subject=self.split,
            evidence={"reason": reason},
        )
