"""One task model per run: what the model predicts and against which targets, decided once and shared by every
callback through the run coordinator (issue #22, section 1)."""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity import ConfusionCallback, ModelChecksCallback, Severity
from lightning_sanity import model_checks as model_checks_module
from lightning_sanity import run as sanity_run
from lightning_sanity import task as task_module
from lightning_sanity import task_search as task_search_module
from lightning_sanity.demos import Classifier, mlp, wine_tensors
from lightning_sanity.report import SanityReport
from lightning_sanity.task import ScorePairing, Task, task_kind


def labels(n: int, classes: int, *shape: int) -> Tensor:
    return torch.randint(0, classes, (n, *shape), generator=torch.Generator().manual_seed(0))


# ---- the pure rule: the kind from the pair's shapes, dtypes and loss -------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "targets", "loss", "expected"),
    [
        (torch.randn(8, 5), labels(8, 5), "cross_entropy", ("multiclass", 5, None)),
        (torch.randn(8, 2), labels(8, 2), "nll_of_log", ("multiclass", 2, None)),
        (torch.randn(8), labels(8, 2).float(), "bce_with_logits", ("binary", 2, None)),
        (torch.randn(8, 1), labels(8, 2).float().unsqueeze(1), "bce_with_logits", ("binary", 2, None)),
        (torch.randn(8), labels(8, 2), "bce_with_logits", ("binary", 2, None)),  # integer 0/1 targets
        (torch.randn(4, 3, 6, 6), labels(4, 3, 6, 6), "cross_entropy", ("dense", 3, None)),
        (torch.randn(4, 3, 6, 6), torch.where(labels(4, 2, 6, 6) == 1, 255, 1), "cross_entropy", ("dense", 3, 255)),
        (torch.randn(4, 11, 8, 8), labels(4, 11, 8, 8), "DiceLoss", ("dense", 11, None)),  # a loss module's name
        (torch.randn(4, 1, 6, 6), labels(4, 2, 1, 6, 6).float(), "bce_with_logits", ("dense", 2, None)),
        (torch.randn(4, 7, 9), torch.where(labels(4, 2, 7) == 1, -100, 3), "cross_entropy", ("token", 9, -100)),
        (torch.randn(4, 9, 7), torch.where(labels(4, 2, 7) == 1, -100, 3), "cross_entropy", ("token", 9, -100)),
        (torch.randn(8, 4), labels(8, 2, 4).float(), "bce_with_logits", ("multilabel", 4, None)),
        (torch.randn(8, 4), (torch.arange(4) < 2).float().repeat(8, 1), "soft_cross_entropy", ("multilabel", 4, None)),
        (torch.randn(8, 4), torch.randn(8, 4).softmax(1), "soft_cross_entropy", ("multiclass", 4, None)),
        (torch.randn(8, 1), torch.randn(8, 1) * 100, "mse", ("regression", None, None)),
        (torch.randn(8, 3), labels(8, 3).float(), "l1", ("regression", None, None)),  # a regression loss decides
        (torch.randn(8, 6), torch.randn(8, 6), "CustomLoss", ("regression", None, None)),
        (torch.randn(8, 3), labels(8, 3, 2), "CustomLoss", ("unknown", None, None)),
    ],
)
def test_the_task_kind_of_each_pair(scores: Tensor, targets: Tensor, loss: str, expected: tuple[Any, ...]) -> None:
    assert task_kind(scores, targets, loss) == expected


def test_a_task_says_in_one_line_what_is_predicted_against_what() -> None:
    task = Task("multiclass", ScorePairing("call:", 1, "cross_entropy"), "cross_entropy", 10)
    expected = "multiclass classification (10 classes), loss cross_entropy on the model's output vs batch[1]"
    assert task.describe() == expected
    token = Task("token", ScorePairing("call:model", "labels", "cross_entropy"), "cross_entropy", 9, -100)
    assert token.describe() == (
        "token classification (9 classes, ignore index -100), "
        "loss cross_entropy on the output of `model` vs batch['labels']"
    )
    assert Task("internal_loss", loss="internal", source="call:model").describe() == (
        "loss computed inside the model (`call:model` returns it as .loss)"
    )
    data = json.loads(json.dumps(token.to_dict()))
    assert data["kind"] == "token" and data["pairing"]["target"] == "labels" and data["description"]


# ---- decided once per run, shared through the run coordinator ------------------------------------------------------


def wine(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    (xt, yt), (xv, yv) = wine_tensors("train"), wine_tensors("val")
    return (
        DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(xv, yv), batch_size=batch_size),
    )


