"""Evaluation logic: a correctly accumulated confusion matrix, and what it reveals."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_sanity import run as sanity_run
from lightning_sanity.base import EvalSplit, SanityCallback, collect_findings, is_int, require
from lightning_sanity.batch import tensor_at
from lightning_sanity.eval_metrics import EvalCounts, EvalLoss, ProbabilityLoss
from lightning_sanity.eval_predictions import SplitReader
from lightning_sanity.figures import confusion_figure
from lightning_sanity.findings import Severity
from lightning_sanity.learnability import (
    LOSS_CHANCE_TOLERANCE,
    ConfusionSummary,
    EpochEvidence,
    beats_the_prior,
    has_learning_signal,
    is_learning_now,
    is_loss_at_chance,
    learning_evidence,
    verdict_checks,
)
from lightning_sanity.logged_accuracy import logged_mismatch, logged_scores
from lightning_sanity.loggers import log_scalars, scalar_key
from lightning_sanity.observe import StepCapture, StepObserver, dataloader_label
from lightning_sanity.outputs import (
    NotClassification,
    activation_kind,
    class_predictions,
    is_logit_loss_on_probabilities,
    model_graph,
    probability_loss_floor,
    scored_outputs,
)
from lightning_sanity.position_prior import PositionCounts, position_evidence, with_position_prior
from lightning_sanity.progress import has_trained, held_since, remaining_epochs
from lightning_sanity.target_prior import InternalLossWatch, loss_at_prior, target_reading
from lightning_sanity.task import ScorePairing, Task
from lightning_sanity.task_search import TaskSearch
from lightning_sanity.train_loss import TrainLossHistory
from lightning_sanity.triage import input_cause
from lightning_sanity.verdicts import (
    activated_text,
    evidence_numbers,
    learning_story,
    loss_at_chance_text,
    loss_at_prior_text,
    verdict_text,
    wrong_mapping,
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
        self._positions: dict[tuple[str, int], PositionCounts] = {}
        self._splits: dict[str, SplitReader] = {}
        self._capture = StepCapture()
        self.train_losses = TrainLossHistory()
        """The fit's epoch-mean training losses: what the verdicts about learning read."""
        self._suspicious: dict[str, int] = {}
        self._activation: tuple[str, str, int] | None = None
        self._activation_width = 0
        self._probability_loss: ProbabilityLoss | None = None
        self._class_names: list[str] | None = None
        self.task: Task | None = None
        """What the run's model predicts and against which targets, decided once on the first training steps (by
        this callback or another, through the run coordinator: :func:`lightning_sanity.run.task_of`)."""
        self.pairing: ScorePairing | None = None
        """The output and target the user's training loss reads (:attr:`task`'s pairing), once found."""
        self._search = TaskSearch()
        self.internal_loss: InternalLossWatch | None = None
        """For a loss computed inside the model whose targets were confirmed: their frequencies, whose entropy its
        training and validation losses must go below (``eval.loss_at_prior``), and its validation losses."""

    # ----------------------------------------------------------------- capture
    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._capture.stop()
        super().on_exception(trainer, pl_module, exception)

    @override
    def on_eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: EvalSplit,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        if split != "predict":  # prediction batches come without targets
            self._capture.start(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.task, self.pairing = None, None
        self._search.reset()
        self.internal_loss = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.on_train or self._pairing_pending() or (self.internal_loss and self.internal_loss.counting("train")):
            self._capture.start(pl_module)

    @override
    def on_eval_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        split: EvalSplit, dataloader_idx: int,
    ) -> None:  # fmt: skip
        observer = self._capture.stop()
        if split == "predict" or (trainer.sanity_checking and self._pairing_pending()):
            return  # before the first training step, which of the batch's tensors is the target is not known yet
        if self.internal_loss is not None and split == "val" and dataloader_idx == 0 and not trainer.sanity_checking:
            self.internal_loss.count("val", observer, batch)
        self._observe(trainer, pl_module, split, outputs, batch, dataloader_idx, observer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        observer = self._capture.stop()
        self.train_losses.track(trainer, pl_module, outputs)
        if self._pairing_pending():
            self._find_pairing(trainer, pl_module, outputs, batch, observer)
        if self.internal_loss is not None:
            self.internal_loss.count("train", observer, batch)
        if self.on_train:
            self._observe(trainer, pl_module, "train", outputs, batch, 0, observer)

    # ----------------------------------------------------------------- the task
    def _pairing_pending(self) -> bool:
        """Still looking for the run's task (a batch_adapter names the targets itself)."""
        return self.task is None and self._search.looking(self.batch_adapter is not None)

    def _pairing_unknown(self) -> bool:
        """The run's task has no pair of an output and a batch tensor to read (a custom loss, a loss computed inside
        the model); a step without a loss to recompute, e.g. manual optimisation, leaves the default reading."""
        return self.task is not None and self.task.pairing is None

    def _judged_elsewhere(self) -> bool:
        """A multi-label task: its predictions are not class scores (MultiLabelCallback judges them)."""
        return self.task is not None and self.task.kind == "multilabel"

    def _find_pairing(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        observer: StepObserver | None,
    ) -> None:
        """Read the run's task when another callback decided it; otherwise decide it from this step (a host read, on
        the first training steps only) and publish it for the run."""
        task = self._search.step(trainer, pl_module, outputs, batch, lambda: self.split_batch(trainer, batch), observer)
        if task is None:
            return
        self.task, self.pairing = task, task.pairing
        if task.kind == "internal_loss" and task.source is not None and observer is not None:
            reading = target_reading(observer, task.source, batch)  # a host read, on this step only
            self.internal_loss = InternalLossWatch(reading, pl_module.device) if reading is not None else None
        if task.pairing is None:
            self._skip_unpaired(trainer, task, observer, self._search.candidates)

    def _skip_unpaired(
        self, trainer: pl.Trainer, task: Task, observer: StepObserver | None, targets: list[tuple[Any, Tensor]]
    ) -> None:
        """Say once which checks the task leaves out, why, and what would enable them."""
        if task.kind == "internal_loss":
            watch = self.internal_loss
            prior = (
                "its learnability is still judged: its training and validation losses against the entropy of the "
                f"frequencies of the `labels` it was given{' (shifted by one: a causal LM)' * watch.reading.shifted}"
                if watch is not None
                else "nor its learnability: its cross-entropy on `.logits` against the `labels` it was given, as they "
                "are or shifted by one position, did not give its `.loss`"
            )
            why = (
                f"the training loss is computed inside the model (`{task.source}` returns it as .loss), so which of "
                "its outputs are class scores against which targets is not confirmed (a language model's targets are "
                f"its shifted inputs); {prior}"
            )
        else:
            why = (
                f"on {max(self._search.losses_tried, 1)} training step(s) no standard loss (cross-entropy, NLL, BCE, "
                "MSE, L1) of a model output and a batch tensor gave the returned loss, so which output holds the class "
                "scores and which batch tensor the targets is unconfirmed (a custom loss, or scores computed outside "
                "a module call)"
            )
        self.record(
            trainer,
            "sanity.skipped",
            Severity.INFO,
            f"ConfusionCallback judges no accuracy: {why}.",
            "Nothing to fix if the loss is custom; to get the confusion checks, return the class logits from a "
            "module call in the step and pass batch_adapter=lambda batch: (inputs, targets).",
            subject="pairing",
            evidence={
                "task": task.kind,
                "steps": self._search.losses_tried,
                "outputs": [source for source, _, _ in scored_outputs(None, observer)[1:]],
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
        if self.task is not None and sanity_run.task_of(trainer) is None:
            sanity_run.publish_task(trainer, self.task)  # a validate / test run after the fit judges the fit's task
        state = self._splits.setdefault(split, SplitReader(split, self.record, self.ignore_index))
        # a regression loss on class indices (an MSE on [N, C] against labels) is still counted; real regression
        # targets are RegressionCallback's, without an INFO from here
        state.quiet = self.task is not None and self.task.kind == "regression"
        if state.classification is False or self._pairing_unknown() or self._judged_elsewhere():
            return
        parts = self.split_batch(trainer, batch)
        if parts is None or parts.inputs is None:
            return
        pairing = self.pairing
        targets = tensor_at(batch, pairing.target) if pairing is not None and pairing.target is not None else None
        targets = parts.targets if targets is None else parts.select(targets)
        if targets is None:
            return
        source = pairing.source if pairing is not None else None
        aligned = state.aligned_scores(trainer, pl_module, outputs, observer, parts, targets, source)
        if aligned is None:
            return
        shape = targets.shape  # a dense task's targets before alignment flattens them: positions for their prior
        scores, targets = aligned
        checking = state.batches_checked < 3
        if checking and not state.is_classification(trainer, scores, targets):
            return
        try:
            predictions = class_predictions(scores, targets, self.num_classes, self.ignore_index)
        except NotClassification as reason:
            state.not_classification(trainer, str(reason))
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
            positions = self._positions.get((split, loader))
            if positions is not None and predictions.targets.numel() == math.prod(shape):
                positions.update(predictions.targets.view(shape), predictions.valid.view(shape))

    def _counts_for(self, split: str, loader: int, num_classes: int, device: torch.device) -> EvalCounts | None:
        counts = self._counts.get((split, loader))
        if counts is None:
            counts = EvalCounts(num_classes, dense=num_classes <= self.max_classes).to(device)
            self._counts[(split, loader)] = counts
            if split != "train":
                self._eval_losses[(split, loader)] = EvalLoss().to(device)
            if split != "train" and self.task is not None and self.task.kind in ("dense", "token"):
                self._positions[(split, loader)] = PositionCounts(num_classes).to(device)
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
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_losses.end_epoch()
        if self.internal_loss is not None:
            self.internal_loss.end_epoch()
        if self.on_train:
            self._finish_split(trainer, "train")
        self._judge_loss(trainer)

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
        segmentation = self.task is not None and self.task.kind == "dense"
        logged = logged_scores(trainer, split, self.compare_keys, segmentation) if split != "train" else {}
        for loader in loaders:
            counts = self._counts[(split, loader)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an epoch with no update on this rank still has to join the sync
                values = counts.compute()
            counts.reset()
            eval_loss = self._read_eval_loss(split, loader)
            label = dataloader_label(split, loader)
            summary = ConfusionSummary.from_counts(values["true_positives"], values["predicted"], values["actual"])
            summary = with_position_prior(summary, self._positions.get((split, loader)))
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
            for key, value in logged.get(loader, {}).items():
                mismatch = logged_mismatch(trainer, split, label, key, value, summary, values, segmentation)
                if mismatch is not None:
                    self.record(
                        trainer,
                        "eval.metric_mismatch",
                        Severity.ERROR,
                        mismatch.message,
                        mismatch.hint,
                        subject=f"{label}:{key}",
                        evidence=mismatch.evidence,
                    )
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
        per_class = len(summary.recalls) <= self.report_classes
        if per_class:
            for index, recall in enumerate(summary.recalls):
                scalars[scalar_key(self.name, split, f"recall_c{index}{suffix}")] = recall
        if self.task is not None and self.task.kind in ("dense", "token"):
            scalars[scalar_key(self.name, split, f"miou{suffix}")] = summary.miou
            for index, iou in enumerate(summary.ious if per_class else []):
                if not math.isnan(iou):  # a class absent from targets and predictions has no IoU
                    scalars[scalar_key(self.name, split, f"iou_c{index}{suffix}")] = iou
        log_scalars(trainer, scalars)

    # --------------------------------------------------------------- judging
    def _judge_summary(
        self, trainer: pl.Trainer, split: str, label: str, summary: ConfusionSummary, eval_loss: float | None
    ) -> None:
        epochs = self.train_losses
        losses, noise = epochs.so_far() if split == "val" else (epochs.epoch_losses, epochs.epoch_noise)
        history = self._remember(trainer, split, label, summary, eval_loss, losses)
        prior, steps = summary.input_free_entropy, trainer.global_step
        learning = (
            learning_evidence(losses, history, prior, steps, remaining_epochs(trainer, split), noise)
            if has_trained(trainer, self.min_epochs)
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
                count = max(count, held_since([verdict_checks(e.summary)[code] for e in history]))
            self._suspicious[key] = count
        if split == "val" and (is_learning_now(summary) or beats_the_prior(history[-1])):
            for code in checks:
                self.resolve(code, label, trainer.current_epoch)
        if learning is None:
            return
        needed = 1 if split == "test" else 2
        persisted = {code for code in checks if self._suspicious[f"{code}:{label}"] >= needed}
        if not persisted:
            return
        matrix = self.confusion_matrices.get(label)
        evidence = evidence_numbers(
            label, summary, learning, losses, history, self._class_name, matrix, self.report_classes
        )
        story = learning_story(learning, losses, history, input_cause(collect_findings(trainer)))
        unit = "pixel" if self.task is not None and self.task.kind == "dense" else "token"
        position, numbers = position_evidence(summary, eval_loss, unit)
        evidence.update(numbers)
        for code in checks:
            if code not in persisted:
                continue
            mapping = (
                wrong_mapping(matrix, self._class_name, self.report_classes) if code == "eval.below_chance" else ""
            )
            text = verdict_text(
                code,
                label,
                summary,
                evidence,
                story,
                self._class_name,
                mapping=mapping,
                epochs=trainer.current_epoch + 1,
                kind=self.task.kind if self.task is not None else "multiclass",
            )
            self.record_verdict(
                trainer, code, text.severity, text.message + position, text.hint, subject=label, evidence=evidence
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

    def _judge_loss(self, trainer: pl.Trainer) -> None:
        if self.internal_loss is not None:
            self._judge_loss_at_prior(trainer, self.internal_loss)
            return
        classes = self._known_classes()
        losses = self.train_losses.epoch_losses
        if classes is None or not losses:
            return
        chance = math.log(classes)
        validations = self.history.get("val", [])
        if not is_loss_at_chance(losses, classes, trainer.global_step) or has_learning_signal(validations):
            # The finding says the training loss sits at ln(C): it stops holding when the training loss leaves it
            # or the validation split shows learning. Whether a falling training loss transfers is for the
            # validation verdicts (eval.chance_level, eval.prediction_collapse: "memorising") to say.
            left_chance = losses[-1] < chance * (1.0 - LOSS_CHANCE_TOLERANCE)
            learning = left_chance or bool(
                validations and (is_learning_now(validations[-1].summary) or beats_the_prior(validations[-1]))
            )
            if learning:
                self.resolve("eval.loss_at_chance", "train", trainer.current_epoch)
            return
        text = loss_at_chance_text(losses[-3:], classes)
        evidence = {"epoch_losses": losses[-3:], "ln_classes": chance, "num_classes": classes}
        self.record_verdict(
            trainer, "eval.loss_at_chance", text.severity, text.message, text.hint, subject="train", evidence=evidence
        )

    def _judge_loss_at_prior(self, trainer: pl.Trainer, watch: InternalLossWatch) -> None:
        """A loss computed inside the model that never went below the entropy of its targets' frequencies: in
        training (it learned nothing from its input), else on the validation split (nothing it learned transfers)."""
        if watch.train_prior is None or not has_trained(trainer, self.min_epochs):
            return
        remaining = remaining_epochs(trainer, "val")  # the epochs the fit still plans after this one
        losses = self.train_losses.epoch_losses
        splits = {
            "train": (losses, self.train_losses.epoch_noise, watch.train_prior),
            # measured on the very targets the validation loss is: any fixed frequencies score at least their entropy
            "val": (watch.val_losses, [0.0] * len(watch.val_losses), watch.val_prior),
        }
        train_floor = 0.0
        for split, (split_losses, noise, prior) in splits.items():
            learning, floor = (
                loss_at_prior(split_losses, noise, prior, trainer.global_step, remaining) if prior else (None, 0)
            )
            train_floor = floor if split == "train" else train_floor
            if split == "val" and not (losses and losses[-1] < train_floor):
                return  # "nothing of it transfers" needs a training loss below its prior: until then, no story
            if learning is None or prior is None:
                self.resolve("eval.loss_at_prior", split, trainer.current_epoch)
                continue
            unigram = prior.summary.prior_entropy if prior.by_position else None
            text = loss_at_prior_text(
                split, split_losses[-4:], losses, prior.entropy, prior.summary.present_classes, unigram
            )
            evidence = {"epoch_losses": [round(v, 4) for v in split_losses[-4:]], "prior_floor": round(floor, 4)}
            evidence.update(prior.evidence(), training=learning, epoch_train_losses=[round(v, 4) for v in losses[-4:]])
            self.record_verdict(
                trainer, "eval.loss_at_prior", text.severity, text.message, text.hint, subject=split, evidence=evidence
            )
            return  # a training loss at the prior explains the validation loss at it

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
            lowest = min(self.train_losses.lowest, self.train_losses.running_lowest())
            evidence.update(val_nll_of_probabilities=nll, lowest_train_loss=lowest, loss_floor=floor)
            if not is_logit_loss_on_probabilities(lowest, nll, floor):
                return
        text = activated_text(kind, split, floor, evidence.get("val_nll_of_probabilities"))
        self.record(
            trainer, "output.activated", text.severity, text.message, text.hint, subject=split, evidence=evidence
        )

    # --------------------------------------------------------------- report
    def _known_classes(self) -> int | None:
        return next((counts.num_classes for counts in self._counts.values()), None)

    def _class_name(self, index: int) -> str:
        if self._class_names is not None and index < len(self._class_names):
            return self._class_names[index]
        return str(index)

    @override
    def release(self) -> None:
        self._capture.stop()

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
