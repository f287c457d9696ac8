"""ModeGuardCallback: train/eval mode discipline, on real Trainer runs over small real data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from support import codes, problems, sanity_warnings
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize, prune
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torchvision import transforms as T

from lightning_sanity import ModeGuardCallback, SanityError, Severity, default_callbacks
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN, wine_tensors
from lightning_sanity.eval_replay import innermost_sources, relative_difference
from lightning_sanity.isolation import private_state
from lightning_sanity.modes import CUSTOM, DROPOUT, NORMALIZATION, STOCHASTIC, Checksums, describe_modules, mode_kind

ERRORS = ("mode.train_in_eval", "mode.bn_updated_in_eval", "mode.params_changed_in_eval", "mode.stochastic_eval")


def bn_mlp(dropout: float = 0.2) -> nn.Sequential:
    """Wine-sized MLP with BatchNorm and dropout: both mode-dependent layer kinds."""
    return nn.Sequential(nn.Linear(13, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def wine_loaders(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    train, val = TensorDataset(*wine_tensors("train")), TensorDataset(*wine_tensors("val"))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def fit(
    make_trainer: Any, model: pl.LightningModule, callback: ModeGuardCallback | None = None, **kwargs: Any
) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = make_trainer(**{"callbacks": [callback or ModeGuardCallback()], "max_epochs": 2, **kwargs})
    with sanity_warnings():
        trainer.fit(model, *wine_loaders())
    return trainer


def the(trainer: pl.Trainer, code: str) -> Any:
    [finding] = [
        f for cb in trainer.callbacks if isinstance(cb, ModeGuardCallback) for f in cb.findings if f.code == code
    ]
    return finding


# ---- buggy programs and their healthy twins ------------------------------------------------


class TrainInValidationStep(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.train()  # the classic bug
        super().validation_step(batch, batch_idx)


def test_train_called_in_validation_step_is_reported_with_bn_update(make_trainer: Any) -> None:
    trainer = fit(make_trainer, TrainInValidationStep(bn_mlp()))
    assert {"mode.train_in_eval", "mode.bn_updated_in_eval"} <= codes(trainer, Severity.ERROR)
    finding = the(trainer, "mode.train_in_eval")
    assert finding.evidence["when"] == "end" and finding.evidence["batch_idx"] == 0
    assert {"net.1 (BatchNorm1d)", "net.3 (Dropout)"} <= set(finding.evidence["modules"])
    assert "`net.1`, `net.3`" in finding.message
    assert the(trainer, "mode.bn_updated_in_eval").evidence["modules"] == ["net.1"]
    assert "mode.params_changed_in_eval" not in codes(trainer)


@pytest.mark.parametrize(
    "options",
    [{}, {"val_check_interval": 0.5}, {"num_sanity_val_steps": 0}, {"inference_mode": False}],
    ids=["default", "mid_epoch_validation", "no_sanity_check", "no_inference_mode"],
)
def test_healthy_dropout_batchnorm_mlp_is_quiet(make_trainer: Any, options: dict[str, Any]) -> None:
    trainer = fit(make_trainer, Classifier(bn_mlp()), **options)
    assert trainer.current_epoch == 2
    assert problems(trainer) == []


class BatchNormBackInTrainMode(Classifier):
    def on_validation_epoch_start(self) -> None:
        self.net[1].train()


def test_one_batchnorm_switched_to_train_in_a_validation_hook(make_trainer: Any) -> None:
    trainer = fit(make_trainer, BatchNormBackInTrainMode(bn_mlp()), max_epochs=1)
    finding = the(trainer, "mode.train_in_eval")
    assert finding.evidence["modules"] == ["net.1 (BatchNorm1d)"]
    assert finding.evidence["when"] == "start"
    assert "`net.1` (normalization)" in finding.message
    assert "mode.bn_updated_in_eval" in codes(trainer, Severity.ERROR)


class ChangesWeightsInValidation(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        with torch.no_grad():
            self.net[4].bias.add_(1.0)


def test_weights_modified_in_validation_step(make_trainer: Any) -> None:
    trainer = fit(make_trainer, ChangesWeightsInValidation(bn_mlp()), max_epochs=1)
    finding = the(trainer, "mode.params_changed_in_eval")
    assert finding.severity is Severity.ERROR
    assert finding.evidence["tensors"] == ["net.4.bias"]
    assert "`net.4`" in finding.message
    assert codes(trainer, Severity.WARNING) == {"mode.params_changed_in_eval"}


class ChangesWeightsOnLastBatch(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if batch_idx == 2:  # the last of the three validation batches
            with torch.no_grad():
                self.net[0].weight.mul_(0.5)


def test_weights_modified_late_in_validation_are_caught_by_the_last_batch_comparison(make_trainer: Any) -> None:
    trainer = fit(make_trainer, ChangesWeightsOnLastBatch(bn_mlp()), max_epochs=1, num_sanity_val_steps=0)
    assert the(trainer, "mode.params_changed_in_eval").evidence["tensors"] == ["net.0.weight"]


class ValidationStream(IterableDataset):
    """Wine's validation samples as a stream: the loop's length, hence its last batch, is unknown."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return zip(*wine_tensors("val"), strict=True)


