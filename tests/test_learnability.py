"""A run that does not learn is never met with silence; one that learns, slowly or late, is not accused.

Each broken program of issue 13 is a real fit with the finding it must produce, next to a healthy twin.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from support import problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms as T

import lightning_sanity
from lightning_sanity import ConfusionCallback, Finding, ModeGuardCallback, SanityReport, Severity, collect_findings
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN, digits_tensors, mlp, wine_tensors
from lightning_sanity.learnability import EpochEvidence
from lightning_sanity.triage import SYMPTOMS, triage_rows
from lightning_sanity.verdicts import learning_story

NORMALIZED = T.Compose([T.ToTensor(), T.Normalize([0.3] * 3, [0.32] * 3)])


def loader(x: Tensor, y: Tensor, batch_size: int = 32, shuffle: bool = True) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def fit(make_trainer: Any, model: pl.LightningModule, train: Any, val: Any, epochs: int, **kwargs: Any) -> Any:
    pl.seed_everything(kwargs.pop("seed", 0), verbose=False)
    callbacks = kwargs.pop("callbacks", None) or [ConfusionCallback(figure_every_n_epochs=0), ModeGuardCallback()]
    trainer = make_trainer(callbacks=callbacks, max_epochs=epochs, **kwargs)
    trainer.fit(model, train, val)
    return trainer


def standing(trainer: pl.Trainer) -> list[Finding]:
    """WARNING and ERROR findings that still hold at the end of the run."""
    return [f for f in problems(trainer) if f.standing]


def the(trainer: pl.Trainer, code: str) -> Finding:
    [finding] = [f for f in collect_findings(trainer) if f.code == code]
    return finding


def binary_digits(split: str) -> tuple[Tensor, Tensor]:
    x, digits = digits_tensors(split)  # type: ignore[arg-type]
    return x, (digits >= 5).long()


# ------------------------------------------------------- 1. labels that do not follow from the inputs
def labels_without_signal(kind: str, split: str) -> tuple[Tensor, Tensor]:
    x, digits = digits_tensors(split)  # type: ignore[arg-type]
    generator = np.random.default_rng(7 if split == "train" else 8)
    if kind == "random binary labels":
        return x, torch.from_numpy(generator.integers(0, 2, len(digits)))
    return x, torch.from_numpy(generator.permutation(digits.numpy()))  # labels joined to other rows


def labels_with_signal(kind: str, split: str) -> tuple[Tensor, Tensor]:
    return binary_digits(split) if kind == "random binary labels" else digits_tensors(split)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "classes"), [("random binary labels", 2), ("labels on the wrong rows", 10)])
def test_labels_without_signal_are_memorised_and_reported_at_chance(make_trainer: Any, kind: str, classes: int) -> None:
    train, val = loader(*labels_without_signal(kind, "train")), loader(*labels_without_signal(kind, "val"), 128, False)
    trainer = fit(make_trainer, Classifier(mlp(64, classes, hidden=128), lr=3e-3), train, val, epochs=6)
    finding = the(trainer, "eval.chance_level")
    assert finding.severity is Severity.WARNING and finding.standing
    assert finding.evidence["training"] == "memorising"
    train_losses, val_losses = finding.evidence["epoch_train_losses"], finding.evidence["eval_losses"]
    assert finding.epoch <= 3  # so the evidence lists start at the first epoch
    train_fall, val_fall = train_losses[0] - train_losses[-1], val_losses[0] - val_losses[-1]
    assert train_fall > 0.02 * train_losses[0] and val_fall < 0.25 * train_fall  # fits train, nothing transfers
    assert finding.evidence["balanced_accuracy"] <= 1 / classes + 2 * max(0.025, finding.evidence["chance_noise"])
    assert "memorises" in finding.message and "training labels without signal" in finding.message
    # the report does not also claim the training loss sits at ln(C): that stopped holding when it fell
    plateau = [f for f in collect_findings(trainer) if f.code == "eval.loss_at_chance"]
    assert all(not f.standing for f in plateau)


def test_the_memorising_story_points_at_the_inputs_when_a_pipeline_finding_explains_it() -> None:
    history = [EpochEvidence(e, 9 * e, None, loss, None) for e, loss in enumerate([54.9, 803.1])]  # type: ignore[arg-type]
    story = learning_story("memorising", [2.30, 2.08], history, "transform.scaling_mismatch")
    assert "validation inputs differ from the training inputs (transform.scaling_mismatch)" in story
    assert "labels" not in story


@pytest.mark.parametrize(("kind", "classes"), [("random binary labels", 2), ("labels on the wrong rows", 10)])
def test_the_same_model_on_aligned_labels_is_quiet(make_trainer: Any, kind: str, classes: int) -> None:
    train, val = loader(*labels_with_signal(kind, "train")), loader(*labels_with_signal(kind, "val"), 128, False)
    trainer = fit(make_trainer, Classifier(mlp(64, classes, hidden=128), lr=3e-3), train, val, epochs=6)
    assert problems(trainer) == []


# ------------------------------------------------------- 2. a model whose output does not depend on its input
class Blind(Classifier):
    """The input multiplied by zero before the network."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 0)


