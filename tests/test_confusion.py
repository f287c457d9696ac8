"""ConfusionCallback: a correct confusion matrix, and the evaluation bugs it reveals."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from support import codes, problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import Accuracy, MulticlassAccuracy
from torchvision import transforms as T

from lightning_sanity import ConfusionCallback, Severity
from lightning_sanity.confusion import format_matrix
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN, digits_tensors, mlp, wine_tensors
from lightning_sanity.eval_metrics import EvalCounts, TrainLoss
from lightning_sanity.learnability import (
    ConfusionSummary,
    is_chance_level,
    is_imbalance_masked,
    is_loss_at_chance,
    is_prediction_collapse,
    training_evidence,
)
from lightning_sanity.logged_accuracy import closest_reading
from lightning_sanity.outputs import activation_kind, class_predictions, class_scores, probability_loss_floor


def loader(x: Tensor, y: Tensor, batch_size: int = 32, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def wine(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    return loader(*wine_tensors("train"), batch_size, shuffle=True), loader(*wine_tensors("val"), batch_size)


def fit(make_trainer: Any, model: pl.LightningModule, train: Any, val: Any, epochs: int = 3, **kwargs: Any) -> Any:
    pl.seed_everything(0, verbose=False)
    callback = ConfusionCallback(**kwargs.pop("callback", {}))
    trainer = make_trainer(callbacks=[callback], max_epochs=epochs, **kwargs)
    trainer.fit(model, train, val)
    return trainer, callback


# ------------------------------------------------------------------ case 1: the hand-written test loop
class HandWrittenTestLoop(Classifier):
    def on_test_epoch_start(self) -> None:
        self.n_correct, self.n_total = 0, 0

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = self(x).argmax(dim=1)
        self.n_correct = (pred == y).sum().item()  # the bug: `=` where `+=` was meant
        self.n_total += len(y)

    def on_test_epoch_end(self) -> None:
        self.log("test_acc", self.n_correct / self.n_total)


class TorchmetricsLogging(Classifier):
    """Accuracy logged the right ways: metric objects (macro and micro) and a per-step functional value."""

    def __init__(self) -> None:
        super().__init__(mlp(13, 3), lr=1e-2)
        self.val_acc = MulticlassAccuracy(num_classes=3)  # average="macro" by default
        self.test_acc = Accuracy(task="multiclass", num_classes=3)  # micro

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc)
        self.log("val/acc_step_mean", (logits.argmax(1) == y).float().mean())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)


def test_assignment_instead_of_accumulation_in_test_loop_is_a_metric_mismatch(make_trainer: Any) -> None:
    train, val = wine()
    trainer, callback = fit(make_trainer, HandWrittenTestLoop(mlp(13, 3), lr=1e-2), train, val, epochs=3)
    trainer.test(trainer.lightning_module, val)
    [finding] = [f for f in callback.findings if f.code == "eval.metric_mismatch"]
    assert finding.severity is Severity.ERROR
    assert finding.subject == "test:test_acc"
    assert finding.evidence["logged"] < 0.3  # 12 samples of the last batch over 44
    assert finding.evidence["accumulated_accuracy"] > 0.8
    assert "test_acc" in finding.message and f"{finding.evidence['accumulated_accuracy']:.4f}" in finding.message


def test_correctly_logged_torchmetrics_and_step_means_stay_quiet(make_trainer: Any) -> None:
    train, val = wine()
    trainer, callback = fit(make_trainer, TorchmetricsLogging(), train, val, epochs=3)
    trainer.test(trainer.lightning_module, val)
    assert problems(trainer) == []
    assert callback.summaries["test"].total == 44


# ------------------------------------------------------------------ case 2: binary stuck at ln 2
def dead_head_binary() -> nn.Module:
    """ReLU on the logits of a zero-initialised head: every output is exactly 0, every prediction class 0."""
    head = nn.Linear(32, 2)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, -1.0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), head, nn.ReLU())


def binary_digits(split: str) -> tuple[Tensor, Tensor]:
    x, digits = digits_tensors(split)  # type: ignore[arg-type]
    return x, (digits >= 5).long()


def test_binary_model_stuck_at_chance_collapses_and_sits_at_ln2(make_trainer: Any) -> None:
    train, val = loader(*binary_digits("train"), 32, shuffle=True), loader(*binary_digits("val"), 128)
    trainer, callback = fit(make_trainer, Classifier(dead_head_binary(), lr=1e-3), train, val, epochs=4)
    assert {"eval.prediction_collapse", "eval.loss_at_chance"} <= codes(trainer, Severity.WARNING)
    collapse = next(f for f in callback.findings if f.code == "eval.prediction_collapse")
    assert collapse.severity is Severity.ERROR
    assert collapse.evidence["top_predicted_share"] == 1.0
    assert collapse.evidence["confusion_matrix"][0][1] == 0 and collapse.evidence["confusion_matrix"][1][1] == 0
    loss = next(f for f in callback.findings if f.code == "eval.loss_at_chance")
    assert all(abs(v - math.log(2)) < 1e-3 for v in loss.evidence["epoch_losses"])
    # all-zero eval outputs carry no graph and no sign of a ReLU: ModelChecksCallback names it from the step-0 graph
    assert "output.activated" not in codes(trainer, Severity.WARNING)


class BinaryLogit(Classifier):
    """A single-logit head trained with BCEWithLogits, validation_step returning the logits."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x).squeeze(1), y.float())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        self.log("val_acc", ((logits.squeeze(1) > 0).long() == y).float().mean())
        return logits