def test_weights_modified_in_validation_of_unknown_length_are_caught_after_the_first_batch(
    make_trainer: Any,
) -> None:
    pl.seed_everything(0)
    trainer = make_trainer(callbacks=[ModeGuardCallback()], max_epochs=1, num_sanity_val_steps=0)
    with sanity_warnings():
        trainer.fit(ChangesWeightsInValidation(bn_mlp()), wine_loaders()[0], DataLoader(ValidationStream(), 16))
    finding = the(trainer, "mode.params_changed_in_eval")
    assert finding.evidence["tensors"] == ["net.4.bias"] and finding.evidence["batches"] == 1


class ProbeWithoutRestore(Classifier):
    def on_train_epoch_end(self) -> None:
        self.eval()  # e.g. a probe that computes a statistic and forgets self.train()


class ProbeWithRestore(Classifier):
    def on_train_epoch_end(self) -> None:
        was_training = self.training
        self.eval()
        self.train(was_training)


class EvalInValidationHook(Classifier):
    def on_validation_epoch_end(self) -> None:
        self.eval()  # undone by Lightning, which restores every module's mode after validation


def test_probe_leaving_model_in_eval_mode_during_training(make_trainer: Any) -> None:
    trainer = fit(make_trainer, ProbeWithoutRestore(bn_mlp()))
    finding = the(trainer, "mode.eval_in_train")
    assert finding.severity is Severity.WARNING
    assert finding.epoch == 1 and finding.evidence["batch_idx"] == 0
    assert {"net.1 (BatchNorm1d)", "net.3 (Dropout)"} == set(finding.evidence["modules"])
    assert problems(trainer) == [finding]


@pytest.mark.parametrize("model_class", [ProbeWithRestore, EvalInValidationHook])
def test_restored_probe_and_eval_in_validation_hook_are_quiet(make_trainer: Any, model_class: type) -> None:
    trainer = fit(make_trainer, model_class(bn_mlp()))
    assert problems(trainer) == []


class DeliberatelyFrozenBatchNorm(Classifier):
    """The usual ways of freezing BatchNorm statistics for fine-tuning."""

    def __init__(self, net: nn.Module, how: str) -> None:
        super().__init__(net)
        self.how = how
        if how == "before_fit":
            self.net[1].eval()

    def on_train_start(self) -> None:
        if self.how == "on_train_start":
            self.net[1].eval()

    def on_train_epoch_start(self) -> None:
        if self.how == "every_epoch" or (self.how == "from_epoch_1" and self.current_epoch >= 1):
            self.net[1].eval()

    def train(self, mode: bool = True) -> DeliberatelyFrozenBatchNorm:
        super().train(mode)
        if self.how == "override_train":
            self.net[1].eval()
        return self


@pytest.mark.parametrize("how", ["before_fit", "on_train_start", "every_epoch", "from_epoch_1", "override_train"])
def test_deliberately_frozen_batchnorm_is_quiet(make_trainer: Any, how: str) -> None:
    model = DeliberatelyFrozenBatchNorm(bn_mlp(), how)
    if how == "override_train":
        model.train()  # as a training script or framework would; Lightning never calls it
    trainer = fit(make_trainer, model, max_epochs=3)
    assert problems(trainer) == []
    assert not model.net[1].training and model.net[3].training