def zero_against_rest(split: str) -> tuple[Tensor, Tensor]:
    x, digits = digits_tensors(split)  # type: ignore[arg-type]
    return x, (digits != 0).long()  # 90 % positives


def test_model_ignoring_its_input_on_imbalanced_data_is_imbalance_masked(make_trainer: Any) -> None:
    train, val = loader(*zero_against_rest("train")), loader(*zero_against_rest("val"), 128, False)
    trainer = fit(make_trainer, Blind(mlp(64, 2), lr=1e-2), train, val, epochs=4)
    finding = the(trainer, "eval.imbalance_masked")
    assert finding.evidence["top_predicted_share"] == 1.0 and finding.evidence["balanced_accuracy"] == 0.5
    assert finding.evidence["accuracy"] > 0.85
    # no model that ignores its input beats the class prior on validation
    assert min(finding.evidence["eval_losses"]) >= 0.98 * finding.evidence["prior_entropy"]


def test_the_same_model_using_its_input_is_quiet(make_trainer: Any) -> None:
    train, val = loader(*zero_against_rest("train")), loader(*zero_against_rest("val"), 128, False)
    trainer = fit(make_trainer, Classifier(mlp(64, 2), lr=1e-2), train, val, epochs=4)
    assert problems(trainer) == []


# ------------------------------------------------------- 3. every validation prediction one class, whole run
BUGGY_NORMALIZE = T.Compose([T.ToTensor(), T.Normalize([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])])


def digit_images(train_transform: Any, val_transform: Any) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(DigitImages(train_transform, "train", size=16), batch_size=64, shuffle=True)
    return train, DataLoader(DigitImages(val_transform, "val", size=16), batch_size=128)


def test_one_class_for_every_validation_is_a_collapse_without_training_evidence(make_trainer: Any) -> None:
    train, val = digit_images(BUGGY_NORMALIZE, T.ToTensor())  # the demo's bug: 0-255 constants, none in val
    trainer = fit(make_trainer, Classifier(SmallCNN(10), lr=3e-3), train, val, epochs=2)
    finding = the(trainer, "eval.prediction_collapse")
    assert finding.severity is Severity.ERROR and finding.epoch == 1
    assert finding.evidence["training"] == "one class throughout"
    assert finding.evidence["top_predicted_share"] >= 0.99


class WeightDecayed(Classifier):
    """SGD with a weight decay typo: 1.0 decays the weights to a constant output, 1e-4 (the intent) trains."""

    def __init__(self, weight_decay: float) -> None:
        super().__init__(mlp(13, 3), lr=0.1)
        self.weight_decay = weight_decay

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)


def wine_loaders(val_labels: Callable[[Tensor], Tensor] = lambda y: y) -> tuple[DataLoader, DataLoader]:
    (x, y), (xv, yv) = wine_tensors("train"), wine_tensors("val")
    return loader(x, y, 16), loader(xv, val_labels(yv), 64, False)  # 9 steps per epoch, 44 validation samples