def test_healthy_binary_single_logit_head_stays_quiet(make_trainer: Any) -> None:
    train, val = loader(*binary_digits("train"), 64, shuffle=True), loader(*binary_digits("val"), 128)
    trainer, callback = fit(make_trainer, BinaryLogit(mlp(64, 1), lr=1e-3), train, val, epochs=4)
    assert problems(trainer) == []
    assert callback.confusion_matrix is not None and callback.confusion_matrix.shape == (2, 2)
    assert int(callback.confusion_matrix.sum()) == 449
    assert callback.summaries["val"].accuracy > 0.85


# ------------------------------------------------------------------ case 3: majority class only
def two_to_one(n: int, informative: bool) -> tuple[Tensor, Tensor]:
    y = (torch.arange(n) % 3 == 0).long()  # one third positives: a 2:1 imbalance
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, 8, generator=generator) if informative else torch.zeros(n, 8)
    if informative:
        x[:, 0] += 3.0 * y
    return x, y


def test_majority_only_model_on_imbalanced_data_is_imbalance_masked(make_trainer: Any) -> None:
    train, val = loader(*two_to_one(600, False), 16, shuffle=True), loader(*two_to_one(150, False), 64)
    trainer, callback = fit(make_trainer, Classifier(mlp(8, 2), lr=1e-2), train, val, epochs=5)
    masked = next(f for f in callback.findings if f.code == "eval.imbalance_masked")
    assert masked.evidence["accuracy"] == pytest.approx(2 / 3, abs=0.01)
    assert masked.evidence["balanced_accuracy"] == pytest.approx(0.5, abs=0.01)
    assert masked.evidence["training"] == "stuck"  # the last validation's story: the train loss sits at the prior
    assert masked.evidence["balanced_accuracies"] == [0.5] * len(masked.evidence["eval_losses"])
    assert "eval.chance_level" not in codes(trainer)


def test_imbalanced_but_learnable_data_stays_quiet(make_trainer: Any) -> None:
    train, val = loader(*two_to_one(600, True), 16, shuffle=True), loader(*two_to_one(150, True), 64)
    trainer, callback = fit(make_trainer, Classifier(mlp(8, 2), lr=1e-2), train, val, epochs=5)
    assert problems(trainer) == []
    assert callback.summaries["val"].balanced_accuracy > 0.8


# ------------------------------------------------------------------ case 4: activated outputs
class Softmaxed(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=-1)