class NoisyHead(nn.Module):
    """Dropout that ignores the mode: the bug."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.dropout(x, 0.3, training=True))


def noisy_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(13, 32), nn.BatchNorm1d(32), nn.ReLU(), NoisyHead())


@pytest.mark.parametrize("sanity_steps", [2, 0])
def test_dropout_that_ignores_the_mode_makes_evaluation_random(make_trainer: Any, sanity_steps: int) -> None:
    trainer = fit(make_trainer, Classifier(noisy_mlp()), max_epochs=1, num_sanity_val_steps=sanity_steps)
    finding = the(trainer, "mode.stochastic_eval")
    assert finding.severity is Severity.ERROR
    assert finding.evidence["relative_difference"] > 0.05
    assert finding.evidence["sources"] == [{"module": "net.3", "type": "NoisyHead"}]
    assert "`net.3` (NoisyHead)" in finding.message
    assert finding.stage == "val"
    assert "mode.train_in_eval" not in codes(trainer)


class MonteCarloDropout(Classifier):
    """MC dropout: dropout layers stay active in evaluation on purpose, BatchNorm does not."""

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.train()


@pytest.mark.parametrize("model", [MonteCarloDropout(bn_mlp(0.3)), Classifier(noisy_mlp())], ids=["mc", "noisy"])
def test_intentional_stochastic_eval_is_quiet_with_the_option(make_trainer: Any, model: Classifier) -> None:
    trainer = fit(make_trainer, model, ModeGuardCallback(allow_stochastic_eval=True), max_epochs=1)
    assert problems(trainer) == []


def test_mc_dropout_without_the_option_is_reported(make_trainer: Any) -> None:
    trainer = fit(make_trainer, MonteCarloDropout(bn_mlp(0.3)), max_epochs=1)
    assert the(trainer, "mode.train_in_eval").evidence["modules"] == ["net.3 (Dropout)"]
    assert "mode.bn_updated_in_eval" not in codes(trainer)


class GradInValidation(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        with torch.enable_grad():
            super().validation_step(batch, batch_idx)


def test_autograd_enabled_in_validation_is_info(make_trainer: Any) -> None:
    trainer = fit(make_trainer, GradInValidation(bn_mlp()), max_epochs=1)
    assert the(trainer, "mode.grad_in_eval").severity is Severity.INFO
    assert problems(trainer) == []


def test_no_grad_in_default_validation(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Classifier(bn_mlp()), max_epochs=1)
    assert "mode.grad_in_eval" not in codes(trainer)


# ---- re-parametrisation in forward (re-masking) is not a weight change -----------------------


def causal_mask(conv: nn.Conv2d) -> Tensor:
    """PixelCNN's type-A mask: each output sees only the pixels above and left of the kernel's centre."""
    mask = torch.ones_like(conv.weight)
    centre = conv.kernel_size[0] // 2
    mask[:, :, centre, centre:] = 0
    mask[:, :, centre + 1 :] = 0
    return mask


class MaskedConvolution(nn.Module):
    """The UvA PixelCNN tutorial's layer: it re-masks its CHILD's weight in place at every call."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 5, padding=2)
        self.register_buffer("mask", causal_mask(self.conv))

    def forward(self, x: Tensor) -> Tensor:
        self.conv.weight.data *= self.mask
        return self.conv(x)


def zero_masked_weights(conv: nn.Conv2d, mask: Tensor) -> None:
    with torch.no_grad():
        conv.weight.masked_fill_(mask == 0, 0.0)


class HelperMaskedConvolution(MaskedConvolution):
    """Re-masks through a helper function, with ``masked_fill_`` under ``no_grad``."""

    def forward(self, x: Tensor) -> Tensor:
        zero_masked_weights(self.conv, self.mask)
        return self.conv(x)


def pre_hook_masked(channels_in: int, channels_out: int) -> nn.Module:
    """A plain convolution re-masked by a forward pre-hook holding its weight (no masking code in any forward)."""
    conv = nn.Conv2d(channels_in, channels_out, 5, padding=2)
    weight = conv.weight
    conv.register_buffer("mask", causal_mask(conv))

    def re_mask(module: nn.Module, args: Any) -> None:
        weight.data.mul_(module.mask)

    conv.register_forward_pre_hook(re_mask)
    return conv


