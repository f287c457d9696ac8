"""MultiLabelCallback: per-label counts of multi-label runs, the collapse / chance verdicts and logged-metric checks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from support import codes, problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

from lightning_sanity import Finding, ModelChecksCallback, Severity
from lightning_sanity.demos import digits_tensors
from lightning_sanity.multilabel import MultiLabelCallback
from lightning_sanity.multilabel_metrics import MultiLabelCounts, MultiLabelSummary, is_chance_level, is_collapsed

LABELS = 4


def digit_attributes(split: str, rare: bool = False, shuffled: bool = False) -> tuple[Tensor, Tensor]:
    """Digits with multi-hot attributes of the digit shown: even, > 4, has a loop, is a 7 (10 %); ``rare``: instead
    a 0, 1, 2 or 3 drawn in the first quarter of the split (about 2.5 % each: the best model predicts them never
    for three quarters of the zeros)."""
    features, digits = digits_tensors(split)  # type: ignore[arg-type]
    if rare:
        first_quarter = torch.arange(len(digits)) % 4 == 0
        attributes = [(digits == d) & first_quarter for d in range(LABELS)]
    else:
        attributes = [digits % 2 == 0, digits > 4, torch.isin(digits, torch.tensor([0, 6, 8, 9])), digits == 7]
    targets = torch.stack(attributes, dim=1).float()
    if shuffled:
        targets = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(1))]
    return features, targets


class MultiLabelNet(pl.LightningModule):
    """An MLP trained with BCE-with-logits; ``sigmoid_twice`` squashes its logits before that loss, ``blind``
    multiplies its input by zero (the model cannot see the digit)."""

    def __init__(self, lr: float = 3e-3, sigmoid_twice: bool = False, blind: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, LABELS))
        self.lr, self.sigmoid_twice, self.blind = lr, sigmoid_twice, blind

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x * 0 if self.blind else x)
        return logits.sigmoid() if self.sigmoid_twice else logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(
    make_trainer: Any, model: pl.LightningModule, epochs: int, alone: bool = False, **data: bool
) -> tuple[pl.Trainer, MultiLabelCallback]:
    """Fit with ModelChecksCallback deciding the run's task at step 0, or ``alone`` (the callback decides it)."""
    pl.seed_everything(0, verbose=False)
    callback = MultiLabelCallback()
    trainer = make_trainer(callbacks=[callback] if alone else [ModelChecksCallback(), callback], max_epochs=epochs)
    train = DataLoader(TensorDataset(*digit_attributes("train", **data)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(*digit_attributes("val", rare=data.get("rare", False))), batch_size=64)
    trainer.fit(model, train, val)
    return trainer, callback


def one(trainer: pl.Trainer, code: str) -> Finding:
    found = [f for f in problems(trainer) if f.code == code]
    assert len(found) == 1, [f"{f.code}: {f.message}" for f in problems(trainer)]
    return found[0]


# ---- healthy runs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alone", [False, True], ids=["with ModelChecks", "alone"])
def test_healthy_multilabel_digits_are_quiet_and_counted(make_trainer: Any, alone: bool) -> None:
    trainer, callback = fit(make_trainer, MultiLabelNet(), epochs=3, alone=alone)
    assert problems(trainer) == []
    summary = callback.summaries["val"]
    assert summary.samples == 449 and summary.labels == LABELS
    assert summary.micro_f1 > 0.8 and summary.macro_f1 > 0.8
    assert summary.prevalence[3] == pytest.approx(float(digit_attributes("val")[1][:, 3].mean()))
    assert callback.task is not None and callback.task.kind == "multilabel"
    table = dict(callback.report_sections())["Multi-label prevalence vs predicted rate (val, last epoch)"]
    assert "prevalence" in table and "micro F1" in table


def test_rare_labels_predicted_never_stay_quiet(make_trainer: Any) -> None:
    """Labels at 2.5 % that the best model predicts never: it still beats the prior BCE, so no verdict."""
    trainer, callback = fit(make_trainer, MultiLabelNet(), epochs=4, rare=True)
    assert problems(trainer) == []
    assert min(callback.summaries["val"].predicted_rate) < 0.01  # some label is never predicted


def test_idle_on_a_multiclass_run(make_trainer: Any) -> None:
    class Multiclass(MultiLabelNet):
        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y.argmax(1))

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            pass

    _, callback = fit(make_trainer, Multiclass(), epochs=1)
    assert callback.task is None and callback.summaries == {} and callback.history == {}


# ---- eval.multilabel_collapse / eval.multilabel_chance_level ---------------------------------------------------------
def test_sigmoid_twice_is_read_at_one_half_and_named_by_output_activated(make_trainer: Any) -> None:
    """Outputs already through a sigmoid are read as the user reads them (at 0.5, not as logits at 0, which would
    make every label positive): the bug is the activation, which output.activated names, not a collapse."""
    trainer, callback = fit(make_trainer, MultiLabelNet(sigmoid_twice=True), epochs=4)
    assert "output.activated" in {f.code for f in problems(trainer)}
    assert not {"eval.multilabel_collapse", "eval.multilabel_metric_mismatch"} & {f.code for f in problems(trainer)}
    assert max(callback.summaries["val"].predicted_rate) < 1.0


def test_a_model_blind_to_its_input_collapses_to_one_label_set(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, MultiLabelNet(lr=1e-2, blind=True), epochs=4)
    finding = one(trainer, "eval.multilabel_collapse")
    assert finding.severity == Severity.ERROR and finding.subject == "val" and finding.standing
    assert set(finding.evidence["predicted_rate"].values()) <= {0.0, 1.0}  # the same label set for every sample