@pytest.mark.parametrize("seed", [0, 1])
def test_a_small_data_model_decayed_to_one_class_is_a_collapse(make_trainer: Any, seed: int) -> None:
    # 90 optimizer steps, 44 validation samples: fewer steps than "stuck" needs, and a stray prediction (43/44)
    # is binomial noise on a one-class share, not a model telling classes apart
    pl.seed_everything(seed)
    trainer = fit(make_trainer, WeightDecayed(1.0), *wine_loaders(), epochs=10, seed=seed)
    finding = the(trainer, "eval.prediction_collapse")
    assert finding.standing and finding.evidence["training"] == "one class throughout"
    assert finding.evidence["samples"] == 44 and "nearly every prediction was one class" in finding.message


def test_the_intended_weight_decay_on_the_same_small_data_is_quiet(make_trainer: Any) -> None:
    pl.seed_everything(0)
    trainer = fit(make_trainer, WeightDecayed(1e-4), *wine_loaders(), epochs=10)
    assert problems(trainer) == []


def cycled(labels: Tensor) -> Tensor:
    return (labels + 1) % 3  # the validation split encodes its classes in another order


@pytest.mark.parametrize("seed", [0, 1])
def test_val_labels_in_another_order_are_below_chance_with_the_mapping(make_trainer: Any, seed: int) -> None:
    callbacks = lightning_sanity.default_callbacks()
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), *wine_loaders(cycled), 6, seed=seed, callbacks=callbacks)
    finding = the(trainer, "eval.below_chance")
    assert finding.severity is Severity.ERROR and finding.standing
    assert finding.evidence["accuracy"] < finding.evidence["independent_accuracy"] / 3
    assert finding.evidence["below_chance_z"] >= 4
    assert "'1' -> '0'" in finding.message and "'2' -> '1'" in finding.message  # val class k+1 is train class k
    assert "eval.chance_level" not in {f.code for f in collect_findings(trainer)}  # not "at chance": worse
    labels = next(row for row in lightning_sanity.last_report(trainer).triage if row.check.startswith("labels"))  # type: ignore[union-attr]
    assert (labels.status, labels.code) == ("wrong", "eval.below_chance")


def test_val_labels_in_the_same_order_are_quiet(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), *wine_loaders(), 6)
    assert problems(trainer) == []


def test_a_standing_collapse_reports_the_class_of_the_last_validation(make_trainer: Any) -> None:
    train, val = digit_images(BUGGY_NORMALIZE, T.ToTensor())
    confusion = ConfusionCallback(figure_every_n_epochs=0)
    trainer = fit(make_trainer, Classifier(SmallCNN(10), lr=3e-3), train, val, epochs=4, callbacks=[confusion])
    finding = the(trainer, "eval.prediction_collapse")
    last = confusion.confusion_matrices["val"]  # the last validation's matrix: rows true, columns predicted
    assert finding.count >= 2 and finding.epoch < trainer.current_epoch
    assert f"predictions are class '{int(last.sum(dim=0).argmax())}'" in finding.message
    assert finding.evidence["accuracy"] == pytest.approx(float(last.diag().sum() / last.sum()), abs=1e-3)


def test_the_same_program_with_one_normalisation_is_quiet(make_trainer: Any) -> None:
    train, val = digit_images(NORMALIZED, NORMALIZED)
    trainer = fit(make_trainer, Classifier(SmallCNN(10), lr=3e-3), train, val, epochs=2)
    assert problems(trainer) == []


# ------------------------------------------------------- 4. the model left in eval mode during training
class ProbeAtEpochStart(Classifier):
    """Probes the model on fixed inputs at each epoch start and forgets to switch back to training mode."""

    def on_train_epoch_start(self) -> None:
        self.eval()
        with torch.no_grad():
            self(torch.zeros(2, 13))


class RestoredProbe(ProbeAtEpochStart):
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.train()


class FrozenPart(Classifier):
    """Fine-tuning: the first block is frozen and kept in eval mode from each epoch start; the head trains."""

    def on_train_epoch_start(self) -> None:
        self.net[0].requires_grad_(False)
        self.net[0].eval()
        self.net[1].eval()


def bn_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(13, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))


def wine() -> tuple[DataLoader, DataLoader]:
    return loader(*wine_tensors("train"), 16), loader(*wine_tensors("val"), 64, False)


