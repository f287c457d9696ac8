"""Evaluation logic: a correctly accumulated confusion matrix, and what it reveals."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_sanity import compat
from lightning_sanity.base import EvalSplit, SanityCallback, collect_findings, is_int, jsonable, require
from lightning_sanity.batch import batch_tensors, tensor_at
from lightning_sanity.eval_metrics import EvalCounts, EvalLoss, ProbabilityLoss, TrainLoss
from lightning_sanity.figures import confusion_figure
from lightning_sanity.findings import Severity
from lightning_sanity.folding import FOLD_BATCHES
from lightning_sanity.learnability import (
    LOSS_CHANCE_TOLERANCE,
    ConfusionSummary,
    EpochEvidence,
    beats_the_prior,
    below_chance_z,
    binomial_noise,
    has_learning_signal,
    held_since,
    is_learning_now,
    is_loss_at_chance,
    is_one_class,
    learning_evidence,
    verdict_checks,
)
from lightning_sanity.loggers import log_scalars, scalar_key
from lightning_sanity.losses import LossContext, reproduces_loss
from lightning_sanity.observe import StepObserver, dataloader_label, own_forward
from lightning_sanity.outputs import (
    NotClassification,
    activation_kind,
    class_predictions,
    class_scores,
    is_logit_loss_on_probabilities,
    model_graph,
    output_tensor,
    probability_loss_floor,
    reconstructs_input,
    scored_outputs,
)
from lightning_sanity.rng import forked_rng
from lightning_sanity.triage import input_cause

_NOT_ACCURACY_TOKENS = ("best", "max", "min", "top", "ema", "std", "var", "diff", "gap", "delta", "loss", "train")
_EVAL_HOOKS = {"val": ("validation_step", "on_validation"), "test": ("test_step", "on_test")}

# Thresholds; the calibration behind each number is in docs/findings.md (ConfusionCallback section).
MISMATCH_TOLERANCE = 0.05
"""Absolute accuracy difference tolerated between a logged accuracy and the closest correct reading."""
PAIRING_STEPS = 3
"""Training steps whose returned loss is recomputed from the captured outputs and batch tensors to find which pair
the user's loss reads (a custom loss matches none: accuracy verdicts are then left out)."""


def closest_reading(logged: float, readings: Mapping[str, float]) -> tuple[str, float, float]:
    """The correct accuracy reading closest to ``logged`` (also tried as a percentage): name, value, distance."""
    candidates = [logged] + ([logged / 100.0] if 1.0 < logged <= 100.0 else [])
    return min(
        ((name, value, abs(candidate - value)) for name, value in readings.items() for candidate in candidates),
        key=lambda item: item[2],
    )


def format_matrix(matrix: Tensor, names: Sequence[str] | None = None) -> str:
    """A confusion matrix as aligned text: rows are true classes, columns predicted classes.

    Example::

        >>> print(format_matrix(torch.tensor([[5, 1], [0, 4]]), ["cat", "dog"]))
        true \\ pred cat dog
                cat   5   1
                dog   0   4
    """
    size = matrix.shape[0]
    labels = [str(n) for n in names] if names is not None and len(names) == size else [str(i) for i in range(size)]
    counts = [[str(int(v)) for v in row] for row in matrix.tolist()]
    width = max(len(label) for label in labels + [c for row in counts for c in row])
    corner = "true \\ pred"
    head = corner + " " + " ".join(label.rjust(width) for label in labels)
    rows = [
        label.rjust(len(corner)) + " " + " ".join(c.rjust(width) for c in row)
        for label, row in zip(labels, counts, strict=True)
    ]
    return "\n".join([head, *rows])


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


@dataclass
class _SplitState:
    """What the callback knows about one split (val, test, train)."""

    classification: bool | None = None
    batches_checked: int = 0
    recompute_announced: bool = False
    recompute_failed: bool = False