class ProbabilitiesWithNll(Classifier):
    """Returns probabilities on purpose and trains them with NLL of the log: correct, if unusual."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.nll_loss(torch.log(self(x) + 1e-8), y)


def test_softmax_before_cross_entropy_is_activated_output(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, Classifier(Softmaxed(mlp(13, 3)), lr=1e-2), *wine(), epochs=3)
    [finding] = [f for f in callback.findings if f.code == "output.activated"]
    assert finding.evidence["activation"] == "softmax"
    assert finding.evidence["lowest_train_loss"] >= probability_loss_floor(3) - 1e-4
    assert "softmax" in finding.message


def test_sigmoid_on_a_multi_class_head_is_activated_output(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, Classifier(nn.Sequential(mlp(13, 3), nn.Sigmoid()), lr=1e-2), *wine())
    [finding] = [f for f in callback.findings if f.code == "output.activated"]
    assert finding.evidence["activation"] == "sigmoid" and finding.evidence["num_classes"] == 3
    assert finding.evidence["loss_floor"] == pytest.approx(math.log(2 + math.e) - 1)
    assert finding.evidence["lowest_train_loss"] >= finding.evidence["loss_floor"] - 1e-4


def test_relu_on_logits_is_activated_output(make_trainer: Any) -> None:
    model = Classifier(nn.Sequential(mlp(13, 3), nn.ReLU()), lr=1e-2)
    trainer, callback = fit(make_trainer, model, *wine(), epochs=1)
    assert next(f for f in callback.findings if f.code == "output.activated").evidence["activation"] == "relu"


def test_probabilities_trained_with_nll_stay_quiet(make_trainer: Any) -> None:
    trainer, _ = fit(make_trainer, ProbabilitiesWithNll(Softmaxed(mlp(13, 3)), lr=1e-2), *wine(), epochs=3)
    assert problems(trainer) == []


# ------------------------------------------------------------------ healthy programs
def test_healthy_cnn_logs_scalars_and_reports_the_matrix_with_class_names(make_trainer: Any, tmp_path: Path) -> None:
    normalize = T.Normalize([0.2] * 3, [0.3] * 3)
    train = DataLoader(DigitImages(T.Compose([T.ToTensor(), normalize]), "train"), batch_size=32, shuffle=True)
    val_set = DigitImages(T.Compose([T.ToTensor(), normalize]), "val")
    val_set.classes = [f"digit{i}" for i in range(10)]
    val = DataLoader(val_set, batch_size=64)
    logger = CSVLogger(str(tmp_path), name="run")
    trainer, callback = fit(
        make_trainer, Classifier(SmallCNN(10, width=8)), train, val, epochs=2, logger=logger, limit_train_batches=15
    )
    assert problems(trainer) == []
    assert callback.confusion_matrix is not None and int(callback.confusion_matrix.sum()) == 449
    [(title, text)] = callback.report_sections()
    assert "val" in title and text.splitlines()[0].split()[-1] == "digit9"
    assert text.splitlines()[1].split()[0] == "digit0" and len(text.splitlines()) == 11
    logged = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert {"sanity/confusion/val/acc", "sanity/confusion/val/balanced_acc", "sanity/confusion/val/recall_c9"} <= set(
        logged.split(",")
    )


def test_early_epochs_of_a_slow_learner_and_the_untrained_sanity_check_stay_quiet(make_trainer: Any) -> None:
    train, val = loader(*digits_tensors("train"), 64, shuffle=True), loader(*digits_tensors("val"), 64)
    trainer, callback = fit(make_trainer, Classifier(mlp(64, 10), lr=1e-4), train, val, epochs=3)
    assert problems(trainer) == []
    assert callback.summaries["val"].accuracy < 0.5  # it really is still near chance
    validator = make_trainer(callbacks=[ConfusionCallback()])
    validator.validate(Classifier(mlp(64, 10)), val)
    assert problems(validator) == []


class Segmenter(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, mask = batch
        return F.cross_entropy(self.net(x), mask, ignore_index=255)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, mask = batch
        logits = self.net(x)  # not self(x): the callback captures the child's forward
        self.log("val_pixel_acc", (logits.argmax(1) == mask)[mask != 255].float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def masks(n: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(n)
    x = torch.rand(n, 1, 12, 12, generator=generator)
    mask = (x[:, 0] > 0.33).long() + (x[:, 0] > 0.66).long()
    mask[:, 0, :] = 255  # an ignored border row
    return x, mask


def test_segmentation_with_ignore_index_stays_quiet_and_counts_valid_pixels(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, Segmenter(), loader(*masks(64), 16, True), loader(*masks(24), 8), epochs=4)
    assert problems(trainer) == []
    assert callback.confusion_matrix is not None and callback.confusion_matrix.shape == (3, 3)
    assert int(callback.confusion_matrix.sum()) == 24 * 11 * 12
    assert "sanity.recomputed" not in codes(trainer)


class TwoValLoaders(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())


def test_several_val_dataloaders_keep_one_matrix_each_and_stay_quiet(make_trainer: Any) -> None:
    x, y = wine_tensors("val")
    train, _ = wine()
    vals = [loader(x, y, 16), loader(x[y == 1], y[y == 1], 16)]  # the second holds a single class
    trainer, callback = fit(make_trainer, TwoValLoaders(mlp(13, 3)), train, vals, epochs=4)
    assert problems(trainer) == []
    assert set(callback.confusion_matrices) == {"val", "val/dataloader_idx_1"}
    assert int(callback.confusion_matrices["val/dataloader_idx_1"].sum(dim=1)[1]) == int((y == 1).sum())


def test_a_50000_class_head_keeps_o_of_c_counts(make_trainer: Any) -> None:
    classes = 50_000
    x, y = torch.randn(96, 4), torch.randint(0, classes, (96,))
    trainer, callback = fit(
        make_trainer, Classifier(nn.Linear(4, classes)), loader(x, y, 32), loader(x, y, 32), epochs=1
    )
    [counts] = callback._counts.values()
    assert not counts.dense
    assert max(state.numel() for state in counts.metric_state.values()) == classes
    assert callback.confusion_matrix is None and callback.report_sections() == []
    assert callback.summaries["val"].total == 96


def test_regression_is_left_to_the_regression_callback(make_trainer: Any) -> None:
    class Regressor(Classifier):
        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.mse_loss(self(x).squeeze(1), y)

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            self.log("val_mse", F.mse_loss(self(x).squeeze(1), y))

    x = torch.randn(64, 5)
    trainer, callback = fit(make_trainer, Regressor(nn.Linear(5, 1)), loader(x, x.sum(1)), loader(x, x.sum(1)))
    assert callback.task is not None and callback.task.kind == "regression"
    assert callback.findings == [] and callback.summaries == {}


def test_float_targets_under_a_custom_loss_get_one_info_and_silence(make_trainer: Any) -> None:
    class CustomLoss(Classifier):
        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return (self(x).squeeze(1) - y).abs().pow(1.5).mean()

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            self.log("val_mae", (self(x).squeeze(1) - y).abs().mean())

    x = torch.randn(64, 5)
    trainer, callback = fit(make_trainer, CustomLoss(nn.Linear(5, 1)), loader(x, x.sum(1)), loader(x, x.sum(1)))
    assert callback.task is not None and callback.task.kind == "unknown"
    assert ("eval.not_classification", Severity.INFO) in [(f.code, f.severity) for f in callback.findings]
    assert [f for f in callback.findings if f.severity > Severity.INFO] == [] and callback.summaries == {}


# ------------------------------------------------------------------ which output and batch tensor the loss reads
def with_site_ids(x: Tensor, y: Tensor, batch_size: int = 16, shuffle: bool = False) -> DataLoader:
    """Batches ``(features, site_id, label)``: the site id (0-2) is an integer like the labels, but no target."""
    site = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(len(x)))
    return DataLoader(TensorDataset(x, site, y), batch_size=batch_size, shuffle=shuffle)


class SiteBatches(Classifier):
    """A wine classifier whose batches carry a site id before the label; validation logs a per-batch accuracy."""

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, _, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())


class SiteBatchesPerLoader(SiteBatches):
    """The same, but the accuracy is a hand-written count divided by the number of batches, not of samples."""

    def on_validation_epoch_start(self) -> None:
        self.correct = torch.zeros(())

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, _, y = batch
        self.correct = self.correct + (self(x).argmax(1) == y).sum()

    def on_validation_epoch_end(self) -> None:
        self.log("val_acc", self.correct / len(self.trainer.val_dataloaders))


def test_a_label_after_an_integer_side_input_is_found_from_the_training_loss(make_trainer: Any) -> None:
    (xt, yt), (xv, yv) = wine_tensors("train"), wine_tensors("val")
    trainer, callback = fit(
        make_trainer, SiteBatches(mlp(13, 3)), with_site_ids(xt, yt, shuffle=True), with_site_ids(xv, yv), epochs=3
    )
    assert problems(trainer) == []
    assert callback.pairing is not None and callback.pairing.target == 2 and callback.pairing.source == "call:"
    assert callback.confusion_matrix is not None
    assert callback.confusion_matrix.sum(dim=1).tolist() == torch.bincount(yv, minlength=3).tolist()
    assert callback.summaries["val"].accuracy > 0.85


def test_a_miscounted_accuracy_is_still_caught_behind_a_side_input(make_trainer: Any) -> None:
    (xt, yt), (xv, yv) = wine_tensors("train"), wine_tensors("val")
    model = SiteBatchesPerLoader(mlp(13, 3))
    trainer, callback = fit(make_trainer, model, with_site_ids(xt, yt, shuffle=True), with_site_ids(xv, yv), epochs=3)
    [finding] = [f for f in callback.findings if f.code == "eval.metric_mismatch"]
    assert finding.severity is Severity.ERROR and finding.subject == "val:val_acc"
    assert finding.evidence["logged"] > 1.0 and finding.evidence["accumulated_accuracy"] > 0.85
    assert "per-batch" not in finding.message  # the logged value is no per-batch mean either


class Prototypes(pl.LightningModule):
    """Metric learning: forward returns a normalised embedding, the step scores it against learnable prototypes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 8))
        self.prototypes = nn.Parameter(torch.randn(3, 8))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.encoder(x), dim=1)

    def scores(self, embedding: Tensor) -> Tensor:
        return 10.0 * embedding @ F.normalize(self.prototypes, dim=1).T

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.scores(self(x)), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_proto_acc", (self.scores(self(x)).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_an_embedding_output_scored_outside_a_module_call_gets_no_accuracy_verdict(make_trainer: Any) -> None:
    train, val = wine()
    trainer, callback = fit(make_trainer, Prototypes(), train, val, epochs=3)
    assert problems(trainer) == []
    assert float(trainer.callback_metrics["val_proto_acc"]) > 0.85
    [skipped] = [f for f in callback.findings if f.code == "sanity.skipped"]
    assert skipped.severity is Severity.INFO and skipped.subject == "pairing"
    assert skipped.evidence["outputs"][0] == "call:"
    assert callback.pairing is None and callback.confusion_matrix is None and callback.summaries == {}