def test_lightning_module_in_eval_mode_during_training_is_reported_whatever_hook_did_it(make_trainer: Any) -> None:
    trainer = fit(make_trainer, ProbeAtEpochStart(bn_mlp()), *wine(), epochs=2)
    finding = the(trainer, "mode.eval_in_train")
    assert finding.severity is Severity.WARNING
    assert finding.epoch == 0 and finding.evidence["batch_idx"] == 0
    assert finding.evidence["lightning_module_in_eval"] is True
    assert {"net.1 (BatchNorm1d)", "net.3 (Dropout)"} == set(finding.evidence["modules"])
    assert "ProbeAtEpochStart itself is in eval mode" in finding.message


@pytest.mark.parametrize("model_class", [RestoredProbe, FrozenPart])
def test_restored_probe_and_a_frozen_part_are_quiet(make_trainer: Any, model_class: type) -> None:
    model = model_class(bn_mlp())
    trainer = fit(make_trainer, model, *wine(), epochs=2)
    assert problems(trainer) == []
    assert model.training and model.net[1].training is (model_class is RestoredProbe)


# ------------------------------------------------------- revisited verdicts: plateau, then learning
class PlainSGD(Classifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def deep_plain(depth: int = 7, width: int = 32) -> nn.Sequential:
    """A deep ReLU MLP without normalisation layers: on plain SGD it sits on the ln(C) plateau, then learns."""
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_a_deep_plain_network_on_the_plateau_then_learning_ends_resolved(make_trainer: Any, tmp_path: Path) -> None:
    train, val = loader(*digits_tensors("train")), loader(*digits_tensors("val"), 128, False)
    callbacks = [ConfusionCallback(figure_every_n_epochs=0)]
    logger = CSVLogger(str(tmp_path), name="plateau")
    pl.seed_everything(2, verbose=False)  # the initialisation decides how long the plateau lasts: 10 epochs here
    model = PlainSGD(deep_plain(), lr=0.1)
    trainer = fit(make_trainer, model, train, val, 12, callbacks=callbacks, logger=logger, seed=2)
    finding = the(trainer, "eval.loss_at_chance")
    assert finding.epoch < finding.resolved_epoch  # said while true, then resolved with the epoch it broke out
    verdicts = problems(trainer)
    assert {f.code for f in verdicts} >= {"eval.loss_at_chance", "eval.chance_level"}
    assert standing(trainer) == [] and all(f.epoch < f.resolved_epoch for f in verdicts)
    assert callbacks[0].summaries["val"].balanced_accuracy > 0.2  # clearly above 1/10 now
    report = json.loads(next(tmp_path.glob("**/sanity_report_fit.json")).read_text())
    assert report["summary"]["warning"] == 0 and report["triage"] == []
    resolved = {f["code"]: f["resolved_epoch"] for f in report["findings"]}
    assert resolved["eval.loss_at_chance"] == finding.resolved_epoch
    markdown = next(tmp_path.glob("**/sanity_report_fit.md")).read_text()
    assert f"resolved at epoch {finding.resolved_epoch}" in markdown
    assert all(not f.standing for f in SanityReport.from_json(json.dumps(report)).findings)


# ------------------------------------------------------- 5. a training loss that never gets below the class prior
class Relabelled(Dataset):
    """A dataset with its labels replaced (labels that no longer follow from the inputs)."""

    def __init__(self, base: Dataset, labels: np.ndarray) -> None:
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.base[index][0], int(self.labels[index])


def coin_flip_images() -> tuple[DataLoader, DataLoader]:
    """Digit images whose binary labels were drawn by coin flip, independently for each split."""
    train, val = DigitImages(NORMALIZED, "train", size=16), DigitImages(NORMALIZED, "val", size=16)
    flips = np.random.default_rng(5)
    return (
        DataLoader(Relabelled(train, flips.integers(0, 2, len(train))), batch_size=32, shuffle=True),
        DataLoader(Relabelled(val, flips.integers(0, 2, len(val))), batch_size=128),
    )


@pytest.mark.parametrize("lr", [1e-2, 3e-3])
def test_coin_flip_labels_whose_loss_never_gets_below_the_prior_are_reported(make_trainer: Any, lr: float) -> None:
    # three epochs of Adam: the loss creeps from above ln 2 towards it and never below (too few epochs to memorise)
    callbacks = lightning_sanity.default_callbacks(figure_every_n_epochs=0)
    pl.seed_everything(0, verbose=False)
    trainer = fit(make_trainer, Classifier(SmallCNN(2), lr=lr), *coin_flip_images(), 3, callbacks=callbacks)
    verdicts = [f for f in standing(trainer) if f.code in SYMPTOMS and f.subject == "val"]
    assert verdicts, [(f.code, f.message) for f in collect_findings(trainer)]
    assert {f.evidence["training"] for f in verdicts} <= {"stuck", "never below the prior"}, [
        f.message for f in verdicts
    ]
    assert all("class-prior entropy" in f.message for f in verdicts)
    assert all(min(f.evidence["epoch_train_losses"]) > 0.98 * f.evidence["prior_entropy"] for f in verdicts)
    assert lightning_sanity.last_report(trainer).triage  # type: ignore[union-attr]


class Smoothed(Classifier):
    """Cross-entropy with label smoothing: the training loss of a perfect model is no longer 0."""

    def __init__(self, net: nn.Module, lr: float, smoothing: float, optimizer: str = "adam") -> None:
        super().__init__(net, lr, optimizer)
        self.smoothing = smoothing

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y, label_smoothing=self.smoothing)