def pruned(channels_in: int, channels_out: int) -> nn.Module:
    conv = nn.Conv2d(channels_in, channels_out, 5, padding=2)
    return prune.custom_from_mask(conv, "weight", causal_mask(conv))


class Masking(nn.Module):
    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def parametrized(channels_in: int, channels_out: int) -> nn.Module:
    conv = nn.Conv2d(channels_in, channels_out, 5, padding=2)
    return parametrize.register_parametrization(conv, "weight", Masking(causal_mask(conv)))


def weight_normalised(channels_in: int, channels_out: int) -> nn.Module:
    return parametrizations.weight_norm(nn.Conv2d(channels_in, channels_out, 5, padding=2))


MASKED_LAYERS = {
    "child-data-imul": MaskedConvolution,
    "helper-masked-fill": HelperMaskedConvolution,
    "forward-pre-hook": pre_hook_masked,
    "prune": pruned,
    "parametrize": parametrized,
    "weight-norm": weight_normalised,
}


class PixelClassifier(pl.LightningModule):
    """Two re-masked convolutions in a ModuleList (grandchildren), BatchNorm, a linear head. Like the UvA PixelCNN, the
    steps call ``self.forward(x)``: no hook of the LightningModule runs, only those of the modules it calls.

    ``leak`` is what else changes the weights during validation (the bugs next to the masking).
    """

    def __init__(self, layer: Any = MaskedConvolution, leak: str = "none") -> None:
        super().__init__()
        self.layers = nn.ModuleList([layer(3, 8), layer(8, 8)])
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)
        self.leak = leak

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(self.norm(x).mean((2, 3)))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.forward(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.leak == "train":
            self.train()
        loss = F.cross_entropy(self.forward(batch[0]), batch[1])
        self.log("val_loss", loss)
        if self.leak == "optimizer-step":  # test-time training by mistake
            with torch.enable_grad():
                F.cross_entropy(self.forward(batch[0]), batch[1]).backward()
            optimizer = self.optimizers()
            optimizer.step()  # type: ignore[union-attr]
            optimizer.zero_grad()  # type: ignore[union-attr]
        elif self.leak == "step-write":
            with torch.no_grad():
                self.layers[0].conv.weight.add_(1e-3)

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.leak == "hook-write" and batch_idx == 0:
            with torch.no_grad():
                self.layers[1].conv.weight.mul_(0.5)  # keeps the masked zeros at zero: only a replay tells

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class MaskedInOwnForward(PixelClassifier):
    """The LightningModule's own forward re-masks its grandchildren's weights (called as ``self(x)``)."""

    def __init__(self) -> None:
        super().__init__(lambda channels_in, channels_out: nn.Conv2d(channels_in, channels_out, 5, padding=2))
        for layer in self.layers:
            layer.register_buffer("mask", causal_mask(layer))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            layer.weight.data = layer.weight.data * layer.mask
        return super().forward(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))


def digit_image_loaders() -> tuple[DataLoader, DataLoader]:
    train, val = (DigitImages(T.ToTensor(), split=split, size=16) for split in ("train", "val"))
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64)  # type: ignore[arg-type]


def fit_pixels(
    make_trainer: Any, model: pl.LightningModule, callbacks: list[pl.Callback], **options: Any
) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    options = {"max_epochs": 2, "limit_train_batches": 8, "limit_val_batches": 2, **options}
    trainer = make_trainer(callbacks=callbacks, **options)
    with sanity_warnings():
        trainer.fit(model, *digit_image_loaders())
    return trainer


@pytest.mark.parametrize("layer", list(MASKED_LAYERS.values()), ids=list(MASKED_LAYERS))
def test_weights_re_masked_wherever_it_happens_stay_quiet_under_strict(make_trainer: Any, layer: Any) -> None:
    model = PixelClassifier(layer)
    trainer = fit_pixels(make_trainer, model, [ModeGuardCallback(strict=True)])  # an ERROR would raise
    assert trainer.current_epoch == 2 and problems(trainer) == []
    if layer in (MaskedConvolution, HelperMaskedConvolution):
        weight, mask = model.layers[0].conv.weight, model.layers[0].mask
        assert bool((weight[mask == 0] == 0).all())  # the last forward re-masked: the case is not vacuous