class BroadcastMse(Classifier):
    """The bug of an MSE on [N, 3] outputs against a [N, 1] column of class indices: it broadcasts to [N, 3]."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x), y.float().unsqueeze(1))


def test_a_loss_on_a_column_of_the_targets_still_pairs_them_with_the_outputs(make_trainer: Any) -> None:
    train, val = wine()
    trainer, callback = fit(make_trainer, BroadcastMse(mlp(13, 3)), train, val, epochs=1)
    assert callback.pairing is not None and callback.pairing.loss == "mse" and callback.pairing.target is None
    assert "sanity.skipped" not in codes(trainer) and callback.summaries["val"].total == 44


class SigmoidTwiceLogged(Classifier):
    """Probabilities fed to BCEWithLogits (a real bug), with a validation accuracy correctly thresholded at 0.5."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x).squeeze(1), y.float())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", ((self(x).squeeze(1) > 0.5).long() == y).float().mean())


def test_a_probability_output_is_thresholded_at_one_half(make_trainer: Any) -> None:
    train, val = loader(*binary_digits("train"), 64, shuffle=True), loader(*binary_digits("val"), 128)
    net = nn.Sequential(mlp(64, 1), nn.Sigmoid())
    trainer, callback = fit(make_trainer, SigmoidTwiceLogged(net, lr=1e-2), train, val, epochs=4)
    assert "eval.metric_mismatch" not in codes(trainer)
    assert callback.pairing is not None and callback.pairing.loss == "bce_with_logits"
    logged = float(trainer.callback_metrics["val_acc"])
    assert logged > 0.8 and abs(callback.summaries["val"].accuracy - logged) < 0.01