def one_against_rest(split: str) -> tuple[Tensor, Tensor]:
    x, digits = digits_tensors(split)  # type: ignore[arg-type]
    return x, (digits == 0).long()  # 10 % positives: a prior entropy of 0.33, half of ln 2


HEALTHY_ABOVE_THE_PRIOR = {
    # plain SGD on 10 %-positive data: from ln 2 down through the prior's 0.30, still above it after 129 steps
    "slow learner, imbalanced": lambda: (PlainSGD(mlp(64, 2), lr=2e-3), one_against_rest, 32, 6),
    # plain SGD, ten classes: above ln 10 for the first epoch, at the prior after 129 steps, then below it
    "slow learner, ten classes": lambda: (PlainSGD(mlp(64, 10), lr=2e-3), digits_tensors, 32, 6),
    # label smoothing raises the floor of the training loss, more so with two classes
    "label smoothing": lambda: (Smoothed(mlp(64, 10), 1e-3, 0.3, "sgd"), digits_tensors, 32, 6),
    "label smoothing, two classes": lambda: (Smoothed(mlp(64, 2), 1e-3, 0.3, "sgd"), binary_digits, 32, 6),
    # a run that ends after two epochs (170 steps): the first at ln 10, the second below it
    "two epochs": lambda: (PlainSGD(mlp(64, 10), lr=3e-3), digits_tensors, 16, 2),
}


@pytest.mark.parametrize("case", sorted(HEALTHY_ABOVE_THE_PRIOR))
def test_healthy_runs_that_start_at_or_above_the_prior_are_quiet(make_trainer: Any, case: str) -> None:
    pl.seed_everything(0, verbose=False)
    model, data, batch_size, epochs = HEALTHY_ABOVE_THE_PRIOR[case]()
    confusion = ConfusionCallback(figure_every_n_epochs=0)
    train, val = loader(*data("train"), batch_size), loader(*data("val"), 128, False)  # type: ignore[operator]
    trainer = fit(make_trainer, model, train, val, epochs, callbacks=[confusion, ModeGuardCallback()])
    assert problems(trainer) == []
    history = confusion.history["val"]
    assert len(history) == epochs  # every validation was judged: the callback read the model's scores
    assert (
        confusion.train_losses.epoch_losses[0] > 0.98 * history[0].summary.prior_entropy
    )  # the first epoch at the prior or above


# ------------------------------------------------------- the healthy side
def flipped(labels: Tensor, share: float, classes: int) -> Tensor:
    generator = torch.Generator().manual_seed(3)
    flip = torch.rand(len(labels), generator=generator) < share
    return torch.where(flip, torch.randint(0, classes, labels.shape, generator=generator), labels)