def test_shuffled_labels_reported_as_no_better_than_ignoring_the_input(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, MultiLabelNet(lr=1e-2), epochs=6, shuffled=True)
    finding = one(trainer, "eval.multilabel_chance_level")
    assert finding.evidence["training"] in ("memorising", "stuck", "never below the prior")
    assert callback.summaries["val"].micro_f1 <= finding.evidence["constant_micro_f1"] + 0.05


def test_the_rules_on_counts() -> None:
    none_predicted = MultiLabelSummary(100, (0, 0), (0, 0), (40, 5))
    assert is_collapsed(none_predicted) and not is_chance_level(none_predicted)
    rare_never = MultiLabelSummary(100, (36, 0), (40, 0), (40, 5))  # label 0 learned, the rare one never predicted
    assert not is_collapsed(rare_never) and not is_chance_level(rare_never)
    assert none_predicted.constant_micro_f1() == pytest.approx(2 * 0.4 / 1.45)  # predicting label 0 only


def test_counts_match_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(0)
    counts, f1_micro, f1_macro = MultiLabelCounts(5), MultilabelF1Score(5, average="micro"), MultilabelF1Score(5)
    accuracy = MultilabelAccuracy(5)
    for size in (16, 16, 7):
        logits, targets = torch.randn(size, 5, generator=generator), torch.rand(size, 5, generator=generator) < 0.3
        counts.update(logits > 0, targets, torch.zeros(size, 5))
        for metric in (f1_micro, f1_macro, accuracy):
            metric.update(logits, targets.long())
    summary = MultiLabelSummary.from_counts(counts.compute())
    assert summary.micro_f1 == pytest.approx(float(f1_micro.compute()))
    assert summary.macro_f1 == pytest.approx(float(f1_macro.compute()))
    assert summary.hamming_accuracy == pytest.approx(float(accuracy.compute()))


# ---- eval.multilabel_metric_mismatch ---------------------------------------------------------------------------------
class HandCountedF1(MultiLabelNet):
    """F1 counted by hand with the assignment bug: `=` where `+=` was meant keeps the last batch only."""

    def on_validation_epoch_start(self) -> None:
        self.tp, self.fp, self.fn = 0, 0, 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = self(x) > 0
        self.tp = int((pred & (y > 0)).sum())  # the bug
        self.fp += int((pred & (y == 0)).sum())
        self.fn += int((~pred & (y > 0)).sum())

    def on_validation_epoch_end(self) -> None:
        self.log("val_f1", 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1))


class TorchmetricsLogged(MultiLabelNet):
    """Every correct way: metric objects (micro and macro F1, Hamming accuracy), subset accuracy and per-step micro
    F1 means."""

    def __init__(self) -> None:
        super().__init__()
        self.micro, self.macro = MultilabelF1Score(LABELS, average="micro"), MultilabelF1Score(LABELS)
        self.hamming = MultilabelAccuracy(LABELS)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        for metric in (self.micro, self.macro, self.hamming):
            metric(logits, y.long())
        self.log("val_micro_f1", self.micro)
        self.log("val_macro_f1", self.macro)
        self.log("val_acc", self.hamming)
        self.log("val_subset_acc", ((logits > 0) == (y > 0)).all(1).float().mean())


class WeightedRareLabel(MultiLabelNet):
    """The usual remedy for a rare label: ``pos_weight`` in a functional BCE-with-logits, with the rare label's own F1
    logged beside the macro F1 (torchmetrics per-label scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor([1.0, 1.0, 1.0, 5.0]))
        self.per_label = MultilabelF1Score(LABELS, average="none")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y, pos_weight=self.pos_weight)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.per_label.update(self(x), y.long())

    def on_validation_epoch_end(self) -> None:
        scores = self.per_label.compute()
        self.log("val_f1_sevens", scores[3])
        self.log("val_f1_macro", scores.mean())
        self.per_label.reset()


def test_a_pos_weighted_loss_is_a_multilabel_task_and_a_per_label_f1_is_a_correct_reading(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, WeightedRareLabel(), epochs=3)
    assert callback.task is not None and callback.task.kind == "multilabel"
    assert problems(trainer) == []
    f1_sevens = float(trainer.callback_metrics["val_f1_sevens"])
    assert f1_sevens == pytest.approx(callback.summaries["val"].f1_scores[3], abs=1e-6)


def test_assignment_bug_in_a_logged_f1_is_a_mismatch(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, HandCountedF1(), epochs=2)
    finding = one(trainer, "eval.multilabel_metric_mismatch")
    assert finding.subject == "val:val_f1" and "+=" in finding.hint
    assert finding.evidence["logged"] < callback.summaries["val"].micro_f1 - 0.2


def test_correctly_logged_torchmetrics_are_no_mismatch(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, TorchmetricsLogged(), epochs=2)
    assert "eval.multilabel_metric_mismatch" not in codes(trainer)
    assert problems(trainer) == []
    assert float(trainer.callback_metrics["val_micro_f1"]) == pytest.approx(callback.summaries["val"].micro_f1)


def test_options_are_validated() -> None:
    for options in ({"min_epochs": 0}, {"compare_keys": "val_f1"}, {"threshold": "0.5"}, {"report_labels": -1}):
        with pytest.raises(ValueError):
            MultiLabelCallback(**options)