# ------------------------------------------------------------------ the pure rules
def test_class_scores_finds_the_class_dimension() -> None:
    n = torch.zeros(4, dtype=torch.long)
    assert class_scores(torch.zeros(4, 3), n)[0].shape == (4, 3)  # type: ignore[index]
    assert class_scores(torch.zeros(4), n)[0].shape == (4, 1)  # type: ignore[index]
    assert class_scores(torch.zeros(4, 1), n)[0].shape == (4, 1)  # type: ignore[index]
    assert class_scores(torch.zeros(4, 7, 5), torch.zeros(4, 7, dtype=torch.long))[0].shape == (28, 5)  # type: ignore[index]
    assert class_scores(torch.zeros(4, 5, 6, 6), torch.zeros(4, 6, 6, dtype=torch.long))[0].shape == (144, 5)  # type: ignore[index]
    assert class_scores(torch.zeros(3, 3), n) is None
    with pytest.raises(ValueError, match="multi-label"):
        class_scores(torch.zeros(4, 3), torch.zeros(4, 3))


def test_predictions_threshold_a_single_logit_and_drop_ignored_targets() -> None:
    scores, targets = torch.tensor([[-1.0], [2.0], [0.5]]), torch.tensor([0, 1, 255])
    predictions = class_predictions(scores, targets, None, None)
    assert predictions.predicted.tolist() == [0, 1, 1] and predictions.num_classes == 2
    assert predictions.valid.tolist() == [True, True, False]