def test_weights_re_masked_by_the_lightning_modules_own_forward_stay_quiet(make_trainer: Any) -> None:
    trainer = fit_pixels(make_trainer, MaskedInOwnForward(), [ModeGuardCallback(strict=True)])
    assert problems(trainer) == []


@pytest.mark.parametrize("leak", ["step-write", "optimizer-step", "hook-write"])
def test_weight_changes_next_to_re_masking_are_still_errors(make_trainer: Any, leak: str) -> None:
    options = {"inference_mode": False} if leak == "optimizer-step" else {}
    trainer = fit_pixels(make_trainer, PixelClassifier(leak=leak), [ModeGuardCallback()], max_epochs=1, **options)
    finding = the(trainer, "mode.params_changed_in_eval")
    assert finding.severity is Severity.ERROR and finding.evidence["forward_replayed"] is True
    changed = {"step-write": {"layers.0.conv.weight"}, "hook-write": {"layers.1.conv.weight"}}.get(leak)
    assert changed is None or set(finding.evidence["tensors"]) == changed
    assert "does not make this change" in finding.message


def test_batchnorm_updated_next_to_re_masking_is_still_an_error(make_trainer: Any) -> None:
    trainer = fit_pixels(make_trainer, PixelClassifier(leak="train"), [ModeGuardCallback()], max_epochs=1)
    assert {"mode.train_in_eval", "mode.bn_updated_in_eval"} <= codes(trainer, Severity.ERROR)
    assert the(trainer, "mode.bn_updated_in_eval").evidence["modules"] == ["norm"]
    assert "mode.params_changed_in_eval" not in codes(trainer)  # the weights only changed by the re-masking


@pytest.mark.parametrize("layer", [MaskedConvolution, HelperMaskedConvolution], ids=["data-imul", "masked-fill"])
def test_re_masking_replay_leaves_the_weights_bit_identical(
    make_trainer: Any, monkeypatch: pytest.MonkeyPatch, layer: Any
) -> None:
    replays: list[bool] = []
    replay = ModeGuardCallback._rewritten_by_forward

    def counted(self: ModeGuardCallback, *args: Any) -> bool:
        replays.append(replay(self, *args))
        return replays[-1]

    monkeypatch.setattr(ModeGuardCallback, "_rewritten_by_forward", counted)

    def weights(callbacks: list[pl.Callback]) -> dict[str, Tensor]:
        pl.seed_everything(0, verbose=False)
        model = PixelClassifier(layer)
        fit_pixels(make_trainer, model, callbacks, inference_mode=False)  # in-place writes would count in versions
        return {k: v.clone() for k, v in model.state_dict().items()}

    without, observed = weights([]), weights(default_callbacks())
    assert [k for k in without if not torch.equal(without[k], observed[k])] == []
    assert len(replays) == 3 and all(replays)  # sanity check and two validations: replayed, recognised


def test_the_replay_writes_no_tensor_of_the_user() -> None:
    """Inside ``private_state`` a forward that re-masks (through the module and through a closure holding the
    weight) writes only copies: values, objects and version counters are untouched and a graph that holds the
    weight still runs backward."""
    layer = pre_hook_masked(3, 4)
    layer.register_forward_pre_hook(lambda module, args: zero_masked_weights(module, module.mask))
    x = torch.rand(2, 3, 8, 8)
    loss = layer(x).square().sum()  # the graph holds the weight
    layer.weight.data.add_(1.0)  # the masked entries move (through .data: the graph's version check still passes)
    state = {name: (t, t.clone(), t._version) for name, t in layer.state_dict(keep_vars=True).items()}
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    with torch.no_grad(), private_state(layer, before):
        layer(x)
        assert bool((layer.weight[layer.mask == 0] == 0).all())  # the copy was re-masked
    for name, tensor in layer.state_dict(keep_vars=True).items():
        original, value, version = state[name]
        assert tensor is original and torch.equal(tensor, value) and tensor._version == version
    assert bool((layer.weight[layer.mask == 0] != 0).any())
    loss.backward()  # raises if a tensor saved for backward was written in place
    assert layer.weight.grad is not None