class ConfusionCallback(SanityCallback):
    """Accumulate a correct confusion matrix over every validation (and test) epoch and judge the evaluation logic.

    Predictions come from what ``validation_step`` / ``test_step`` returns when that is logits (a tensor, or a dict
    with ``logits`` / ``preds`` / ``y_hat`` / ``outputs``), otherwise from the module's own forward call during the
    step (no second forward pass); only as a last resort are they recomputed (one INFO). Which output and which batch
    tensor are scores and targets is what the training loss reads (:attr:`pairing`, found on the first training steps);
    when no standard loss of any such pair gives it, no accuracy verdict is made (one INFO). Each validation dataloader
    has its own matrix. Findings: ``eval.prediction_collapse``, ``eval.chance_level``, ``eval.imbalance_masked``,
    ``eval.metric_mismatch``, ``eval.loss_at_chance``, ``output.activated`` (and INFO ``eval.not_classification``).

    The findings about learning (collapse, chance level, imbalance, loss at chance) are a verdict from measured
    evidence per validation epoch (:attr:`history`: the model's validation cross-entropy, balanced accuracy against
    chance with its binomial noise, the training loss; see :func:`learning_evidence`), and are revisited: once the run
    learns, the finding is marked resolved (``Finding.resolved_epoch``) instead of standing.

    Args:
        num_classes: Number of classes, inferred from the logits when ``None``. Needed only when the step returns
            class indices instead of scores.
        max_classes: Above this many classes keep per-class counts only (O(C) memory, no matrix).
        on_train: Also accumulate the training split (``sanity/confusion/train/...``).
        ignore_index: A target value to leave out (targets outside ``[0, C)``, e.g. 255 or -100, always are).
        compare_keys: Logged metric names to compare with the accumulated accuracy, besides the auto-detected ones
            (names containing ``acc`` logged during that split).
        min_epochs: Training epochs before the heuristics that judge a trained model (collapse, chance level,
            imbalance, loss at chance) may fire; they must also hold at two consecutive validations.
        report_classes: Largest number of classes whose matrix is printed in the run report and whose per-class
            recall is logged.
        strict: Raise on the first ERROR finding.
        batch_adapter: ``batch -> (inputs, targets)`` for batches we cannot read.
        figure_every_n_epochs: Log the confusion-matrix figure at the first epoch, then every N epochs
            (and at every test run); 0 turns it off.
        save_dir: Also save the figures as PNG files here.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Example::

        callback = ConfusionCallback(compare_keys=["val/top1"])
        trainer = Trainer(callbacks=[callback])
        trainer.fit(model, datamodule)
        print(callback.confusion_matrix)  # rows: true class, columns: predicted class
    """

    name: ClassVar[str] = "confusion"
    batch_checks: ClassVar[str] = "accuracy, confusion and learnability verdicts (eval.*)"

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        max_classes: int = 512,
        on_train: bool = False,
        ignore_index: int | None = None,
        compare_keys: Sequence[str] = (),
        min_epochs: int = 2,
        report_classes: int = 20,
        strict: bool = False,
        batch_adapter: Callable[[Any], Any] | None = None,
        figure_every_n_epochs: int = 5,
        save_dir: str | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            strict=strict, batch_adapter=batch_adapter, figure_every_n_epochs=figure_every_n_epochs, save_dir=save_dir
        )
        self.configure_findings(ignore, severity)
        require(
            num_classes is None or (is_int(num_classes) and num_classes >= 2),
            "num_classes",
            "None or an int >= 2",
            num_classes,
        )
        require(is_int(max_classes) and max_classes >= 2, "max_classes", "an int >= 2", max_classes)
        require(isinstance(on_train, bool), "on_train", "a bool", on_train)
        require(ignore_index is None or is_int(ignore_index), "ignore_index", "None or an int", ignore_index)
        require(
            not isinstance(compare_keys, str) and all(isinstance(k, str) for k in compare_keys),
            "compare_keys",
            "a sequence of metric names",
            compare_keys,
        )
        require(is_int(min_epochs) and min_epochs >= 1, "min_epochs", "an int >= 1", min_epochs)
        require(is_int(report_classes) and report_classes >= 0, "report_classes", "an int >= 0", report_classes)
        self.num_classes = num_classes
        self.max_classes = max_classes
        self.on_train = on_train
        self.ignore_index = ignore_index
        self.compare_keys = tuple(compare_keys)
        self.min_epochs = min_epochs
        self.report_classes = report_classes
        self.confusion_matrix: Tensor | None = None
        """The last completed validation epoch's ``[C, C]`` matrix (first val dataloader), rows true, columns
        predicted, summed over ranks; ``None`` above ``max_classes``."""
        self.confusion_matrices: dict[str, Tensor] = {}
        """Last matrix per split label (``"val"``, ``"val/dataloader_idx_1"``, ``"test"``, ``"train"``)."""
        self.summaries: dict[str, ConfusionSummary] = {}
        """Last :class:`ConfusionSummary` per split label."""
        self.history: dict[str, list[EpochEvidence]] = {}
        """Per validation label, one :class:`EpochEvidence` per validation epoch of the fit: what the learnability
        verdict is judged on."""
        self._counts: dict[tuple[str, int], EvalCounts] = {}
        self._eval_losses: dict[tuple[str, int], EvalLoss] = {}
        self._splits: dict[str, _SplitState] = {}
        self._observer: StepObserver | None = None
        self._train_loss: TrainLoss | None = None
        self._step_losses: list[Tensor] = []
        """Training losses not yet handed to ``_train_loss`` (see :class:`TrainLoss`)."""
        self._loss_scale = 1
        self._epoch_losses: list[float] = []
        self._epoch_noise: list[float] = []
        """Standard error of each of ``_epoch_losses`` (:class:`TrainLoss`)."""
        self._lowest_loss = math.inf
        self._suspicious: dict[str, int] = {}
        self._activation: tuple[str, str, int] | None = None
        self._activation_width = 0
        self._probability_loss: ProbabilityLoss | None = None
        self._class_names: list[str] | None = None
        self.pairing: ScorePairing | None = None
        """The output and target the user's training loss reads, once found on a training step."""
        self._pairing_tries = 0
        self._losses_tried = 0

    # ----------------------------------------------------------------- capture
    def _start_capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_capture()
        # the outputs are read, the arguments only for their shapes (no call is replayed): no copy per step
        self._observer = StepObserver(pl_module, keep_child_outputs=True, copy_args=False)

    def _stop_capture(self) -> StepObserver | None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.close()
        return observer

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop_capture()
        super().on_exception(trainer, pl_module, exception)

    @override
    def on_eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: EvalSplit,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        if split != "predict":  # prediction batches come without targets
            self._start_capture(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pairing, self._pairing_tries, self._losses_tried = None, 0, 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.on_train or self._pairing_pending():
            self._start_capture(trainer, pl_module)

    @override
    def on_eval_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        split: EvalSplit, dataloader_idx: int,
    ) -> None:  # fmt: skip
        observer = self._stop_capture()
        if split == "predict" or (trainer.sanity_checking and self._pairing_pending()):
            return  # before the first training step, which of the batch's tensors is the target is not known yet
        self._observe(trainer, pl_module, split, outputs, batch, dataloader_idx, observer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        observer = self._stop_capture()
        self._track_train_loss(trainer, pl_module, outputs)
        if self._pairing_pending():
            self._find_pairing(trainer, pl_module, outputs, batch, observer)
        if self.on_train:
            self._observe(trainer, pl_module, "train", outputs, batch, 0, observer)

    # ----------------------------------------------------------------- pairing
    def _pairing_pending(self) -> bool:
        """Still looking for the pair the training loss reads (a batch_adapter names the targets itself)."""
        return self.pairing is None and self.batch_adapter is None and self._pairing_tries < PAIRING_STEPS

    def _pairing_unknown(self) -> bool:
        """Training steps returned losses, but no captured (output, batch tensor) pair reproduced any of them (a
        step without a loss to recompute, e.g. manual optimisation, leaves the default reading)."""
        return self._losses_tried > 0 and not self._pairing_pending() and self.pairing is None

    def _find_pairing(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        observer: StepObserver | None,
    ) -> None:
        """Recompute the step's returned loss from each captured output and each batch tensor (a host read, on the
        first training steps only): the pair that gives it is the user's own (scores, target)."""
        self._pairing_tries += 1
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point() or observer is None:
            return
        parts = self.split_batch(trainer, batch)
        if parts is None:
            return
        scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        value = float(loss.detach()) * scale
        if not math.isfinite(value):
            return
        self._losses_tried += 1
        targets: list[tuple[int | str | None, Tensor]] = [(None, parts.targets)] if parts.targets is not None else []
        targets += [
            (where, tensor)
            for where, tensor in batch_tensors(batch)
            if tensor is not parts.targets and tensor is not parts.inputs
        ]
        # the step may give the loss a column of targets (y.unsqueeze(1)), e.g. an MSE broadcasting it against [N, C]
        targets += [(where, target.unsqueeze(-1)) for where, target in targets if target.ndim == 1]
        context = LossContext.of(pl_module)
        candidates = scored_outputs(None, observer)[1:]  # the module calls: the step's own output is the loss
        for source, output, _ in candidates:
            scores = output_tensor(output)
            if scores is None or not scores.is_floating_point() or scores.ndim == 0:
                continue
            for where, target in targets:
                if target.ndim == 0 or target.shape[0] != scores.shape[0]:
                    continue
                matched = reproduces_loss(scores, target, value, _with_ignored_targets(context, scores, target))
                if matched is not None:
                    self.pairing = ScorePairing(source, where, matched.name)
                    return
        if self._pairing_unknown():
            self.record(
                trainer,
                "sanity.skipped",
                Severity.INFO,
                f"ConfusionCallback judges no accuracy: on {self._losses_tried} training step(s) no standard loss "
                "(cross-entropy, NLL, BCE, MSE, L1) of a model output and a batch tensor gave the returned loss, so "
                "which output holds the class scores and which batch tensor the targets is unconfirmed (a custom "
                "loss, or scores computed outside a module call).",
                "Nothing to fix if the loss is custom; to get the confusion checks, return the class logits from a "
                "module call in the step and pass batch_adapter=lambda batch: (inputs, targets).",
                subject="pairing",
                evidence={
                    "steps": self._losses_tried,
                    "outputs": [source for source, _, _ in candidates],
                    "batch_tensors": [str(where) for where, _ in targets],
                },
            )

    def _observe(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        split: str,
        outputs: Any,
        batch: Any,
        loader: int,
        observer: StepObserver | None,
    ) -> None:
        state = self._splits.setdefault(split, _SplitState())
        if state.classification is False or self._pairing_unknown():
            return
        parts = self.split_batch(trainer, batch)
        if parts is None or parts.inputs is None:
            return
        pairing = self.pairing
        targets = tensor_at(batch, pairing.target) if pairing is not None and pairing.target is not None else None
        targets = parts.targets if targets is None else targets
        if targets is None:
            return
        aligned = self._aligned_scores(trainer, pl_module, split, state, outputs, observer, parts.inputs, targets)
        if aligned is None:
            return
        scores, targets = aligned
        checking = state.batches_checked < 3
        if checking and not self._is_classification(trainer, split, state, scores, targets):
            return
        try:
            predictions = class_predictions(scores, targets, self.num_classes, self.ignore_index)
        except NotClassification as reason:
            self._not_classification(trainer, split, state, str(reason))
            return
        if checking:
            state.batches_checked += 1
            self._check_activation(split, scores, predictions.num_classes, model_graph(observer, scores, targets))
        if self._reads_probabilities(scores):
            # a batch all in [0, 1] is probabilities: 0.5 splits them (a raw logit head that merely started there
            # leaves [0, 1] once trained); decided on the device, no host read
            inside = ((scores[:, 0] >= 0) & (scores[:, 0] <= 1)).all()
            threshold = torch.where(inside, 0.5, 0.0).to(scores.dtype)
            predictions = predictions._replace(predicted=(scores[:, 0] > threshold).long())
        if trainer.sanity_checking:
            return
        if self._probability_loss is not None and split == "val" and scores.shape[1] == self._activation_width:
            self._probability_loss.update(scores, predictions)
        counts = self._counts_for(split, loader, predictions.num_classes, pl_module.device)
        if counts is not None:
            counts.update(predictions.predicted, predictions.targets, predictions.valid, len(targets))
            eval_loss = self._eval_losses.get((split, loader))
            if eval_loss is not None and scores.is_floating_point():
                eval_loss.update(scores, predictions)

    def _aligned_scores(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        split: str,
        state: _SplitState,
        outputs: Any,
        observer: StepObserver | None,
        inputs: Tensor,
        targets: Tensor,
    ) -> tuple[Tensor, Tensor] | None:
        """Scores aligned with targets from the step output, the observed forward calls, or (last resort) a recompute.

        Candidates (:func:`~lightning_sanity.outputs.scored_outputs`): the output the training loss was found to read
        first, then the step's output, the LightningModule's own calls, the direct children called by the step, the
        children ``forward`` called.
        """
        calls = [call for call in observer.calls if call.returned] if observer is not None else []
        candidates = scored_outputs(outputs, observer)
        if self.pairing is not None:
            source = self.pairing.source
            candidates.sort(key=lambda candidate: candidate[0] != source)
        shapes: list[tuple[int, ...]] = []
        """Shapes of the observed model outputs that did not line up with the targets."""
        for _, candidate, call in candidates:
            tensor = output_tensor(candidate)
            if tensor is None:
                continue
            try:
                aligned = class_scores(tensor.detach(), targets)
            except NotClassification as reason:
                self._not_classification(trainer, split, state, str(reason))
                return None
            checking = aligned is not None and state.batches_checked < 3
            if checking and call is not None and reconstructs_input(tensor, call, targets):
                name = call.name or type(pl_module).__name__
                shaped = f"`{name}` returns a tensor shaped like its input {list(tensor.shape)} (a reconstruction)"
                self._not_classification(trainer, split, state, shaped)
                return None
            if aligned is not None:
                return aligned
            if call is not None:
                shapes.append(tuple(tensor.shape))
        if split == "train" or pl_module.training:
            return None
        if any(call.name == "" for call in calls) or (calls and type(pl_module).forward is pl.LightningModule.forward):
            # the model's own call was seen: replaying what the step passed to it gives the same unaligned output
            if shapes:
                self._not_classification(
                    trainer,
                    split,
                    state,
                    f"the model's outputs (shape {list(shapes[0])}) do not line up with the targets (shape "
                    f"{list(targets.shape)})",
                )
            return None
        return self._recompute(trainer, pl_module, split, state, inputs, targets)

    def _recompute(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        split: str,
        state: _SplitState,
        inputs: Tensor,
        targets: Tensor,
    ) -> tuple[Tensor, Tensor] | None:
        """Run ``forward`` on the batch's inputs: only when the step called no module whose call could be replayed."""
        # a module in train mode here would update BatchNorm statistics: never recompute then
        if state.recompute_failed or any(m.training for m in pl_module.modules()):
            return None
        if type(pl_module).forward is pl.LightningModule.forward:
            self._cannot_recompute(trainer, split, state, "the LightningModule has no forward")
            return None
        try:
            with forked_rng(), torch.no_grad(), own_forward():
                tensor = output_tensor(pl_module(inputs))
        except Exception as error:  # the step may feed forward something else than the batch's inputs
            self._cannot_recompute(trainer, split, state, f"forward(inputs) raised {error!r}")
            return None
        if tensor is None:
            return None
        try:
            aligned = class_scores(tensor, targets)
        except NotClassification as reason:
            self._not_classification(trainer, split, state, str(reason))
            return None
        if aligned is not None and not state.recompute_announced:
            state.recompute_announced = True
            self.record(
                trainer,
                "sanity.recomputed",
                Severity.INFO,
                f"ConfusionCallback could not find the {split} predictions in the step's output or forward call and "
                "runs an extra forward pass per batch to get them.",
                "Return the logits from the step (e.g. `return {'logits': logits}`) or call `self(x)` in it.",
                subject=split,
            )
        return aligned

    def _cannot_recompute(self, trainer: pl.Trainer, split: str, state: _SplitState, reason: str) -> None:
        state.recompute_failed = True
        self.record(
            trainer,
            "sanity.skipped",
            Severity.INFO,
            f"ConfusionCallback found no {split} predictions in the step's output or in a forward call of the module "
            f"or its direct children, and cannot recompute them from the batch: {reason}.",
            "Return the logits from the step (e.g. `return {'logits': logits}`), call `self(x)` or a direct child "
            "module in it, or pass batch_adapter so the batch's inputs are what forward takes.",
            subject=f"{split}:predictions",
            evidence={"reason": reason},
        )

    def _is_classification(
        self, trainer: pl.Trainer, split: str, state: _SplitState, scores: Tensor, targets: Tensor
    ) -> bool:
        """Decide on the first batches whether the targets are class indices (a host read, on check steps only)."""
        if targets.numel() == 0:
            return False
        if targets.is_floating_point():
            integral = bool(torch.equal(targets, targets.round()))
            if not integral:
                self._not_classification(trainer, split, state, f"targets are real numbers (dtype {targets.dtype})")
                return False
        elif targets.dtype.is_complex:
            self._not_classification(trainer, split, state, f"targets have dtype {targets.dtype}")
            return False
        if scores.shape[1] == 1 and scores.is_floating_point():
            high = int(targets.max())
            ignored = {self.ignore_index} if self.ignore_index is not None else set()
            if high > 1 and high not in ignored and high not in (255,):
                self._not_classification(trainer, split, state, f"a single output but targets up to {high}")
                return False
        state.classification = True
        return True

    def _not_classification(self, trainer: pl.Trainer, split: str, state: _SplitState, reason: str) -> None:
        state.classification = False
        self.record(
            trainer,
            "eval.not_classification",
            Severity.INFO,
            f"ConfusionCallback left the {split} split alone: {reason}.",
            "Nothing to fix if this is regression or multi-label; for classification return [N, C] logits and "
            "integer class targets (or pass batch_adapter / num_classes).",
            subject=split,
            evidence={"reason": reason},
        )

    def _counts_for(self, split: str, loader: int, num_classes: int, device: torch.device) -> EvalCounts | None:
        counts = self._counts.get((split, loader))
        if counts is None:
            counts = EvalCounts(num_classes, dense=num_classes <= self.max_classes).to(device)
            self._counts[(split, loader)] = counts
            if split != "train":
                self._eval_losses[(split, loader)] = EvalLoss().to(device)
        if counts.num_classes != num_classes:
            return None
        return counts

    def _reads_probabilities(self, scores: Tensor) -> bool:
        """A single output known to be a probability: it looked sigmoid-activated on the first batches checked, or
        the user's loss is a BCE on it (not on logits)."""
        if scores.shape[1] != 1 or not scores.is_floating_point():
            return False
        sigmoid = self._activation is not None and self._activation[0] == "sigmoid"
        return sigmoid or (self.pairing is not None and self.pairing.loss == "bce")

    def _check_activation(self, split: str, scores: Tensor, num_classes: int, graph: str | None) -> None:
        if self._activation is not None or not scores.is_floating_point():
            return
        kind = activation_kind(scores, graph)
        if kind is not None:
            self._activation = (kind, split, num_classes)
            self._activation_width = scores.shape[1]
            if kind != "relu":
                self._probability_loss = ProbabilityLoss().to(scores.device)

    # ------------------------------------------------------------ train loss
    def _track_train_loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            return
        self._loss_scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        self._step_losses.append(loss.detach())
        if len(self._step_losses) >= FOLD_BATCHES:
            self._fold_train_losses()

    def _fold_train_losses(self) -> TrainLoss | None:
        """Hand the kept step losses to the epoch's :class:`TrainLoss`; it, or ``None`` before any step's loss."""
        pending, self._step_losses = self._step_losses, []
        if pending:
            if self._train_loss is None:
                self._train_loss = TrainLoss().to(pending[0].device)
            self._train_loss.update(torch.cat([loss.reshape(1) for loss in pending]) * self._loss_scale)
        return self._train_loss

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_loss = self._fold_train_losses()
        if train_loss is not None:
            mean, lowest, noise = (float(v) for v in train_loss.compute())
            train_loss.reset()
            if math.isfinite(mean):
                self._epoch_losses.append(mean)
                self._epoch_noise.append(noise if math.isfinite(noise) else 0.0)
                self._lowest_loss = min(self._lowest_loss, lowest)
        if self.on_train:
            self._finish_split(trainer, "train")
        self._judge_loss(trainer)

    def _running_lowest_loss(self) -> float:
        train_loss = self._fold_train_losses()
        if train_loss is None or not train_loss.update_called:
            return math.inf
        return float(train_loss.compute()[1])

    def _losses_so_far(self) -> tuple[list[float], list[float]]:
        """Epoch-mean training losses and their standard errors, with the running epoch's so far (validation runs
        before the epoch ends)."""
        losses, noise = list(self._epoch_losses), list(self._epoch_noise)
        train_loss = self._fold_train_losses()
        if train_loss is None or not train_loss.update_called:
            return losses, noise
        mean, _, error = (float(v) for v in train_loss.compute())
        return (
            ([*losses, mean], [*noise, error if math.isfinite(error) else 0.0])
            if math.isfinite(mean)
            else (losses, noise)
        )

    # ------------------------------------------------------------- epoch end
    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish_split(trainer, "val")
            self._judge_activation(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_split(trainer, "test")

    def _finish_split(self, trainer: pl.Trainer, split: str) -> None:
        self._class_names = self._class_names or _class_names(trainer)
        loaders = sorted(loader for s, loader in self._counts if s == split)
        logged = self._logged_accuracies(trainer, split) if split != "train" else {}
        for loader in loaders:
            counts = self._counts[(split, loader)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an epoch with no update on this rank still has to join the sync
                values = counts.compute()
            counts.reset()
            eval_loss = self._read_eval_loss(split, loader)
            label = dataloader_label(split, loader)
            summary = ConfusionSummary.from_counts(values["true_positives"], values["predicted"], values["actual"])
            if summary.total == 0:
                continue
            self.summaries[label] = summary
            if counts.dense:
                matrix = values["matrix"].detach().cpu().clone()
                self.confusion_matrices[label] = matrix
                if label == "val":
                    self.confusion_matrix = matrix
                if self.figures_wanted(trainer):
                    title = f"{label} confusion matrix, epoch {trainer.current_epoch}"
                    figure = functools.partial(confusion_figure, matrix, self._class_names, title)
                    self.log_figure(trainer, split, f"confusion_matrix{label.removeprefix(split)}", figure)
            self._log_summary(trainer, split, loader, summary)
            correct = {"accumulated accuracy": summary.accuracy, "accumulated macro accuracy": summary.macro_accuracy}
            per_batch = {
                f"per-batch mean ({k.removeprefix('batch_').replace('_', ', ')})": float(values[k])
                for k in values
                if k.startswith("batch_")
            }
            for key, value in logged.get(loader, {}).items():
                self._judge_mismatch(trainer, split, label, key, value, summary, correct, per_batch)
            if split != "train":
                self._judge_summary(trainer, split, label, summary, eval_loss)

    def _read_eval_loss(self, split: str, loader: int) -> float | None:
        """The epoch's validation cross-entropy (a collective under DDP, like the counts), ``None`` if unmeasured."""
        metric = self._eval_losses.get((split, loader))
        if metric is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean, count = (float(v) for v in metric.compute())
        metric.reset()
        return mean if count > 0 and math.isfinite(mean) else None

    def _log_summary(self, trainer: pl.Trainer, split: str, loader: int, summary: ConfusionSummary) -> None:
        suffix = f"/dataloader_idx_{loader}" if loader else ""
        scalars = {
            scalar_key(self.name, split, f"acc{suffix}"): summary.accuracy,
            scalar_key(self.name, split, f"balanced_acc{suffix}"): summary.balanced_accuracy,
        }
        if len(summary.recalls) <= self.report_classes:
            for index, recall in enumerate(summary.recalls):
                scalars[scalar_key(self.name, split, f"recall_c{index}{suffix}")] = recall
        log_scalars(trainer, scalars)

    # --------------------------------------------------------------- judging
    def _trained(self, trainer: pl.Trainer) -> bool:
        """Whether ``min_epochs`` training epochs ran in this trainer (the running epoch counts during fit)."""
        completed = compat.completed_epochs(trainer)
        return completed + (trainer.state.fn == TrainerFn.FITTING) >= self.min_epochs

    def _judge_summary(
        self, trainer: pl.Trainer, split: str, label: str, summary: ConfusionSummary, eval_loss: float | None
    ) -> None:
        losses, noise = self._losses_so_far() if split == "val" else (self._epoch_losses, self._epoch_noise)
        history = self._remember(trainer, split, label, summary, eval_loss, losses)
        learning = (
            learning_evidence(
                losses, history, summary.prior_entropy, trainer.global_step, _remaining_epochs(trainer, split), noise
            )
            if self._trained(trainer)
            else None
        )
        checks = verdict_checks(summary)
        for code, holds in checks.items():
            key = f"{code}:{label}"
            count = self._suspicious.get(key, 0) + 1 if holds and learning is not None else 0
            if holds and learning == "one class throughout":
                count = max(count, len(history))  # one class at every validation is evidence over the whole history
            elif holds and learning in ("stuck", "never below the prior"):
                # so is a training loss at the prior for epochs: the validations before MIN_STEPS count as well
                count = max(count, held_since(history, code))
            self._suspicious[key] = count
        if split == "val" and (is_learning_now(summary) or beats_the_prior(history[-1])):
            for code in checks:
                self._resolve(code, label, trainer.current_epoch)
        if learning is None:
            return
        needed = 1 if split == "test" else 2
        persisted = {code for code in checks if self._suspicious[f"{code}:{label}"] >= needed}
        if not persisted:
            return
        evidence = self._learning_evidence_numbers(label, summary, learning, losses, history)
        story = self._learning_story(learning, losses, history, input_cause(collect_findings(trainer)))
        if "eval.below_chance" in persisted:
            mapping = self._wrong_mapping(label)
            self._record_verdict(
                trainer,
                "eval.below_chance",
                Severity.ERROR,
                f"{label} accuracy {summary.accuracy:.1%} is far below the {summary.independent_accuracy:.1%} that "
                f"predictions ignoring the labels would get ({evidence['below_chance_z']:.1f} standard errors, "
                f"{summary.total} samples): the predictions are systematically wrong, not random"
                + (f"; {mapping}" if mapping else "")
                + f"; {story}.",
                "The model tells the classes apart but names them differently on this split: make the train and "
                "eval datasets share one label encoding (one `classes` list / `class_to_idx`, one LabelEncoder "
                "fitted once), and check that the eval targets are not shifted or reordered against the inputs.",
                subject=label,
                evidence=evidence,
            )
        if "eval.prediction_collapse" in persisted:
            self._record_verdict(
                trainer,
                "eval.prediction_collapse",
                Severity.ERROR,
                f"{summary.top_predicted_share:.1%} of the {label} predictions are class "
                f"{self._class_name(summary.top_predicted_class)!r}, whose true share is only "
                f"{summary.top_predicted_true_share:.1%} (accuracy {summary.accuracy:.1%}, balanced "
                f"{summary.balanced_accuracy:.1%}); {story}.",
                "The model ignores its input: check that labels are aligned with the features, that training batches "
                "are shuffled, that the train and val inputs are preprocessed alike, that nothing (ReLU/softmax, a "
                "frozen or zero-initialised head, a far too high or low learning rate) stops the logits from learning.",
                subject=label,
                evidence=evidence,
            )
        if "eval.imbalance_masked" in persisted:
            self._record_verdict(
                trainer,
                "eval.imbalance_masked",
                Severity.WARNING,
                f"{label} accuracy {summary.accuracy:.1%} only reflects class imbalance: the majority class is "
                f"{summary.majority_share:.1%} of the samples and balanced accuracy is {summary.balanced_accuracy:.1%} "
                f"(1/{summary.present_classes} = {1 / summary.present_classes:.1%} is chance); {story}.",
                "Report balanced accuracy / per-class recall (torchmetrics MulticlassAccuracy(average='macro')) and "
                "counter the imbalance: class weights in the loss, a WeightedRandomSampler, or more minority data. If "
                "every prediction is the majority class, check that the model uses its input at all.",
                subject=label,
                evidence=evidence,
            )
        if "eval.chance_level" in persisted:
            self._record_verdict(
                trainer,
                "eval.chance_level",
                Severity.WARNING,
                f"{label} accuracy {summary.accuracy:.1%} stays at chance (majority-class rate "
                f"{summary.majority_share:.1%}, balanced accuracy {summary.balanced_accuracy:.1%}, chance "
                f"{1 / max(summary.present_classes, 1):.1%} ± {evidence['chance_noise']:.1%}) after "
                f"{trainer.current_epoch + 1} epochs; {story}.",
                "The model has learned nothing that transfers to this split: check label alignment (labels shuffled "
                "or joined separately from inputs), the train/val preprocessing, and the learning rate.",
                subject=label,
                evidence=evidence,
            )

    def _remember(
        self,
        trainer: pl.Trainer,
        split: str,
        label: str,
        summary: ConfusionSummary,
        eval_loss: float | None,
        losses: Sequence[float],
    ) -> list[EpochEvidence]:
        """Append this validation to the fit's history of ``label``; a test or validate run is judged on its own."""
        entry = EpochEvidence(
            trainer.current_epoch, trainer.global_step, losses[-1] if losses else None, eval_loss, summary
        )
        if split != "val" or trainer.state.fn != TrainerFn.FITTING:
            return [entry]
        history = self.history.setdefault(label, [])
        history.append(entry)
        return history

    def _learning_evidence_numbers(
        self,
        label: str,
        summary: ConfusionSummary,
        learning: str,
        losses: Sequence[float],
        history: Sequence[EpochEvidence],
    ) -> dict[str, Any]:
        chance = 1.0 / max(summary.present_classes, 1)
        evidence: dict[str, Any] = {
            "split": label,
            "samples": summary.total,
            "accuracy": round(summary.accuracy, 4),
            "balanced_accuracy": round(summary.balanced_accuracy, 4),
            "chance": round(chance, 4),
            "chance_noise": round(binomial_noise(chance, summary.total // max(summary.present_classes, 1)), 4),
            "majority_share": round(summary.majority_share, 4),
            "top_predicted_class": self._class_name(summary.top_predicted_class),
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
        matrix = self.confusion_matrices.get(label)
        if matrix is not None and matrix.shape[0] <= self.report_classes:
            evidence["confusion_matrix"] = matrix.tolist()
        return evidence

    def _wrong_mapping(self, label: str) -> str:
        """Where the true classes go in the last confusion matrix of ``label`` when most of a class lands on one
        other class: ``"true -> predicted: 'a' -> 'b' (14/15), ..."``; empty without a matrix or such a class."""
        matrix = self.confusion_matrices.get(label)
        if matrix is None:
            return ""
        moved = []
        for true, row in enumerate(matrix.tolist()):
            total, top = sum(row), max(range(len(row)), key=row.__getitem__)
            if total > 0 and top != true and row[top] > total / 2:
                moved.append(f"{self._class_name(true)!r} -> {self._class_name(top)!r} ({int(row[top])}/{int(total)})")
        shown = moved[: self.report_classes or 5]
        return "true -> predicted: " + ", ".join(shown) + (", ..." if len(moved) > len(shown) else "") if moved else ""

    def _learning_story(
        self,
        learning: str,
        losses: Sequence[float],
        history: Sequence[EpochEvidence],
        input_code: str | None = None,
    ) -> str:
        """One clause saying what the training side measured, with its numbers; ``input_code`` is a finding that
        the evaluation inputs differ from the training inputs, which explains why nothing learned transfers."""
        eval_losses = [e.eval_loss for e in history if e.eval_loss is not None]
        if learning == "memorising" and len(eval_losses) >= 2:
            cause = (
                f"the validation inputs differ from the training inputs ({input_code})"
                if input_code
                else "training labels without signal, or validation inputs unlike the training inputs"
            )
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
        if learning == "stuck":
            return (
                f"the training loss sits at the class-prior entropy ({', '.join(f'{v:.3f}' for v in losses[-3:])}): "
                "the model learned the class frequencies and nothing else"
            )
        if learning == "never below the prior" and history:
            return (
                f"the training loss never went below the class-prior entropy {history[-1].summary.prior_entropy:.3f} "
                f"({', '.join(f'{v:.3f}' for v in losses[-4:])}): the model learned nothing beyond the class "
                "frequencies"
            )
        return f"the training loss fell from {losses[0]:.3f} to {min(losses):.3f}, so the model did train"

    def _record_verdict(
        self,
        trainer: pl.Trainer,
        code: str,
        severity: Severity,
        message: str,
        hint: str,
        *,
        subject: str,
        evidence: dict[str, Any],
    ) -> None:
        """Record a verdict about learning. A repeat keeps the first epoch and its count but shows the latest
        evidence (the class a collapsed model now predicts, today's accuracy); one resolved earlier stands again."""
        finding = self.record(trainer, code, severity, message, hint, subject=subject, evidence=evidence)
        if finding.key in self._findings and finding.count > 1:
            latest = dataclasses.replace(finding, message=message, evidence=jsonable(evidence), resolved_epoch=None)
            self._findings[finding.key] = latest

    def _resolve(self, code: str, subject: str, epoch: int) -> None:
        """A standing verdict about learning stopped holding at ``epoch``: the run broke out of it."""
        finding = self._findings.get((code, subject))
        if finding is not None and finding.resolved_epoch is None:
            self._findings[finding.key] = dataclasses.replace(finding, resolved_epoch=epoch)

    def _judge_loss(self, trainer: pl.Trainer) -> None:
        classes = self._known_classes()
        if classes is None or not self._epoch_losses:
            return
        chance = math.log(classes)
        validations = self.history.get("val", [])
        if not is_loss_at_chance(self._epoch_losses, classes, trainer.global_step) or has_learning_signal(validations):
            # The finding says the training loss sits at ln(C): it stops holding when the training loss leaves it
            # or the validation split shows learning. Whether a falling training loss transfers is for the
            # validation verdicts (eval.chance_level, eval.prediction_collapse: "memorising") to say.
            left_chance = self._epoch_losses[-1] < chance * (1.0 - LOSS_CHANCE_TOLERANCE)
            learning = left_chance or bool(
                validations and (is_learning_now(validations[-1].summary) or beats_the_prior(validations[-1]))
            )
            if learning:
                self._resolve("eval.loss_at_chance", "train", trainer.current_epoch)
            return
        epochs = 3
        self._record_verdict(
            trainer,
            "eval.loss_at_chance",
            Severity.WARNING,
            f"The training loss has stayed at ln({classes}) = {chance:.3f} for {epochs} epochs "
            f"({', '.join(f'{loss:.3f}' for loss in self._epoch_losses[-epochs:])}): the model predicts a uniform "
            "distribution and learns nothing.",
            "Check that labels match the inputs, that the logits are not squashed (ReLU/softmax before the loss), "
            "that gradients reach the head, and the learning rate. A deep network without normalisation layers on "
            "plain SGD can sit here for a few epochs before it learns: this finding is marked resolved if it does.",
            subject="train",
            evidence={"epoch_losses": self._epoch_losses[-epochs:], "ln_classes": chance, "num_classes": classes},
        )

    def _judge_activation(self, trainer: pl.Trainer) -> None:
        if self._activation is None:
            return
        kind, split, classes = self._activation
        evidence: dict[str, Any] = {"activation": kind, "num_classes": classes}
        floor = 0.0
        if self._probability_loss is not None:
            floor = probability_loss_floor(classes)
            nll = float(self._probability_loss.compute())
            self._probability_loss.reset()
            lowest = min(self._lowest_loss, self._running_lowest_loss())
            evidence.update(val_nll_of_probabilities=nll, lowest_train_loss=lowest, loss_floor=floor)
            if not is_logit_loss_on_probabilities(lowest, nll, floor):
                return
        described = {
            "softmax": "already probabilities (non-negative, every row sums to 1): a softmax",
            "sigmoid": "all in [0, 1]: a sigmoid",
            "relu": "non-negative with many exact zeros: a ReLU",
        }[kind]
        self.record(
            trainer,
            "output.activated",
            Severity.WARNING,
            f"The model's {split} outputs used as logits are {described} is applied before the loss"
            + (
                ""
                if kind == "relu"
                else f" (the training loss never went below {floor:.3f}, the least a logit loss can reach on "
                f"probabilities, though read as probabilities they score {evidence['val_nll_of_probabilities']:.3f})"
            )
            + ".",
            "Return raw logits from forward: remove the final softmax/sigmoid/ReLU; CrossEntropyLoss and "
            "BCEWithLogitsLoss apply (log-)softmax/sigmoid themselves. Apply it only for inference outputs.",
            subject=split,
            evidence=evidence,
        )

    def _judge_mismatch(
        self,
        trainer: pl.Trainer,
        split: str,
        label: str,
        key: str,
        logged: float,
        summary: ConfusionSummary,
        correct: Mapping[str, float],
        per_batch: Mapping[str, float],
    ) -> None:
        """A logged accuracy must match an accumulated one; a per-batch mean only explains how a wrong value arose."""
        if not math.isfinite(logged):
            return
        tolerance = MISMATCH_TOLERANCE
        if trainer.world_size > 1:
            # a value logged without sync_dist is one rank's: allow its sampling noise
            tolerance += 4 * binomial_noise(0.5, summary.total // trainer.world_size)
        _, _, distance = closest_reading(logged, correct)
        if distance <= tolerance:
            return
        name, value, batch_distance = closest_reading(logged, {**correct, **per_batch})
        if name in per_batch and batch_distance <= tolerance:
            explanation = (
                f"it matches the {name} of the per-batch values ({value:.4f}): a metric computed per batch and "
                "averaged over the epoch is not the epoch's accuracy"
            )
            hint = (
                "Update a torchmetrics metric in the step and log the metric object itself (`self.acc(preds, y); "
                "self.log(key, self.acc)`), not the tensor it returns per batch, so Lightning computes it over the "
                "whole epoch; a per-batch macro average is only right when every batch holds every class."
            )
        else:
            name, value, _ = closest_reading(logged, correct)
            explanation = f"closest correct reading: {name} {value:.4f}"
            hint = (
                "The evaluation code miscounts: accumulate with `+=` (not `=`) and reset per epoch, divide by the "
                "number of samples, or log a torchmetrics Accuracy object (`self.log(key, self.acc)`) that does it "
                "right."
            )
        self.record(
            trainer,
            "eval.metric_mismatch",
            Severity.ERROR,
            f"Logged {key!r} = {logged:.4f} but the accuracy accumulated over the same {label} batches is "
            f"{summary.accuracy:.4f} (macro {summary.macro_accuracy:.4f}, {summary.total} samples); {explanation}.",
            hint,
            subject=f"{label}:{key}",
            evidence={
                "key": key,
                "logged": logged,
                "accumulated_accuracy": summary.accuracy,
                "accumulated_macro_accuracy": summary.macro_accuracy,
                "distance": distance,
                "closest_reading": name,
                "closest_value": value,
                "tolerance": tolerance,
                "samples": summary.total,
            },
        )

    def _logged_accuracies(self, trainer: pl.Trainer, split: str) -> dict[int, dict[str, float]]:
        """User-logged accuracies of ``split`` per dataloader: ``{loader: {key: value}}``."""
        metrics = trainer.callback_metrics
        found: dict[int, dict[str, float]] = {}
        for key, loader in _accuracy_keys(trainer, split, self.compare_keys).items():
            value = metrics.get(key)
            if (isinstance(value, Tensor) and value.numel() == 1) or isinstance(value, (int, float)):
                found.setdefault(loader, {})[key] = float(value)
        return found

    # --------------------------------------------------------------- report
    def _known_classes(self) -> int | None:
        return next((counts.num_classes for counts in self._counts.values()), None)

    def _class_name(self, index: int) -> str:
        if self._class_names is not None and index < len(self._class_names):
            return self._class_names[index]
        return str(index)

    @override
    def release(self) -> None:
        self._stop_capture()

    @override
    def report_sections(self) -> list[tuple[str, str]]:
        return [
            (
                f"Confusion matrix ({label}, last epoch; rows true, columns predicted)",
                format_matrix(matrix, self._class_names),
            )
            for label, matrix in self.confusion_matrices.items()
            if matrix.shape[0] <= self.report_classes
        ]


def _remaining_epochs(trainer: pl.Trainer, split: str) -> float:
    """Training epochs planned after the current one (by ``max_epochs`` and ``max_steps``; unbounded: inf), 0 once
    training is over (a test or validate run)."""
    if split != "val" or trainer.state.fn != TrainerFn.FITTING:
        return 0.0
    epochs = trainer.max_epochs
    remaining = math.inf if epochs is None or epochs < 0 else float(epochs - trainer.current_epoch - 1)
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step > 0:
        per_epoch = trainer.global_step / (trainer.current_epoch + 1)
        remaining = min(remaining, (trainer.max_steps - trainer.global_step) / per_epoch)
    return max(remaining, 0.0)


def _class_names(trainer: pl.Trainer) -> list[str] | None:
    """``classes`` of the datamodule or of the first validation/test dataset, when present."""
    sources: list[Any] = [getattr(trainer, "datamodule", None)]
    for loaders in (getattr(trainer, "val_dataloaders", None), getattr(trainer, "test_dataloaders", None)):
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        sources.append(getattr(loader, "dataset", None))
    for source in sources:
        names = getattr(source, "classes", None)
        if isinstance(names, (list, tuple)) and names:
            return [str(n) for n in names]
    return None


def _accuracy_keys(trainer: pl.Trainer, split: str, compare_keys: Sequence[str]) -> dict[str, int]:
    """Keys of epoch-level, mean-reduced accuracies logged during ``split``, and ``compare_keys``, with their loader."""
    keys = {key: _loader_of(key) for key in compare_keys if key in trainer.callback_metrics}
    step_hook, hook_prefix = _EVAL_HOOKS.get(split, ("", "-"))
    results = compat.logged_results(trainer)
    if results is None:
        return keys
    for result in results.values():
        meta = getattr(result, "meta", None)
        if meta is None:
            continue
        fx, name = str(meta.fx), str(meta.name)
        lowered = name.lower()
        if not (fx.startswith(step_hook) or fx.startswith(hook_prefix)) or "acc" not in lowered:
            continue
        if any(token in lowered for token in _NOT_ACCURACY_TOKENS) or not meta.on_epoch:
            continue
        value = getattr(result, "value", None)
        if result.is_tensor and not meta.is_mean_reduction:
            continue
        if not result.is_tensor and (getattr(value, "top_k", 1) or 1) > 1:
            continue
        loader = meta.dataloader_idx
        key = name + (f"/dataloader_idx_{loader}" if meta.add_dataloader_idx and loader is not None else "")
        keys[key] = loader or 0
    return keys


def _loader_of(key: str) -> int:
    head, _, index = key.rpartition("/dataloader_idx_")
    return int(index) if head and index.isdigit() else 0