def test_activation_kind_tells_probabilities_and_relu_from_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 5, generator=generator)
    assert activation_kind(logits) is None
    assert activation_kind(logits.softmax(1)) == "softmax"
    assert activation_kind(logits.relu()) == "relu"
    assert activation_kind(logits[:, :1].sigmoid()) == "sigmoid"
    assert activation_kind(logits.abs() + 0.1) is None  # non-negative, but neither probabilities nor clipped
    assert activation_kind(torch.zeros(64, 3)) is None  # an all-zero head (zeros_like, zero init) is no ReLU
    assert activation_kind(torch.rand(1, 10).expand(64, 10)) is None  # rows alike: outputs ignore the input
    assert activation_kind(logits.sigmoid()) == "sigmoid"  # a sigmoid per class
    assert activation_kind(logits[:, :1].sigmoid(), graph="") is None  # the graph shows a linear layer last
    assert activation_kind(logits, graph="relu") == "relu"


def summary(tp: list[int], predicted: list[int], actual: list[int]) -> ConfusionSummary:
    return ConfusionSummary.from_counts(torch.tensor(tp), torch.tensor(predicted), torch.tensor(actual))


def test_collapse_and_imbalance_rules() -> None:
    assert is_prediction_collapse(summary([0, 3698], [0, 7500], [3802, 3698]))
    assert not is_prediction_collapse(summary([0, 900], [0, 1000], [100, 900]))  # the targets are that skewed too
    assert is_imbalance_masked(summary([100, 0], [150, 0], [100, 50]))
    assert not is_imbalance_masked(summary([95, 40], [105, 45], [100, 50]))


def test_a_model_predicting_the_minority_class_is_not_masked_by_the_imbalance() -> None:
    # every prediction is the 37 % minority class: accuracy is low, not "acceptable only because of imbalance"
    minority = summary([0, 13], [0, 35], [22, 13])
    assert not is_imbalance_masked(minority) and is_chance_level(minority) and is_prediction_collapse(minority)
    assert is_imbalance_masked(summary([22, 0], [35, 0], [22, 13]))  # the same split, all majority: masked


def test_training_evidence_waits_for_a_slow_learner() -> None:
    assert training_evidence([0.76, 0.30], 1.04, 18) == "learned"
    assert training_evidence([0.688, 0.632, 0.643, 0.640, 0.638], 0.6365, 190) == "stuck"
    assert training_evidence([0.688, 0.632, 0.643, 0.640, 0.638], 0.6365, 50) is None  # too few steps yet
    assert training_evidence([2.336, 2.311, 2.281, 2.259], 2.297, 400) is None  # a slow learner on its way down
    assert training_evidence([1.055, 1.055, 1.063, 1.037, 1.022, 1.032], 1.036, 54) is None
    assert is_loss_at_chance([0.724, 0.6932, 0.6931, 0.6931], 2, 150)
    assert not is_loss_at_chance([0.688, 0.671, 0.658], 2, 150)
    assert not is_loss_at_chance([2.336, 2.311, 2.281], 10, 150)


def test_closest_reading_accepts_percentages_and_format_matrix_aligns() -> None:
    assert closest_reading(93.0, {"acc": 0.93, "macro": 0.5})[:2] == ("acc", 0.93)
    text = format_matrix(torch.tensor([[12, 0], [3, 100]]), ["cat", "dog"])
    assert text.splitlines()[2].split() == ["dog", "3", "100"]