class TaskSeen(pl.Callback):
    """What the run coordinator holds at the start of each run and after the first training step."""

    def __init__(self) -> None:
        self.at_start: list[Task | None] = []
        self.after_first_step: list[Task | None] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_start.append(sanity_run.task_of(trainer))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_start.append(sanity_run.task_of(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == 1:
            self.after_first_step.append(sanity_run.task_of(trainer))


def test_the_task_is_decided_once_and_both_callbacks_read_it(
    make_trainer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    decisions: list[Task | None] = []

    def counted(*args: Any) -> Task | None:
        decisions.append(task_module.decide_task(*args))
        return decisions[-1]

    monkeypatch.setattr(model_checks_module, "decide_task", counted)
    monkeypatch.setattr(task_search_module, "decide_task", counted)
    pl.seed_everything(0, verbose=False)
    confusion, checks, seen = ConfusionCallback(), ModelChecksCallback(), TaskSeen()
    trainer = make_trainer(callbacks=[confusion, checks, seen], max_epochs=2)
    trainer.fit(Classifier(mlp(13, 3)), *wine())
    [task] = decisions  # ModelChecksCallback decided at step 0; ConfusionCallback read the published task
    assert task is not None and task.kind == "multiclass" and task.num_classes == 3 and task.loss == "cross_entropy"
    assert confusion.task is task and confusion.pairing == task.pairing == ScorePairing("call:", None, "cross_entropy")
    assert seen.at_start == [None] and seen.after_first_step == [task]
    report = ls.last_report(trainer)
    assert report is not None and report.task is not None
    line = (
        "Task: multiclass classification (3 classes), loss cross_entropy on the model's output vs the batch's targets"
    )
    assert report.task_line() == line and line in report.to_text() and line in report.to_markdown()
    again = SanityReport.from_json(report.to_json())
    assert again.task == report.task and json.loads(report.to_json())["task"]["kind"] == "multiclass"
    # a report written before the task existed still loads
    old = json.loads(report.to_json())
    del old["task"]
    assert SanityReport.from_json(json.dumps(old)).task is None


def test_each_run_starts_without_a_task_and_a_test_run_reports_the_fits(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    confusion, seen = ConfusionCallback(), TaskSeen()
    trainer = make_trainer(callbacks=[confusion, seen], max_epochs=1)
    model = Classifier(mlp(13, 3))
    train, val = wine()
    trainer.fit(model, train, val)
    fit_report = ls.last_report(trainer)
    trainer.test(model, val)
    test_report = ls.last_report(trainer)
    assert seen.at_start == [None, None]  # fit, then test: a new run starts empty
    assert fit_report is not None and test_report is not None and test_report.run == "test"
    assert fit_report.task is not None and test_report.task == fit_report.task  # the test judged the fit's task
    assert confusion.confusion_matrices["test"].sum() == len(val.dataset)  # type: ignore[arg-type]


def test_the_first_publication_wins(make_trainer: Any) -> None:
    first = Task("multiclass", ScorePairing("call:", None, "cross_entropy"), "cross_entropy", 3)

    class Publisher(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.published = sanity_run.publish_task(trainer, first)
            self.second = sanity_run.publish_task(trainer, Task("regression", loss="mse"))

    publisher, confusion = Publisher(), ConfusionCallback()
    trainer = make_trainer(callbacks=[confusion, publisher], max_epochs=1, limit_train_batches=2)
    trainer.fit(Classifier(mlp(13, 3)), *wine())
    assert publisher.published is first and publisher.second is first
    assert confusion.task is first and confusion.pairing == first.pairing


# ---- a loss computed inside the model ------------------------------------------------------------------------------


class Output(dict):  # type: ignore[type-arg]
    """What a Hugging Face model returns: a dict whose keys are also attributes."""

    __getattr__ = dict.__getitem__


class InternalLoss(pl.LightningModule):
    """The model computes its loss from ``labels`` (as HF models do); the step returns ``outputs.loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = HeadWithLoss()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.model(x, labels=y).loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.model(x, labels=y).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class HeadWithLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(13, 3)

    def forward(self, x: Tensor, labels: Tensor) -> Output:
        logits = self.net(x)
        # a loss of its own (label smoothing by a value no standard candidate tries): only the output's .loss gives it
        return Output(logits=logits, loss=F.cross_entropy(logits, labels, label_smoothing=0.37))


def test_a_loss_computed_inside_the_model_is_an_internal_loss_task_said_once(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    confusion = ConfusionCallback()
    trainer = make_trainer(callbacks=[confusion, ModelChecksCallback()], max_epochs=2)
    trainer.fit(InternalLoss(), *wine())
    assert confusion.task is not None and confusion.task.kind == "internal_loss"
    assert confusion.task.source == "call:model" and confusion.pairing is None
    [skipped] = [f for f in confusion.findings if f.code == "sanity.skipped"]
    assert skipped.severity is Severity.INFO and skipped.subject == "pairing" and skipped.count == 1
    assert skipped.evidence["task"] == "internal_loss" and "inside the model" in skipped.message
    assert confusion.summaries == {} and not [f for f in confusion.findings if f.code.startswith("eval.")]
    report = ls.last_report(trainer)
    assert report is not None and report.task is not None and report.task["kind"] == "internal_loss"


def test_a_duplicated_confusion_callback_reads_the_originals_task(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    original, duplicate = ConfusionCallback(), ConfusionCallback()
    trainer = make_trainer(callbacks=[original, duplicate], max_epochs=1)
    trainer.fit(Classifier(mlp(13, 3)), *wine())
    assert [f.code for f in duplicate.findings] == ["sanity.duplicate"]
    assert original.task is not None and duplicate.task is original.task and duplicate.pairing == original.pairing


def test_a_causal_lm_at_uniform_logits_is_its_own_loss_not_an_unshifted_pair() -> None:
    """Near initialisation every cross-entropy is about ln V: an untrained causal LM's unshifted logits-vs-labels pair
    gives its loss as well as the shifted one it really computes. The model's own loss, read shifted, decides: the
    task is internal_loss (the report would otherwise judge next-token predictions against the current tokens)."""
    from lightning_sanity.batch import split_batch
    from lightning_sanity.losses import LossContext
    from lightning_sanity.observe import ForwardCall, StepObserver

    tokens = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(2, 5, 7)  # exactly uniform: shifted and unshifted cross-entropies are both ln 7
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1))
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits.reshape(-1, 7), tokens.reshape(-1))))
    batch = {"input_ids": tokens, "labels": tokens}
    output = {"loss": loss, "logits": logits}
    call = ForwardCall(nn.Identity(), "model", (), {"input_ids": tokens, "labels": tokens}, output)
    observer = StepObserver.__new__(StepObserver)
    observer.calls, observer.child_outputs, call.returned = [call], [], True
    task = task_module.decide_task(observer, batch, split_batch(batch), float(loss), LossContext())
    assert task is not None and task.kind == "internal_loss" and task.source == "call:model"
