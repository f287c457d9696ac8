"""Issue 16: silent bugs from public bug reports, each with its healthy twin, and two false alarms.

Every test runs a real ``Trainer.fit`` on scikit-learn data with the pack's callbacks attached.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from support import codes, problems, sanity_warnings
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from torchvision import transforms as T

from lightning_sanity import (
    ConfusionCallback,
    Finding,
    GradientFlowCallback,
    ModeGuardCallback,
    Severity,
    TransformParityCallback,
    collect_findings,
)
from lightning_sanity.demos import GAN, Classifier, DigitImages, SmallCNN, digits_tensors, mlp, wine_tensors


def findings_of(trainer: pl.Trainer, code: str) -> list[Finding]:
    return [f for f in collect_findings(trainer) if f.code == code]


# ---------------------------------------------------------------- 1: a per-batch metric averaged over the epoch


class PerBatchAccuracy(Classifier):
    """Logs a torchmetrics accuracy as the tensor returned per batch (averaged by Lightning) or as the object."""

    def __init__(self, average: str, as_object: bool) -> None:
        super().__init__(mlp(64, 10), lr=1e-2)
        self.accuracy = MulticlassAccuracy(num_classes=10, average=average)  # type: ignore[arg-type]
        self.as_object = as_object

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        preds = self(x).argmax(dim=1)
        acc = self.accuracy(preds, y)
        self.log("val_acc", self.accuracy if self.as_object else acc, on_epoch=True)


def unshuffled_digits_by_class() -> tuple[DataLoader, DataLoader]:
    """Training data shuffled; the eval loader unshuffled over class-sorted data, so most batches hold one class."""
    x, y = digits_tensors("val")
    order = torch.argsort(y, stable=True)
    train = DataLoader(TensorDataset(*digits_tensors("train")), batch_size=32, shuffle=True)
    return train, DataLoader(TensorDataset(x[order], y[order]), batch_size=32)


def fit_accuracy_logging(make_trainer: Any, average: str, as_object: bool) -> tuple[pl.Trainer, ConfusionCallback]:
    pl.seed_everything(0, verbose=False)
    callback = ConfusionCallback()
    trainer = make_trainer(callbacks=[callback], max_epochs=3)
    with sanity_warnings():
        trainer.fit(PerBatchAccuracy(average, as_object), *unshuffled_digits_by_class())
    return trainer, callback


def test_per_batch_macro_accuracy_averaged_over_the_epoch_is_a_metric_mismatch(make_trainer: Any) -> None:
    trainer, callback = fit_accuracy_logging(make_trainer, "macro", as_object=False)
    [finding] = [f for f in callback.findings if f.code == "eval.metric_mismatch"]
    assert finding.severity is Severity.ERROR and finding.subject == "val:val_acc"
    assert finding.evidence["closest_reading"].startswith("per-batch mean (macro")
    assert finding.evidence["accumulated_accuracy"] - finding.evidence["logged"] > 0.15
    assert "per-batch" in finding.message and "self.log(key, self.acc)" in finding.hint


@pytest.mark.parametrize(("average", "as_object"), [("macro", True), ("micro", True), ("micro", False)])
def test_metric_objects_and_per_batch_micro_accuracy_stay_quiet(
    make_trainer: Any, average: str, as_object: bool
) -> None:
    trainer, callback = fit_accuracy_logging(make_trainer, average, as_object)
    assert problems(trainer) == []
    assert callback.summaries["val"].accuracy > 0.85


# ---------------------------------------------------------------- 7: trainer.test on the training loader


def test_testing_on_the_training_loader_on_purpose_is_info_not_overlap(make_trainer: Any) -> None:
    """The linear-probe tutorial: training accuracy reported next to test accuracy, on the very train loader."""
    pl.seed_everything(0, verbose=False)
    train_loader = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    test_loader = DataLoader(TensorDataset(*wine_tensors("val")), batch_size=16)
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=2)
    with sanity_warnings() as warned:
        trainer.fit(Classifier(mlp(13, 3)), train_loader)
        trainer.test(trainer.lightning_module, dataloaders=train_loader)
        [info] = findings_of(trainer, "data.eval_on_train")  # each run reports its own findings
        assert problems(trainer) == []
        trainer.test(trainer.lightning_module, test_loader)
    assert problems(trainer) == [] and warned == []
    assert info.severity is Severity.INFO and info.stage == "test"
    assert "training-set metrics" in info.message and info.subject == "train|test"


def test_validating_on_the_training_loader_in_fit_or_validate_is_info(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    train_loader = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=1)
    with sanity_warnings():
        trainer.fit(Classifier(mlp(13, 3)), train_loader, train_loader)  # the very loader: an overfitting probe
        trainer.validate(trainer.lightning_module, DataLoader(train_loader.dataset, batch_size=64))
    assert problems(trainer) == []
    assert [f.subject for f in findings_of(trainer, "data.eval_on_train")] == ["train|val"]


def test_a_test_set_rebuilt_from_the_training_data_is_still_an_overlap_error(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    train_loader = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    rebuilt = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16)  # "test" set = training data
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=1)
    with sanity_warnings():
        trainer.fit(Classifier(mlp(13, 3)), train_loader)
        trainer.test(trainer.lightning_module, dataloaders=rebuilt)
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert overlap.severity is Severity.ERROR and overlap.evidence["how"] == "identical raw samples"
    assert "data.eval_on_train" not in codes(trainer)


def test_validating_during_fit_on_a_new_loader_of_the_training_dataset_stays_an_error(make_trainer: Any) -> None:
    """A val_dataloader built on the training dataset object is the copy-paste bug, not a deliberate probe."""
    pl.seed_everything(0, verbose=False)
    train_set = TensorDataset(*wine_tensors("train"))
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=1)
    with sanity_warnings():
        trainer.fit(Classifier(mlp(13, 3)), DataLoader(train_set, batch_size=16), DataLoader(train_set, batch_size=32))
    assert findings_of(trainer, "data.split_overlap")[0].severity is Severity.ERROR


# ---------------------------------------------------------------- 2: manual optimisation that never zeroes gradients


class ManualOptimization(Classifier):
    """Manual optimisation on digits: steps every ``step_every`` batches, resets after a step unless ``zero`` is off."""

    def __init__(self, zero: bool = True, step_every: int = 1, zero_before_step: bool = False) -> None:
        super().__init__(mlp(64, 10), lr=1e-3)
        self.automatic_optimization = False
        self.zero = zero
        self.step_every = step_every
        self.zero_before_step = zero_before_step

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss / self.step_every)
        if (batch_idx + 1) % self.step_every == 0:
            if self.zero_before_step:
                opt.zero_grad()  # type: ignore[union-attr]  # the bug: the gradient just computed is dropped
            opt.step()  # type: ignore[union-attr]
            if self.zero:
                opt.zero_grad()  # type: ignore[union-attr]


def digits_loaders() -> tuple[DataLoader, DataLoader]:
    train = DataLoader(TensorDataset(*digits_tensors("train")), batch_size=32, shuffle=True)
    return train, DataLoader(TensorDataset(*digits_tensors("val")), batch_size=128)


def fit_gradient_flow(make_trainer: Any, model: pl.LightningModule, **options: Any) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=[GradientFlowCallback()], **{"max_epochs": 1, **options})
    with sanity_warnings():
        trainer.fit(model, *digits_loaders())
    return trainer


def test_manual_optimization_without_zero_grad_is_grad_not_reset(make_trainer: Any) -> None:
    trainer = fit_gradient_flow(make_trainer, ManualOptimization(zero=False))
    [finding] = findings_of(trainer, "grad.not_reset")
    assert finding.severity is Severity.ERROR and finding.subject == "optimizer0"
    assert finding.evidence["watched_steps"] >= 3 and min(finding.evidence["held_gradient_norms"]) > 0
    assert finding.evidence["grad_norm_last_check"] > 2 * finding.evidence["grad_norm_first_check"]
    assert "zero_grad()" in finding.hint


def test_zero_grad_between_backward_and_step_is_grad_cleared_before_step(make_trainer: Any) -> None:
    trainer = fit_gradient_flow(make_trainer, ManualOptimization(zero_before_step=True))
    [finding] = findings_of(trainer, "grad.cleared_before_step")
    assert finding.severity is Severity.ERROR and finding.evidence["manual_optimization"] is True
    assert finding.evidence["steps_cleared_after_backward"] >= 2 and finding.evidence["modules"] == ["net"]
    assert "grad.missing" not in codes(trainer)  # not a cut graph: the gradient was computed, then dropped


@pytest.mark.parametrize("step_every", [1, 4])
def test_manual_steps_and_accumulation_over_k_batches_stay_quiet(make_trainer: Any, step_every: int) -> None:
    trainer = fit_gradient_flow(make_trainer, ManualOptimization(zero=True, step_every=step_every))
    assert "grad.not_reset" not in codes(trainer) and problems(trainer) == []


def test_automatic_optimization_with_accumulation_and_a_gan_stay_quiet(make_trainer: Any) -> None:
    trainer = fit_gradient_flow(make_trainer, Classifier(mlp(64, 10)), accumulate_grad_batches=3)
    assert problems(trainer) == []
    pl.seed_everything(0, verbose=False)
    gan = make_trainer(callbacks=[GradientFlowCallback()], max_epochs=2)
    with sanity_warnings():
        gan.fit(GAN(), DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True))
    assert "grad.not_reset" not in codes(gan)


class NoOpZeroGrad(Classifier):
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        pass  # the bug: a "speed-up" that never resets the gradients


def test_automatic_optimization_with_a_no_op_optimizer_zero_grad_is_grad_not_reset(make_trainer: Any) -> None:
    trainer = fit_gradient_flow(make_trainer, NoOpZeroGrad(mlp(64, 10), lr=1e-3))
    assert findings_of(trainer, "grad.not_reset")[0].evidence["manual_optimization"] is False


# ---------------------------------------------------------------- 3: a learnable value stored as a plain tensor


class Dice(nn.Module):
    """A data-adaptive activation with a per-feature ``alpha``, stored the way ``how`` says."""

    def __init__(self, emb_size: int, how: str) -> None:
        super().__init__()
        alpha = torch.zeros(emb_size)
        if how == "parameter":
            self.alpha = nn.Parameter(alpha)
        elif how == "buffer":
            self.register_buffer("alpha", alpha)
        elif how == "requires_grad":
            self.alpha = alpha.requires_grad_()  # still a plain tensor: no optimizer sees it
        else:
            self.alpha = alpha.to("cpu")  # the reported bug: torch.zeros(emb_size).to(device)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(x)
        self.last_gate_mean = gate.detach().mean(0)  # a tensor made in forward: not model state
        return gate * x + self.alpha * (1 - gate) * x


def dice_classifier(how: str) -> Classifier:
    return Classifier(nn.Sequential(nn.Linear(64, 32), Dice(32, how), nn.Linear(32, 10)), lr=1e-2)


@pytest.mark.parametrize(("how", "severity"), [("plain", Severity.WARNING), ("requires_grad", Severity.ERROR)])
def test_learnable_alpha_held_as_a_plain_tensor_is_reported(make_trainer: Any, how: str, severity: Severity) -> None:
    trainer = fit_gradient_flow(make_trainer, dice_classifier(how))
    [finding] = findings_of(trainer, "param.plain_tensor")
    assert finding.severity is severity
    assert finding.evidence["tensors"] == ["net.1.alpha"] and finding.evidence["shapes"] == [[32]]
    assert "net.1.alpha (Dice, [32])" in finding.message and "nn.Parameter" in finding.hint


@pytest.mark.parametrize("how", ["parameter", "buffer"])
def test_parameters_buffers_and_tensors_made_in_forward_are_not_reported(make_trainer: Any, how: str) -> None:
    model = dice_classifier(how)
    trainer = fit_gradient_flow(make_trainer, model)
    again = fit_gradient_flow(make_trainer, model)  # forward has now left last_gate_mean on the module
    assert "param.plain_tensor" not in codes(trainer) | codes(again)


class NormalizingClassifier(Classifier):
    """Input statistics kept as plain tensors: a constant that should be a buffer (not moved, not saved)."""

    def __init__(self) -> None:
        super().__init__(mlp(64, 10), lr=1e-2)
        self.mean = torch.linspace(0.0, 1.0, 64)
        self.std = torch.full((64,), 2.0).reshape(1, 64)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def test_a_constant_held_as_a_plain_tensor_is_only_info(make_trainer: Any) -> None:
    trainer = fit_gradient_flow(make_trainer, NormalizingClassifier())
    [finding] = findings_of(trainer, "param.plain_tensor")
    assert finding.severity is Severity.INFO and finding.evidence["tensors"] == ["mean", "std"]
    assert problems(trainer) == []


# ---------------------------------------------------------------- 4: BatchNorm trained with batch size 1


def digit_images(split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
    return DataLoader(DigitImages(T.ToTensor(), split=split, size=16), batch_size=batch_size, shuffle=shuffle)  # type: ignore[arg-type]


def fit_mode_guard(make_trainer: Any, model: pl.LightningModule, train: DataLoader, **options: Any) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    options = {"max_epochs": 1, "limit_train_batches": 24, "limit_val_batches": 2, **options}
    trainer = make_trainer(callbacks=[ModeGuardCallback(), GradientFlowCallback()], **options)
    with sanity_warnings():
        trainer.fit(model, train, digit_images("val", 64))
    return trainer


def test_batchnorm_trained_with_batch_size_one_is_reported(make_trainer: Any) -> None:
    trainer = fit_mode_guard(make_trainer, Classifier(SmallCNN(10, width=8)), digit_images("train", 1, shuffle=True))
    [finding] = findings_of(trainer, "mode.bn_tiny_batch")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["batch_sizes"] == {"net.1": 1, "net.5": 1}
    assert "`net.1`, `net.5`" in finding.message and "GroupNorm" in finding.hint


def bn_mlp_fit(make_trainer: Any, batch_size: int) -> pl.Trainer:
    net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    train = DataLoader(TensorDataset(*digits_tensors("train")), batch_size=batch_size, shuffle=True, drop_last=True)
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=[ModeGuardCallback()], max_epochs=1, limit_train_batches=24)
    with sanity_warnings():
        trainer.fit(Classifier(net), train, DataLoader(TensorDataset(*digits_tensors("val")), batch_size=64))
    return trainer


def test_batchnorm1d_on_batches_of_two_values_per_channel_is_reported(make_trainer: Any) -> None:
    [finding] = findings_of(bn_mlp_fit(make_trainer, 2), "mode.bn_tiny_batch")
    assert finding.evidence["values_per_channel"] == {"net.1": 2} and "`net.1`" in finding.message


def test_batchnorm1d_on_batches_of_eight_and_batchnorm2d_on_pairs_of_images_stay_quiet(make_trainer: Any) -> None:
    assert "mode.bn_tiny_batch" not in codes(bn_mlp_fit(make_trainer, 8))
    pairs = fit_mode_guard(make_trainer, Classifier(SmallCNN(10, width=8)), digit_images("train", 2, shuffle=True))
    assert "mode.bn_tiny_batch" not in codes(pairs)


class FrozenBatchNormFineTuning(Classifier):
    """The legitimate practice: BatchNorm statistics frozen (eval mode), every weight fine-tuned."""

    def on_train_epoch_start(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


@pytest.mark.parametrize(
    ("model", "batch_size"),
    [(Classifier, 32), (Classifier, 8), (FrozenBatchNormFineTuning, 1)],
    ids=["batch32", "batch8", "frozen-bn-batch1"],
)
def test_normal_batches_a_small_last_batch_and_frozen_batchnorm_stay_quiet(
    make_trainer: Any, model: type[Classifier], batch_size: int
) -> None:
    # 1347 training images in batches of 32 leave a last batch of 3; limit_train_batches=None reaches it
    options = {"limit_train_batches": None} if batch_size == 32 else {}
    trainer = fit_mode_guard(
        make_trainer, model(SmallCNN(10, width=8)), digit_images("train", batch_size, shuffle=True), **options
    )
    assert "mode.bn_tiny_batch" not in codes(trainer) and problems(trainer) == []


# ---------------------------------------------------------------- 5: .eval() used to "freeze" a backbone


class FineTuner(pl.LightningModule):
    """A "pretrained" convolutional backbone and a new head on digit images; ``freeze`` says how it is frozen."""

    def __init__(self, freeze: str) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(SmallCNN(10, width=8).children())[:-2])  # up to the pooled features
        self.head = nn.Linear(16, 10)
        self.freeze = freeze
        if freeze == "requires_grad":
            self.backbone.requires_grad_(False)
        if freeze == "bn":
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        elif freeze != "none":
            self.backbone.eval()  # "eval", "own-group" and "requires_grad": the whole backbone in eval mode

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.freeze == "own-group":
            return torch.optim.Adam(
                [{"params": self.backbone.parameters(), "lr": 1e-4}, {"params": self.head.parameters()}], lr=1e-2
            )
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_backbone_frozen_with_eval_but_still_optimized_is_reported(make_trainer: Any) -> None:
    trainer = fit_mode_guard(make_trainer, FineTuner("eval"), digit_images("train", 32, shuffle=True))
    [finding] = findings_of(trainer, "mode.eval_frozen_but_trained")
    assert finding.severity is Severity.WARNING and finding.subject == "backbone"
    assert finding.evidence["moved_count"] == finding.evidence["trainable_tensors"] == 4  # two convs: weight, bias
    assert finding.evidence["relative_norm_change"] > 0.01
    assert {"backbone.1", "backbone.5"} <= set(finding.evidence["mode_dependent_frozen"])
    assert "requires_grad_(False)" in finding.hint and "`backbone`" in finding.message


def test_backbone_in_eval_with_its_own_param_group_is_info(make_trainer: Any) -> None:
    trainer = fit_mode_guard(make_trainer, FineTuner("own-group"), digit_images("train", 32, shuffle=True))
    [finding] = findings_of(trainer, "mode.eval_frozen_but_trained")
    assert finding.severity is Severity.INFO and finding.evidence["dedicated_param_groups"] is True
    assert problems(trainer) == []


@pytest.mark.parametrize("freeze", ["requires_grad", "bn", "none"])
def test_backbone_frozen_with_requires_grad_or_frozen_batchnorm_stays_quiet(make_trainer: Any, freeze: str) -> None:
    trainer = fit_mode_guard(make_trainer, FineTuner(freeze), digit_images("train", 32, shuffle=True))
    assert "mode.eval_frozen_but_trained" not in codes(trainer) and problems(trainer) == []


# ---------------------------------------------------------------- 6: weights re-masked in place inside forward


class MaskedConv2d(nn.Conv2d):
    """PixelCNN's masked convolution as tutorials write it: the weight is re-masked in place in every forward."""

    def __init__(self, in_channels: int, out_channels: int, assign: bool = False) -> None:
        super().__init__(in_channels, out_channels, 5, padding=2)
        self.assign = assign
        mask = torch.ones_like(self.weight)
        mask[:, :, 2, 3:] = 0
        mask[:, :, 3:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        if self.assign:
            self.weight.data = self.weight.data * self.mask
        else:
            self.weight.data *= self.mask
        return super().forward(x)


def masked_cnn(assign: bool = False) -> nn.Module:
    return nn.Sequential(
        MaskedConv2d(3, 8, assign),
        nn.ReLU(),
        MaskedConv2d(8, 8, assign),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


class MaskedConvLeakingUpdates(Classifier):
    """The real bug next to the masking: validation_step nudges a weight the forward does not re-mask."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        with torch.no_grad():
            self.net[0].weight.add_(1e-3)  # also a masked conv: unmasked entries keep the change


@pytest.mark.parametrize("assign", [False, True], ids=["data-imul", "data-assign"])
def test_weights_re_masked_in_forward_stay_quiet(make_trainer: Any, assign: bool) -> None:
    trainer = fit_mode_guard(
        make_trainer, Classifier(masked_cnn(assign)), digit_images("train", 32, shuffle=True), max_epochs=2
    )
    assert "mode.params_changed_in_eval" not in codes(trainer) and problems(trainer) == []


def test_training_leaking_into_eval_next_to_masking_is_still_caught(make_trainer: Any) -> None:
    trainer = fit_mode_guard(make_trainer, MaskedConvLeakingUpdates(masked_cnn()), digit_images("train", 32, True))
    [finding] = findings_of(trainer, "mode.params_changed_in_eval")
    assert finding.severity is Severity.ERROR and "net.0.weight" in finding.evidence["tensors"]


class DriftingForward(Classifier):
    """A forward that moves a weight on every call: not a re-parametrisation, evaluation changes the model."""

    def forward(self, x: Tensor) -> Tensor:
        self.net[-1].bias.data += 1e-2
        return super().forward(x)


def test_a_forward_that_drifts_weights_is_still_caught(make_trainer: Any) -> None:
    trainer = fit_mode_guard(make_trainer, DriftingForward(SmallCNN(10, width=8)), digit_images("train", 32, True))
    assert findings_of(trainer, "mode.params_changed_in_eval")[0].evidence["tensors"] == ["net.10.bias"]


# ---------------------------------------------------------------- no observer effect from the new checks


class MaskedManualNoZeroGrad(Classifier):
    """Masked convolutions (the eval replay runs), BatchNorm on pairs of samples (the BatchNorm hooks run) and
    manual optimisation without zero_grad (the gradient-reset hooks run), all in one model."""

    def __init__(self) -> None:
        net = nn.Sequential(
            MaskedConv2d(3, 8), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        )
        super().__init__(net, lr=1e-3)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.manual_backward(F.cross_entropy(self(x), y))
        self.optimizers().step()  # type: ignore[union-attr]


def test_the_new_checks_leave_the_weights_bit_identical(make_trainer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    replays: list[bool] = []
    replay = ModeGuardCallback._rewritten_by_forward

    def counted(self: ModeGuardCallback, *args: Any) -> bool:
        replays.append(replay(self, *args))
        return replays[-1]

    monkeypatch.setattr(ModeGuardCallback, "_rewritten_by_forward", counted)

    def weights(callbacks: list[pl.Callback]) -> dict[str, Tensor]:
        pl.seed_everything(3, verbose=False)
        model = MaskedManualNoZeroGrad()
        trainer = make_trainer(callbacks=callbacks, max_epochs=2, limit_train_batches=12, limit_val_batches=2)
        with sanity_warnings():
            trainer.fit(model, digit_images("train", 2, shuffle=True), digit_images("val", 16))
        return {k: v.clone() for k, v in model.state_dict().items()}

    observed_callbacks = [ModeGuardCallback(), GradientFlowCallback()]
    without, observed = weights([]), weights(observed_callbacks)
    assert [k for k in without if not torch.equal(without[k], observed[k])] == []
    assert {"grad.not_reset"} <= {f.code for cb in observed_callbacks for f in cb.findings}
    assert replays and all(replays)  # the re-masking replay ran, and recognised the masking


class EmaTeacher(Classifier):
    """An EMA copy kept in eval mode inside the model (its parameters in self.parameters(), never given gradients):
    its weights move, but by the EMA update, not by the optimizer."""

    def __init__(self) -> None:
        super().__init__(SmallCNN(10, width=8), lr=1e-2)
        self.ema = copy.deepcopy(self.net).eval()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                ema.lerp_(live, 0.1)


def test_an_ema_copy_in_eval_mode_is_not_a_frozen_backbone(make_trainer: Any) -> None:
    trainer = fit_mode_guard(make_trainer, EmaTeacher(), digit_images("train", 32, shuffle=True))
    assert "mode.eval_frozen_but_trained" not in codes(trainer) and problems(trainer) == []