@pytest.mark.parametrize(
    ("option", "value"),
    [("num_classes", 1), ("max_classes", 0), ("on_train", "yes"), ("compare_keys", "val_acc"), ("min_epochs", 0)],
)
def test_bad_configuration_fails_fast(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        ConfusionCallback(**{option: value})


@pytest.mark.parametrize("dense", [True, False])
def test_eval_counts_fold_queued_batches_into_the_counts_of_each_batch(dense: bool) -> None:
    """Queued batches are counted together (one row per batch): the matrix and the per-batch accuracies are those of
    counting each batch on its own, for batches of different sizes, with ignored targets, read midway or not."""
    generator = torch.Generator().manual_seed(0)
    counts = EvalCounts(num_classes=4, dense=dense)
    matrix = torch.zeros(4, 4, dtype=torch.long)
    micro: list[float] = []
    macro: list[float] = []
    sizes: list[int] = []
    for index in range(70):
        size = 24 if index % 5 else 9
        targets = torch.randint(0, 4, (size,), generator=generator)
        noise = torch.randint(0, 4, (size,), generator=generator)
        predicted = torch.where(torch.rand(size, generator=generator) < 0.6, targets, noise)
        targets[: index % 3] = -100
        valid = targets >= 0
        counts.update(predicted, targets, valid, size)
        batch = torch.zeros(4, 4, dtype=torch.long)
        for true, guess in zip(targets[valid].tolist(), predicted[valid].tolist(), strict=True):
            batch[true, guess] += 1
        matrix += batch
        recall = batch.diagonal() / batch.sum(1).clamp(min=1)
        counted = (batch.sum(1) > 0) | (batch.sum(0) > 0)
        micro.append(float(batch.diagonal().sum() / batch.sum()))
        macro.append(float((recall * counted).sum() / counted.sum()))
        sizes.append(size)
        targets[:] = 0  # the step's tensors may change after the hook: the queue holds copies
        if index == 33:  # a read midway (the learnability verdict reads the running epoch)
            assert int(counts.compute()["actual"].sum()) == int(matrix.sum())
    values = counts.compute()
    if dense:
        assert values["matrix"].tolist() == matrix.tolist()
    assert values["true_positives"].tolist() == matrix.diagonal().tolist()
    assert values["actual"].tolist() == matrix.sum(1).tolist()
    assert values["predicted"].tolist() == matrix.sum(0).tolist()
    weights = torch.tensor(sizes, dtype=torch.float64)
    expected = {
        "batch_micro": sum(micro) / len(micro),
        "batch_macro": sum(macro) / len(macro),
        "batch_micro_weighted": float((torch.tensor(micro, dtype=torch.float64) * weights).sum() / weights.sum()),
        "batch_macro_weighted": float((torch.tensor(macro, dtype=torch.float64) * weights).sum() / weights.sum()),
    }
    for key, value in expected.items():
        assert float(values[key]) == pytest.approx(value, rel=1e-6)


def test_train_loss_takes_several_steps_at_once() -> None:
    losses = [2.5 - 0.02 * step + 0.1 * math.sin(step) for step in range(75)]
    metric = TrainLoss()
    metric.update(torch.tensor(losses[0]))
    metric.update(torch.tensor(losses[1:41]))
    assert float(metric.compute()[0]) == pytest.approx(sum(losses[:41]) / 41, rel=1e-6)
    metric.update(torch.tensor(losses[41:]).reshape(-1, 1))
    mean, lowest, noise = metric.compute()
    assert float(mean) == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert float(lowest) == pytest.approx(min(losses), rel=1e-6)
    assert float(noise) == pytest.approx(statistics.stdev(losses) / math.sqrt(len(losses)), rel=1e-6)


class LossRecorder(Classifier):
    """Keeps every training step's loss, per epoch."""

    def __init__(self) -> None:
        super().__init__(mlp(13, 3), lr=1e-2)
        self.losses: list[list[float]] = []

    def on_train_epoch_start(self) -> None:
        self.losses.append([])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses[-1].append(float(loss))
        return loss


def test_every_training_step_loss_counts_in_its_epoch_mean_and_the_lowest_loss(make_trainer: Any) -> None:
    """Step losses are kept per step and handed to the metric in groups (one group boundary falls mid-epoch,
    a validation run mid-epoch reads the running mean): every step counts once, in its own epoch."""
    model = LossRecorder()
    train, val = wine(batch_size=2)  # 67 steps per epoch: more than one group of kept losses
    trainer, callback = fit(make_trainer, model, train, val, epochs=2, val_check_interval=0.5)
    assert [len(e) for e in model.losses] == [67, 67]
    assert callback.train_losses.epoch_losses == pytest.approx([sum(e) / len(e) for e in model.losses], rel=1e-6)
    assert callback.train_losses.lowest == pytest.approx(min(min(e) for e in model.losses), rel=1e-6)