# ---- healthy programs that must stay quiet -----------------------------------------------


def test_healthy_cnn_on_digit_images_is_quiet(make_trainer: Any) -> None:
    pl.seed_everything(0)
    normalize = T.Normalize([0.2] * 3, [0.3] * 3)
    train = DigitImages(T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), normalize]), split="train")
    val = DigitImages(T.Compose([T.ToTensor(), normalize]), split="val")
    trainer = make_trainer(callbacks=[ModeGuardCallback()], max_epochs=2, limit_train_batches=6, limit_val_batches=2)
    trainer.fit(Classifier(SmallCNN(10, width=8)), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, 64))
    trainer.validate(trainer.lightning_module, DataLoader(val, 64))
    assert problems(trainer) == []


class TwoValLoaders(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx)


def test_several_val_dataloaders_are_quiet(make_trainer: Any) -> None:
    pl.seed_everything(0)
    train, val = wine_loaders()
    trainer = make_trainer(callbacks=[ModeGuardCallback()], max_epochs=2)
    trainer.fit(TwoValLoaders(bn_mlp()), train, [val, DataLoader(val.dataset, batch_size=7)])
    assert problems(trainer) == []


def test_validate_test_and_predict_alone_are_quiet(make_trainer: Any) -> None:
    model = Classifier(bn_mlp())
    _, val = wine_loaders()
    trainer = make_trainer(callbacks=[ModeGuardCallback()])
    with sanity_warnings() as texts:
        trainer.validate(model, val)
        trainer.test(model, val)
        predictions = trainer.predict(model, DataLoader(wine_tensors("val")[0], batch_size=16))
    assert predictions is not None and len(predictions) == 3
    assert problems(trainer) == [] and texts == []
    assert model.training  # Lightning restored the mode; we never touch it


def test_validate_alone_reports_train_in_eval_and_runs_the_stochastic_check(make_trainer: Any) -> None:
    _, val = wine_loaders()
    trainer = make_trainer(callbacks=[ModeGuardCallback()])
    with sanity_warnings():
        trainer.validate(TrainInValidationStep(bn_mlp()), val)
        assert {"mode.train_in_eval", "mode.bn_updated_in_eval"} <= codes(trainer, Severity.ERROR)
        trainer.test(Classifier(noisy_mlp()), val)  # each run reports its own findings
    assert codes(trainer, Severity.ERROR) == {"mode.stochastic_eval"}
    assert the(trainer, "mode.stochastic_eval").stage == "test"


def test_ema_weight_swap_around_validation_is_quiet(make_trainer: Any) -> None:
    """Lightning's WeightAveraging swaps the averaged weights in before and out after each validation."""
    weight_averaging = getattr(pl.callbacks, "WeightAveraging", None)
    if weight_averaging is None:
        pytest.skip("WeightAveraging is new in lightning 2.6")
    trainer = fit(make_trainer, Classifier(bn_mlp()), max_epochs=2, callbacks=[weight_averaging(), ModeGuardCallback()])
    assert problems(trainer) == []


class TakesTwoInputs(Classifier):
    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return self.net(x) * scale

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x, torch.ones(())), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x, torch.ones(())), y))


def test_forward_with_other_arguments_is_skipped_quietly(make_trainer: Any) -> None:
    trainer = fit(make_trainer, TakesTwoInputs(bn_mlp()), max_epochs=1)
    assert codes(trainer) == set()