def rare_positives(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """About 6 % positives, a few of them told apart by one feature: right to predict the majority nearly always."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    return x, (torch.rand(n, generator=generator) < torch.sigmoid(4.0 * x[:, 0] - 7.0)).long()


def test_slow_learner_on_plain_sgd_is_quiet(make_trainer: Any) -> None:
    train, val = loader(*digits_tensors("train")), loader(*digits_tensors("val"), 128, False)
    trainer = fit(make_trainer, PlainSGD(mlp(64, 10), lr=2e-3), train, val, epochs=6)
    assert problems(trainer) == []


def test_thirty_percent_flipped_labels_are_quiet(make_trainer: Any) -> None:
    x, y = digits_tensors("train")
    train, val = loader(x, flipped(y, 0.3, 10)), loader(*digits_tensors("val"), 128, False)
    trainer = fit(make_trainer, Classifier(mlp(64, 10), lr=3e-3), train, val, epochs=5)
    assert problems(trainer) == []


def test_a_model_right_to_predict_mostly_one_class_is_quiet(make_trainer: Any) -> None:
    train, val = loader(*rare_positives(3000, 1), 64), loader(*rare_positives(1000, 2), 256, False)
    trainer = fit(make_trainer, Classifier(mlp(8, 2), lr=3e-3), train, val, epochs=6)
    assert problems(trainer) == []
    assert trainer.callbacks[0].summaries["val"].top_predicted_share > 0.9


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(12, 1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x).squeeze(1), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.net(x).squeeze(1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_regression_is_quiet(make_trainer: Any) -> None:
    (x, _), (xv, _) = wine_tensors("train"), wine_tensors("val")
    trainer = fit(make_trainer, Regressor(), loader(x[:, 1:], x[:, 0]), loader(xv[:, 1:], xv[:, 0], 64, False), 4)
    assert problems(trainer) == []


def pretrained_cnn(epochs: int = 2) -> SmallCNN:
    """A SmallCNN trained on the digit images by a plain loop, as a backbone to fine-tune."""
    net = SmallCNN(10)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        for x, y in DataLoader(DigitImages(NORMALIZED, "train", size=16), batch_size=64, shuffle=True):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    return net


class FrozenBackbone(Classifier):
    """Fine-tuning: a trained convolutional backbone frozen and kept in eval mode, a new head trains."""

    def __init__(self) -> None:
        super().__init__(pretrained_cnn(), lr=3e-3)
        self.net[-1].reset_parameters()
        self.backbone = list(self.net)[:8]
        for layer in self.backbone:
            layer.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        for layer in self.backbone:
            layer.eval()


def test_fine_tuning_with_a_frozen_backbone_in_eval_mode_is_quiet(make_trainer: Any) -> None:
    train, val = digit_images(NORMALIZED, NORMALIZED)
    pl.seed_everything(0, verbose=False)
    trainer = fit(make_trainer, FrozenBackbone(), train, val, epochs=4)
    assert problems(trainer) == []


# ------------------------------------------------------- triage
def test_a_stuck_run_gets_a_triage_in_every_report_form(make_trainer: Any, tmp_path: Path) -> None:
    train, val = loader(*binary_digits("train")), loader(*binary_digits("val"), 128, False)
    logger = CSVLogger(str(tmp_path), name="blind")
    callbacks = lightning_sanity.default_callbacks()
    trainer = fit(make_trainer, Blind(mlp(64, 2), lr=1e-2), train, val, 4, callbacks=callbacks, logger=logger)
    report = json.loads(next(tmp_path.glob("**/sanity_report_fit.json")).read_text())
    rows = {row["check"]: row for row in report["triage"]}
    assert len(rows) == 9 and set(rows["inputs used?"]) == {"check", "status", "code"}
    assert rows["outputs activated before the loss?"]["status"] == "fine"
    assert rows["model in train mode?"]["status"] == "fine"
    assert rows["inputs used?"] == {"check": "inputs used?", "status": "wrong", "code": "model.input_independent"}
    gradients = rows["gradients reach every layer?"]
    assert gradients["status"] == "wrong" and gradients["code"].startswith("grad.")  # the zeroed input's layer
    markdown = next(tmp_path.glob("**/sanity_report_fit.md")).read_text()
    assert "## Triage" in markdown and "| inputs used? | wrong | `model.input_independent` |" in markdown
    assert "Triage" in lightning_sanity.last_report(trainer).to_text()  # type: ignore[union-attr]


class DecayedEveryBatch(Classifier):
    """StepLR(step_size=1, gamma=0.5) meant per epoch, stepped every batch: the weights move by about two steps'
    worth in all, and the model stays at its initialisation."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_the_triage_of_a_run_stuck_by_its_schedule_names_the_schedule(make_trainer: Any) -> None:
    train, val = loader(*digits_tensors("train")), loader(*digits_tensors("val"), 128, False)  # type: ignore[arg-type]
    callbacks = lightning_sanity.default_callbacks()
    trainer = fit(make_trainer, DecayedEveryBatch(mlp(64, 10)), train, val, 3, callbacks=callbacks)
    rows = {row.check: row for row in lightning_sanity.last_report(trainer).triage}  # type: ignore[union-attr]
    assert rows  # the run is reported stuck
    assert (rows["update size sane?"].status, rows["update size sane?"].code) == ("wrong", "update.lr_collapsed")


def test_a_healthy_run_has_no_triage(make_trainer: Any) -> None:
    train, val = loader(*binary_digits("train")), loader(*binary_digits("val"), 128, False)
    trainer = fit(make_trainer, Classifier(mlp(64, 2)), train, val, 2, callbacks=lightning_sanity.default_callbacks())
    assert lightning_sanity.last_report(trainer).triage == []  # type: ignore[union-attr]


def finding(code: str, severity: Severity = Severity.WARNING, **kwargs: Any) -> Finding:
    return Finding(code, severity, "m", "h", "ConfusionCallback", "val", 2, 100, **kwargs)


def test_triage_reads_inputs_used_from_the_model_checks() -> None:
    stuck = finding("eval.chance_level")
    ignored = finding("model.input_independent", Severity.ERROR)
    answer = {
        name: next(row for row in triage_rows(findings, ran) if row.check == "inputs used?")
        for name, findings, ran in [
            ("wrong", [stuck, ignored], {"ModelChecksCallback"}),
            ("fine", [stuck], {"ModelChecksCallback", "ConfusionCallback"}),
            ("not checkable", [stuck], {"ConfusionCallback"}),
        ]
    }
    assert (answer["wrong"].status, answer["wrong"].code) == ("wrong", "model.input_independent")
    assert answer["fine"].status == "fine" and answer["not checkable"].status == "not checkable"


def test_triage_opens_only_on_a_standing_symptom() -> None:
    assert triage_rows([finding("output.activated")], {"ConfusionCallback"}) == []
    assert triage_rows([finding("eval.loss_at_chance", resolved_epoch=4)], {"ConfusionCallback"}) == []
    memorising = finding("eval.chance_level", evidence={"training": "memorising"})
    labels = next(row for row in triage_rows([memorising], set()) if row.check.startswith("labels"))
    assert (labels.status, labels.code) == ("wrong", "eval.chance_level")


def rows_of(findings: list[Finding], ran: set[str]) -> dict[str, tuple[str, str | None]]:
    return {row.check: (row.status, row.code) for row in triage_rows(findings, ran)}


def test_triage_blames_the_inputs_not_the_labels_when_validation_inputs_differ() -> None:
    memorising = finding("eval.prediction_collapse", Severity.ERROR, evidence={"training": "memorising"})
    unscaled = finding("transform.scaling_mismatch", Severity.ERROR)
    rows = rows_of([memorising, unscaled], {"ConfusionCallback", "TransformParityCallback", "BatchStatsCallback"})
    assert rows["train/val pipelines equal?"] == ("wrong", "transform.scaling_mismatch")
    assert rows["labels shaped, shuffled, aligned?"] == ("fine", None)


def test_triage_does_not_call_unverified_labels_fine_when_nothing_explains_the_failure() -> None:
    stuck = finding("eval.loss_at_chance")
    ran = {"ConfusionCallback", "TransformParityCallback", "BatchStatsCallback", "GradientFlowCallback"}
    assert rows_of([stuck], ran)["labels shaped, shuffled, aligned?"] == ("not checkable", None)
    explained = rows_of([stuck, finding("grad.missing", Severity.ERROR)], ran)
    assert explained["labels shaped, shuffled, aligned?"] == ("fine", None)


def test_finding_from_dict_tolerates_other_versions() -> None:
    data = finding("eval.loss_at_chance", resolved_epoch=5).to_dict()
    assert Finding.from_dict(data).resolved_epoch == 5
    del data["resolved_epoch"]
    assert Finding.from_dict({**data, "added_later": 1}).standing