class StatefulForward(Classifier):
    """Each call shifts the output (a cache, a counter): different outputs, but not random."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.calls = 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        return {"logits": self.net(x) + self.calls}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0])["logits"], batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0])["logits"], batch[1]))


def test_stateful_but_deterministic_forward_is_not_stochastic(make_trainer: Any) -> None:
    trainer = fit(make_trainer, StatefulForward(bn_mlp()), max_epochs=1)
    assert codes(trainer) == set()


def test_stochastic_check_has_no_observer_effect(make_trainer: Any) -> None:
    """The random model takes the three-pass path; the seeded fit must still be bit-identical."""

    def weights(callbacks: list[pl.Callback]) -> dict[str, Tensor]:
        pl.seed_everything(3)
        model = Classifier(noisy_mlp())
        trainer = make_trainer(callbacks=callbacks, max_epochs=2)
        with sanity_warnings():
            trainer.fit(model, *wine_loaders())
        return {k: v.clone() for k, v in model.state_dict().items()}

    without, with_guard = weights([]), weights([ModeGuardCallback()])
    assert all(torch.equal(without[k], with_guard[k]) for k in without)


def test_strict_raises_on_train_in_eval(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[ModeGuardCallback(strict=True)], max_epochs=1)
    with sanity_warnings(), pytest.raises(SanityError, match="mode.train_in_eval"):
        trainer.fit(TrainInValidationStep(bn_mlp()), *wine_loaders())


# ---- configuration and pure helpers --------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"allow_stochastic_eval": "yes"}, "allow_stochastic_eval"), ({"stochastic_samples": 0}, "stochastic_samples")],
)
def test_bad_configuration_fails_fast(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ModeGuardCallback(**kwargs)


class DropPath(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class TrainingOnlyNoise(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + torch.randn_like(x) if self.training else x


def test_mode_kind_of_known_and_custom_modules() -> None:
    assert mode_kind(nn.Dropout()) == DROPOUT and mode_kind(nn.AlphaDropout()) == DROPOUT
    assert mode_kind(nn.BatchNorm2d(3)) == NORMALIZATION and mode_kind(nn.InstanceNorm1d(3, track_running_stats=True))
    assert mode_kind(nn.BatchNorm1d(3, track_running_stats=False)) is None  # batch statistics in both modes
    assert mode_kind(nn.InstanceNorm2d(3)) is None
    assert mode_kind(nn.LSTM(3, 3, num_layers=2, dropout=0.1)) == DROPOUT and mode_kind(nn.LSTM(3, 3)) is None
    assert mode_kind(DropPath()) == STOCHASTIC
    assert mode_kind(TrainingOnlyNoise()) == CUSTOM
    assert mode_kind(nn.Linear(2, 2)) is None and mode_kind(nn.Sequential()) is None


def test_describe_modules_collapses_many_names() -> None:
    assert describe_modules(["net.1", "net.3"]) == "`net.1`, `net.3`"
    assert describe_modules([f"backbone.layer{i}.bn" for i in range(5)]) == "5 modules under `backbone`"
    assert describe_modules(["a.x", "b.x", "c.x", "d.x"]) == "4 modules across the model"
    assert describe_modules([""]) == "`<root>`"


def test_innermost_sources_keeps_the_deepest_module() -> None:
    assert innermost_sources(["net.3.drop", "net.3", "net", ""]) == ["net.3.drop"]
    assert innermost_sources(["", "head"]) == ["head"]
    assert innermost_sources([""]) == [""]


def test_relative_difference_and_checksums() -> None:
    a = torch.tensor([1.0, float("nan"), 3.0])
    assert relative_difference([a], [a.clone()]) == 0.0
    assert relative_difference([a], [a[:2]]) == float("inf")
    assert relative_difference([a], [a + 0.3]) == pytest.approx(0.3 / 3.3)
    weight, bias, steps = torch.ones(3, 2), torch.zeros(3), torch.tensor(5)
    before = Checksums.of([("w", weight), ("b", bias), ("n", steps)])
    assert before.changed(Checksums.of([("w", weight), ("b", bias), ("n", steps)])) == []
    bias += 1
    steps += 1
    assert before.changed(Checksums.of([("w", weight), ("b", bias), ("n", steps)])) == ["b", "n"]


def test_checksums_see_one_changed_element_of_a_large_tensor() -> None:
    weight = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    before = Checksums.of([("w", weight)])
    weight[3, 7] = -weight[3, 7]  # a sign flip leaves every norm of the tensor unchanged
    assert before.changed(Checksums.of([("w", weight)])) == ["w"]
    weight[3, 7] = -weight[3, 7]
    assert before.changed(Checksums.of([("w", weight)])) == []
    weight[100, 200] += 1e-3  # relative change of the tensor's L1 norm: 5e-9
    assert before.changed(Checksums.of([("w", weight)])) == ["w"]
