"""ModelChecksCallback: step-zero checks on real fits, each trigger with a healthy twin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import only, quiet
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T

import lightning_sanity as ls
from lightning_sanity import Finding, ModelChecksCallback, Severity
from lightning_sanity.demos import GAN, Classifier, DigitImages, SmallCNN, digits_tensors, wine_tensors
from lightning_sanity.observe import StepObserver, own_forward

LossFn = Callable[[Tensor, Tensor], Tensor]


class Net(pl.LightningModule):
    """``loss_fn(self(x), y)`` around ``net``: the variable part of every program below."""

    def __init__(self, net: nn.Module, loss_fn: LossFn = F.cross_entropy) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, x: Any) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(make_trainer: Any, model: pl.LightningModule, loader: DataLoader, **options: Any) -> list[Finding]:
    pl.seed_everything(0)
    callback = ModelChecksCallback(**options)
    trainer = make_trainer(callbacks=[callback], max_steps=2, limit_val_batches=0)
    trainer.fit(model, loader)
    assert not model._forward_pre_hooks and not model._forward_hooks, "hooks left on the module"
    assert all(not m._forward_pre_hooks for m in model.children())
    return callback.findings


def digit_images(batch_size: int = 32, channels: int = 3) -> DataLoader:
    steps = [T.Grayscale()] if channels == 1 else []
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize([0.2] * channels, [0.3] * channels)])
    return DataLoader(DigitImages(transform), batch_size=batch_size, shuffle=True)


def tabular(features: Tensor, targets: Tensor, batch_size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(features, targets), batch_size=batch_size, shuffle=True)


def digits(batch_size: int = 32) -> DataLoader:
    return tabular(*digits_tensors(), batch_size=batch_size)


def mlp(inputs: int = 64, outputs: int = 10, *tail: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, outputs), *tail)


def nll_of_log(probabilities: Tensor, targets: Tensor) -> Tensor:
    return F.nll_loss(torch.log(probabilities), targets)


# ---- output.activated --------------------------------------------------------------------------------------------


def test_softmax_then_cross_entropy_is_caught_at_step_zero(make_trainer: Any) -> None:
    model = Net(nn.Sequential(SmallCNN(10, width=8), nn.Softmax(dim=1)))
    finding = only(fit(make_trainer, model, digit_images()), "output.activated")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["identified_loss"] == "cross_entropy"
    assert finding.evidence["returned_loss"] == pytest.approx(finding.evidence["identified_value"], rel=1e-4)
    assert finding.evidence["as_probabilities"] != pytest.approx(finding.evidence["returned_loss"], rel=1e-4)
    assert "softmax" in finding.message


def test_softmax_then_nll_of_log_is_healthy(make_trainer: Any) -> None:
    quiet(fit(make_trainer, Net(nn.Sequential(SmallCNN(10, width=8), nn.Softmax(dim=1)), nll_of_log), digit_images()))


def test_softmax_then_nll_without_log_is_caught(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(mlp(64, 10, nn.Softmax(dim=1)), F.nll_loss), digits()), "output.activated")
    assert finding.evidence["identified_loss"] == "nll" and finding.evidence["returned_loss"] < 0


def binary_digits() -> DataLoader:
    features, labels = digits_tensors()
    return tabular(features, (labels >= 5).float().unsqueeze(1))


def test_sigmoid_then_bce_with_logits_is_caught(make_trainer: Any) -> None:
    model = Net(mlp(64, 1, nn.Sigmoid()), F.binary_cross_entropy_with_logits)
    finding = only(fit(make_trainer, model, binary_digits()), "output.activated")
    assert "sigmoid" in finding.message and finding.evidence["identified_loss"] == "bce_with_logits"


def test_sigmoid_then_bce_and_logits_with_bce_with_logits_are_healthy(make_trainer: Any) -> None:
    quiet(fit(make_trainer, Net(mlp(64, 1, nn.Sigmoid()), F.binary_cross_entropy), binary_digits()))
    quiet(fit(make_trainer, Net(mlp(64, 1), F.binary_cross_entropy_with_logits), binary_digits()))


def test_sigmoid_on_a_multi_class_cross_entropy_head_is_caught(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(mlp(64, 10, nn.Sigmoid())), digits()), "output.activated")
    assert finding.evidence["activation"] == "sigmoid" and finding.evidence["identified_loss"] == "cross_entropy"
    assert finding.evidence["loss_floor"] == pytest.approx(np.log(9 + np.e) - 1)
    assert "last op of `Net` is a sigmoid" in finding.message


def test_relu_before_cross_entropy_is_caught_from_the_graph(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(mlp(64, 10, nn.ReLU())), digits()), "output.activated")
    assert finding.evidence["activation"] == "relu" and "ReLU" in finding.message


def test_relu_on_an_all_zero_head_is_named_from_the_graph(make_trainer: Any) -> None:
    head = nn.Linear(32, 10)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, -1.0)  # every output exactly 0: values alone cannot show the ReLU
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), head, nn.ReLU())
    assert only(fit(make_trainer, Net(net), digits()), "output.activated").evidence["activation"] == "relu"


def test_raw_single_logits_inside_zero_one_are_not_read_as_sigmoid(make_trainer: Any) -> None:
    """An untrained single-logit head whose every output lies in [0, 1] (a positive bias, small weights): the graph
    shows a linear layer last, so the logits are logits, however their values fall."""
    net = mlp(64, 1, nn.Tanh(), nn.Linear(1, 1))
    nn.init.normal_(net[-1].weight, std=0.01)
    nn.init.constant_(net[-1].bias, 0.5)
    model = Net(net, F.binary_cross_entropy_with_logits)
    with torch.no_grad():
        outputs = net(digits_tensors()[0])
    assert bool(((outputs >= 0) & (outputs <= 1)).all())  # what the value ranges alone called a sigmoid
    findings = fit(make_trainer, model, binary_digits())
    quiet(findings)


def test_label_smoothing_and_class_weights_are_identified_and_healthy(make_trainer: Any) -> None:
    smoothed = Net(SmallCNN(10, width=8), nn.CrossEntropyLoss(label_smoothing=0.1))
    quiet(fit(make_trainer, smoothed, digit_images()))
    weights = torch.linspace(0.5, 2.0, 10)
    weighted = Net(SmallCNN(10, width=8), nn.CrossEntropyLoss(weight=weights))
    quiet(fit(make_trainer, weighted, digit_images()))
    # The same weights on probabilities are still recognised (the loss module's weight is a candidate).
    activated = Net(nn.Sequential(SmallCNN(10, width=8), nn.Softmax(dim=1)), nn.CrossEntropyLoss(weight=weights))
    finding = only(fit(make_trainer, activated, digit_images()), "output.activated")
    assert "weight" in finding.evidence["identified_loss"]


def test_custom_loss_says_nothing(make_trainer: Any) -> None:
    def focal(logits: Tensor, targets: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]
        return (-((1 - log_p.exp()) ** 2) * log_p).mean()

    quiet(fit(make_trainer, Net(nn.Sequential(SmallCNN(10, width=8), nn.Softmax(dim=1)), focal), digit_images()))


# ---- target.shape ------------------------------------------------------------------------------------------------


def wine_regression(target_column: bool) -> DataLoader:
    """Predict wine feature 0 (alcohol, standardised) from the other twelve."""
    features, _ = wine_tensors()
    target = features[:, :1] if target_column else features[:, 0]
    return tabular(features[:, 1:], target, batch_size=16)


def test_column_targets_against_flat_outputs_are_caught(make_trainer: Any) -> None:
    model = Net(mlp(12, 1, nn.Flatten(0)), F.mse_loss)
    finding = only(fit(make_trainer, model, wine_regression(target_column=True)), "target.shape")
    assert finding.evidence["output_shape"] == [16] and finding.evidence["target_shape"] == [16, 1]
    assert finding.evidence["broadcast_shape"] == [16, 16]


def test_column_outputs_against_flat_targets_are_caught(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(mlp(12, 1), F.l1_loss), wine_regression(target_column=False)), "target.shape")
    assert finding.evidence["broadcast_shape"] == [16, 16] and finding.evidence["identified_loss"] == "l1"


def test_class_indices_regressed_by_every_output_are_caught(make_trainer: Any) -> None:
    features, labels = digits_tensors()
    model = Net(mlp(64, 10), F.mse_loss)
    finding = only(fit(make_trainer, model, tabular(features, labels.float().unsqueeze(1))), "target.shape")
    assert finding.evidence["output_shape"] == [32, 10] and finding.evidence["target_shape"] == [32, 1]


def test_class_indices_made_a_column_inside_the_step_are_caught(make_trainer: Any) -> None:
    def column_mse(output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target.float().unsqueeze(1))  # [N, 3] outputs against [N, 1] class indices

    features, labels = wine_tensors()
    model = Net(mlp(13, 3), column_mse)
    finding = only(fit(make_trainer, model, tabular(features, labels, batch_size=16)), "target.shape")
    assert finding.evidence["output_shape"] == [16, 3] and finding.evidence["target_shape"] == [16]
    assert finding.evidence["broadcast_shape"] == [16, 3] and finding.evidence["identified_loss"] == "mse"


def test_targets_reshaped_inside_the_step_are_caught(make_trainer: Any) -> None:
    def column_targets_mse(output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target.view(-1, 1))  # the batch's shapes agree; the step breaks them

    model = Net(mlp(12, 1, nn.Flatten(0)), column_targets_mse)
    finding = only(fit(make_trainer, model, wine_regression(target_column=False)), "target.shape")
    assert finding.evidence["broadcast_shape"] == [16, 16] and "reshaped one side" in finding.message


def test_matching_regression_shapes_are_healthy(make_trainer: Any) -> None:
    quiet(fit(make_trainer, Net(mlp(12, 1), F.mse_loss), wine_regression(target_column=True)))
    quiet(fit(make_trainer, Net(mlp(12, 1, nn.Flatten(0)), F.smooth_l1_loss), wine_regression(target_column=False)))


# ---- loss.init_high ----------------------------------------------------------------------------------------------


def normal_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=1.0)
    return module


def test_normal_init_on_every_layer_is_caught(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(normal_init(mlp())), digits()), "loss.init_high")
    assert finding.evidence["ratio"] > 2
    assert finding.evidence["expected_at_init"] == pytest.approx(2.302585, rel=1e-5)


def test_zero_initialised_head_is_healthy(make_trainer: Any) -> None:
    net = SmallCNN(10, width=8)
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    quiet(fit(make_trainer, Net(net), digit_images()))
    flat = mlp()
    nn.init.zeros_(flat[-1].weight)
    nn.init.zeros_(flat[-1].bias)
    quiet(fit(make_trainer, Net(flat), digits()))


# ---- model.batch_mixing ------------------------------------------------------------------------------------------


class RowTransformer(nn.Module):
    """Digits as 8 tokens (rows) of 8 pixels; ``scramble`` runs a sequence-first encoder and reshapes its
    ``(seq, batch, feat)`` output as if it were ``(batch, seq, feat)`` instead of transposing it."""

    def __init__(self, scramble: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        self.scramble, self.batch_first = scramble, batch_first
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x.view(len(x), 8, 8))
        if self.batch_first:
            hidden = self.encoder(tokens)
        else:
            hidden = self.encoder(tokens.transpose(0, 1))
            hidden = hidden.reshape(tokens.shape) if self.scramble else hidden.transpose(0, 1)
        return self.head(hidden.mean(dim=1))


def test_scrambled_batch_and_sequence_dims_are_caught(make_trainer: Any) -> None:
    model = Net(RowTransformer(scramble=True, batch_first=False))
    finding = only(fit(make_trainer, model, digits()), "model.batch_mixing")
    assert finding.severity is Severity.ERROR and finding.evidence["leaked_gradient_share"] > 0
    assert "`Net`" in finding.message
    assert finding.evidence["mixes_after"] == "net.encoder" and finding.evidence["mixes_before"] == "net.head"


def test_transformers_over_sequences_are_healthy(make_trainer: Any) -> None:
    quiet(fit(make_trainer, Net(RowTransformer(batch_first=True)), digits()))
    quiet(fit(make_trainer, Net(RowTransformer(batch_first=False)), digits()))


class BatchCentred(nn.Module):
    """Centres the features on the batch mean: a mean over the wrong axis."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x - x.mean(dim=0))


def test_mean_over_the_batch_axis_is_caught_and_set_models_can_opt_out(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(BatchCentred()), digits()), "model.batch_mixing")
    assert finding.evidence["mixes_after"] is None and finding.evidence["mixes_before"] == "net.net.0"
    quiet(fit(make_trainer, Net(BatchCentred()), digits(), allow_batch_mixing=True))


class TokenModel(nn.Module):
    """Digits' 64 pixel intensities (0-16) as token ids; ``pool_batch`` averages over the batch instead of tokens."""

    def __init__(self, pool_batch: bool = False) -> None:
        super().__init__()
        self.pool_batch = pool_batch
        self.embed = nn.Embedding(17, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, tokens: Tensor) -> Tensor:
        embedded = self.embed(tokens)
        pooled = embedded.mean(dim=1)
        if self.pool_batch:
            pooled = pooled + embedded.mean(dim=(0, 1))
        return self.head(pooled)


def token_digits() -> DataLoader:
    from sklearn.datasets import load_digits

    data = load_digits()
    return tabular(torch.as_tensor(data.data, dtype=torch.long), torch.as_tensor(data.target))


def test_integer_inputs_mixing_is_caught_by_substitution(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(TokenModel(pool_batch=True)), token_digits()), "model.batch_mixing")
    assert finding.evidence["substitution_change"] > 0
    quiet(fit(make_trainer, Net(TokenModel()), token_digits()))


class Contrastive(pl.LightningModule):
    """SimCLR-style: ``forward`` embeds each sample; the in-batch negatives are in the loss only."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = mlp(64, 16)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.encoder(x), dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, _ = batch
        first, second = self(x + 0.1 * torch.randn_like(x)), self(x + 0.1 * torch.randn_like(x))
        similarity = first @ second.T / 0.1
        return F.cross_entropy(similarity, torch.arange(len(x)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_in_batch_negatives_in_the_loss_are_healthy(make_trainer: Any) -> None:
    quiet(fit(make_trainer, Contrastive(), digits()))


class FrozenBackbone(Net):
    """Fine-tuning with a frozen backbone whose BatchNorm stays in eval mode."""

    def __init__(self) -> None:
        super().__init__(SmallCNN(10, width=8))
        self.modes: list[tuple[bool, bool]] = []
        self.backbone = list(self.net)[:-1]
        for layer in self.backbone:
            layer.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        for layer in self.backbone:
            layer.eval()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.modes.append((self.net[1].training, self.net[-1].training))
        return super().training_step(batch, batch_idx)


def test_frozen_batchnorm_fine_tune_is_healthy_and_keeps_its_modes(make_trainer: Any) -> None:
    model = FrozenBackbone()
    quiet(fit(make_trainer, model, digit_images()))
    assert model.modes == [(False, True), (False, True)]


# ---- model.input_independent -------------------------------------------------------------------------------------


class Ignores(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.net = SmallCNN(10, width=8)
        self.register_buffer("constant", torch.zeros(1, 3, 32, 32))

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "times_zero":
            return self.net(x * 0)
        return self.net(self.constant.expand_as(x).detach())


@pytest.mark.parametrize("how", ["times_zero", "constant"])
def test_model_ignoring_its_input_is_caught(make_trainer: Any, how: str) -> None:
    finding = only(fit(make_trainer, Net(Ignores(how)), digit_images()), "model.input_independent")
    assert finding.severity is Severity.ERROR
    assert finding.evidence["input_gradient_abs_max"] == 0 and finding.evidence["output_relative_spread"] == 0


def test_input_through_a_non_differentiable_step_is_not_input_independent(make_trainer: Any) -> None:
    class Rounded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallCNN(10, width=8)

        def forward(self, x: Tensor) -> Tensor:
            return self.net((x > 0).float())

    quiet(fit(make_trainer, Net(Rounded()), digit_images()))


# ---- structures, precision and loops that must not break ---------------------------------------------------------


class DictModel(Net):
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.net(batch["image"])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.loss_fn(self(batch), batch["label"])


def dict_images() -> DataLoader:
    images = DigitImages(T.Compose([T.ToTensor()]))
    return DataLoader([{"image": x, "label": y} for x, y in images], batch_size=32, shuffle=True)


def test_dict_inputs_are_read(make_trainer: Any) -> None:
    only(
        fit(make_trainer, DictModel(nn.Sequential(SmallCNN(10, width=8), nn.Softmax(1))), dict_images()),
        "output.activated",
    )
    quiet(fit(make_trainer, DictModel(SmallCNN(10, width=8)), dict_images()))


class NoForward(pl.LightningModule):
    """No own ``forward``: the step calls ``self.model`` (the observed child)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_child_called_by_a_module_without_forward_is_observed(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, NoForward(BatchCentred()), digits()), "model.batch_mixing")
    assert "`model`" in finding.message


@pytest.mark.parametrize("options", [{"precision": "bf16-mixed"}, {"accumulate_grad_batches": 2}])
def test_precision_and_accumulation_still_find_the_bug(make_trainer: Any, options: dict[str, Any]) -> None:
    pl.seed_everything(0)
    callback = ModelChecksCallback()
    trainer = make_trainer(callbacks=[callback], max_steps=1, limit_val_batches=0, **options)
    trainer.fit(Net(nn.Sequential(SmallCNN(10, width=8), nn.Softmax(dim=1))), digit_images())
    assert [f.code for f in callback.findings] == ["output.activated"]


def test_manual_optimisation_never_crashes(make_trainer: Any) -> None:
    features, labels = wine_tensors()
    findings = fit(make_trainer, GAN(), tabular(features, labels))
    assert [f.code for f in findings] == []


def test_default_callbacks_include_it_and_a_healthy_cnn_is_quiet(make_trainer: Any) -> None:
    callbacks = ls.default_callbacks()
    assert any(isinstance(c, ModelChecksCallback) for c in callbacks)
    assert ls.default_callbacks(model_checks=False) and not any(
        isinstance(c, ModelChecksCallback) for c in ls.default_callbacks(model_checks=False)
    )
    quiet(fit(make_trainer, Classifier(SmallCNN(10, width=8)), digit_images(channels=3)))
    quiet(fit(make_trainer, Net(SmallCNN(10, in_channels=1, width=8)), digit_images(channels=1)))


@pytest.mark.parametrize("samples", [1, 17, 2.0, True])
def test_bad_configuration_fails_fast(samples: Any) -> None:
    with pytest.raises(ValueError, match="samples"):
        ModelChecksCallback(samples=samples)


def test_observer_records_the_users_call_but_not_our_own() -> None:
    model = Classifier(SmallCNN(10, width=8))
    x = torch.randn(4, 3, 32, 32)
    with StepObserver(model) as observer:
        with own_forward():
            model(x[:1])
        output = model(x)
        x.zero_()  # the user's in-place edit after the call does not change the recorded input
    assert len(observer.calls) == 1
    call = observer.model_call
    assert call is not None and call.name == "" and call.returned
    assert call.args[0].shape == (4, 3, 32, 32) and bool(call.args[0].abs().sum() > 0)
    assert torch.equal(call.output, output.detach())
    assert not model._forward_pre_hooks and not model._forward_hooks and not model.net._forward_pre_hooks


def test_observer_removes_its_hooks_when_the_step_raises() -> None:
    model = Classifier(SmallCNN(10, width=8))
    with pytest.raises(RuntimeError), StepObserver(model):
        model(torch.randn(2, 5))
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_batchnorm_without_running_statistics_mixes_by_design(make_trainer: Any) -> None:
    net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32, track_running_stats=False), nn.ReLU(), nn.Linear(32, 10))
    quiet(fit(make_trainer, Net(net), digits()))


class SequenceFirst(nn.Module):
    """Takes ``(seq, batch, feat)`` inputs, as a sequence-first collate (``pad_sequence``) produces them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64), 1, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, rows: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(rows)).mean(dim=0))


def test_sequence_first_inputs_are_healthy(make_trainer: Any) -> None:
    features, labels = digits_tensors()

    def collate(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        x = torch.stack([item[0] for item in items]).view(-1, 8, 8).transpose(0, 1)
        return x, torch.stack([item[1] for item in items])

    loader = DataLoader(TensorDataset(features, labels), batch_size=32, shuffle=True, collate_fn=collate)
    quiet(fit(make_trainer, Net(SequenceFirst()), loader))


def test_lightning_demo_transformer_with_token_ids_runs_quietly(make_trainer: Any) -> None:
    from lightning.pytorch.demos import LightningTransformer

    class Offline(LightningTransformer):
        def prepare_data(self) -> None:  # the demo downloads WikiText2 here; this test brings its own tokens
            pass

    from_digits = token_digits().dataset.tensors[0][:, :16]  # type: ignore[attr-defined]
    loader = DataLoader(TensorDataset(from_digits[:, :-1], from_digits[:, 1:]), batch_size=16, shuffle=True)
    pl.seed_everything(0)
    callback = ModelChecksCallback()
    trainer = make_trainer(callbacks=[callback], max_steps=1, limit_val_batches=0)
    trainer.fit(Offline(vocab_size=17), loader)
    assert [f.code for f in callback.findings] == []


# ---- input.layout_scrambled --------------------------------------------------------------------------------------


def reshaped_not_permuted(image: Any) -> Tensor:
    """The bug: a channels-last (H, W, C) array made channels-first with reshape instead of permute."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).reshape(array.shape[2], array.shape[0], array.shape[1])


def test_channels_last_arrays_reshaped_to_channels_first_are_caught(make_trainer: Any) -> None:
    loader = DataLoader(DigitImages(reshaped_not_permuted), batch_size=32, shuffle=True)
    finding = only(fit(make_trainer, Net(SmallCNN(10, width=8)), loader), "input.layout_scrambled")
    assert finding.severity is Severity.WARNING and finding.evidence["roughness_ratio"] < 0.5
    assert finding.evidence["shape"] == [32, 3, 32, 32]


class Photos(torch.utils.data.Dataset):
    """Random crops of scikit-learn's two bundled natural photos (china, flower), labelled by photo."""

    def __init__(self, transform: Callable[[Any], Tensor]) -> None:
        from PIL import Image
        from sklearn.datasets import load_sample_images

        self.photos = [Image.fromarray(image) for image in load_sample_images().images]
        self.transform = transform

    def __len__(self) -> int:
        return 128

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.photos[index % 2]), index % 2


def test_natural_photos_and_permuted_arrays_are_healthy(make_trainer: Any) -> None:
    crops = T.Compose([T.RandomResizedCrop(32, scale=(0.01, 0.3)), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    quiet(fit(make_trainer, Net(SmallCNN(2, width=8)), DataLoader(Photos(crops), batch_size=16, shuffle=True)))
    native = T.Compose([T.RandomCrop(48), lambda image: torch.from_numpy(np.asarray(image, np.float32) / 255)])
    permuted = T.Compose([native, lambda array: array.permute(2, 0, 1)])
    quiet(fit(make_trainer, Net(SmallCNN(2, width=8)), DataLoader(Photos(permuted), batch_size=16, shuffle=True)))
    scrambled = T.Compose([native, lambda array: array.reshape(3, 48, 48)])
    only(
        fit(make_trainer, Net(SmallCNN(2, width=8)), DataLoader(Photos(scrambled), batch_size=16)),
        "input.layout_scrambled",
    )


def test_collapsed_inputs_with_per_channel_offsets_are_not_read_as_a_scrambled_layout(make_trainer: Any) -> None:
    """The demo's bug: 0-255 Normalize constants after ToTensor give each channel its own offset, -2.1 ± 0.005; that
    is input.collapsed, not a layout problem."""
    collapsed = T.Compose([T.ToTensor(), T.Normalize([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])])
    loader = DataLoader(DigitImages(collapsed, size=12), batch_size=32, shuffle=True)
    quiet(fit(make_trainer, Net(SmallCNN(10, width=8)), loader))


class RaisesAfterForward(Net):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self(batch[0])
        raise RuntimeError("the user's step fails")


def test_hooks_are_removed_when_the_users_step_raises(make_trainer: Any) -> None:
    model = RaisesAfterForward(mlp())
    trainer = make_trainer(callbacks=[ModelChecksCallback()], max_steps=1, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="the user's step fails"):
        trainer.fit(model, digits())
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.children())


def test_observer_keeps_keyword_arguments() -> None:
    class Keywords(nn.Module):
        def forward(self, *, image: Tensor, scale: float) -> Tensor:
            return image * scale

    holder = NoForward(Keywords())
    with StepObserver(holder) as observer:
        holder.model(image=torch.ones(2, 3), scale=2.0)
    call = observer.model_call
    assert call is not None and call.name == "model" and call.args == ()
    assert call.kwargs["scale"] == 2.0 and torch.equal(call.kwargs["image"], torch.ones(2, 3))
    assert torch.equal(call.run(), torch.full((2, 3), 2.0))


# ---- the step-zero passes write nothing the user's step holds ----------------------------------------------------


def blank_scans_standardised_per_image() -> DataLoader:
    """Digits as 1-channel images standardised per image: the 5 % blank scans divide 0 by 0 and are all NaN."""
    pixels, labels = digits_tensors(standardize=False)
    images = pixels.reshape(-1, 1, 8, 8).clone()
    images[::20] = 0.0
    images = (images - images.mean((1, 2, 3), keepdim=True)) / images.std((1, 2, 3), keepdim=True)
    assert 0.04 < float(images.isnan().flatten(1).all(1).float().mean()) < 0.06
    return tabular(images, labels)


def test_nan_inputs_through_batchnorm_do_not_break_the_users_backward(make_trainer: Any) -> None:
    """Issue #23 item 1: the NaN running statistics that BatchNorm saves for its backward compare unequal to
    themselves; a restore that wrote them back in place made the user's loss.backward() raise."""
    model = Net(SmallCNN(10, in_channels=1, width=16))
    fit(make_trainer, model, blank_scans_standardised_per_image())
    assert model.net[1].running_mean.isnan().all()  # the training forward did see the NaN inputs


class Remembers(Net):
    """A forward that keeps its input and counts its calls in a buffer, in eval mode too (a cache, a queue); the
    step reads both after the pack's step-zero passes."""

    def __init__(self) -> None:
        super().__init__(mlp())
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.seen: list[tuple[int, int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.last_input = x
        return self.net(x) + 0 * self.calls

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.batch_input = batch[0]
        return super().training_step(batch, batch_idx)

    def on_before_backward(self, loss: Tensor) -> None:
        self.seen.append((int(self.calls), self.calls._version, self.last_input is self.batch_input))


def test_the_replay_writes_no_buffer_and_rebinds_no_attribute_of_the_model(make_trainer: Any) -> None:
    model = Remembers()
    fit(make_trainer, model, digits())
    assert model.seen == [(1, 1, True), (2, 2, True)]  # as without the pack: one call and one write per step


# ---- odd attributes of losses; losses of other libraries ---------------------------------------------------------


class SmpLikeDiceLoss(nn.modules.loss._Loss):
    """The attributes and the multiclass arithmetic of ``segmentation_models_pytorch.losses.DiceLoss`` (not
    installed here): ``ignore_index=None`` and friends on a ``_Loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.mode, self.classes, self.log_loss, self.from_logits = "multiclass", None, False, True
        self.smooth, self.ignore_index, self.eps = 0.0, None, 1e-7

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        batch, classes = y_true.shape[0], y_pred.shape[1]
        y_pred = y_pred.log_softmax(dim=1).exp().view(batch, classes, -1)
        y_true = F.one_hot(y_true.view(batch, -1), classes).permute(0, 2, 1).type_as(y_pred)
        intersection, cardinality = (y_pred * y_true).sum((0, 2)), (y_pred + y_true).sum((0, 2))
        loss = 1.0 - (2.0 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)
        loss *= (y_true.sum((0, 2)) > 0).to(loss.dtype)
        return loss.mean()


def digit_masks(split: str = "train") -> DataLoader:
    """Digits as 1-channel 8x8 images with a mask per pixel: background 0, the digit's ink 1 + its label."""
    pixels, labels = digits_tensors(split, standardize=False)  # type: ignore[arg-type]
    images = pixels.reshape(-1, 1, 8, 8) / 16
    masks = torch.where(images[:, 0] > 0.4, labels[:, None, None] + 1, 0)
    return DataLoader(TensorDataset(images - 0.3, masks), batch_size=32, shuffle=split == "train")


class Segmenter(pl.LightningModule):
    def __init__(self, ignores_input: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 11, 3, padding=1))
        self.loss = SmpLikeDiceLoss()
        self.ignores_input = ignores_input

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 0 if self.ignores_input else x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.loss(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_a_segmentation_loss_with_ignore_index_none_gets_a_pixel_confusion_matrix(make_trainer: Any) -> None:
    """Issue #22: smp's losses set ignore_index=None; reading it raised int(None) in both callbacks, which skipped the
    step-zero checks and every confusion count of the run. The loss module itself now identifies the pairing."""
    pl.seed_everything(0)
    confusion, checks = ls.ConfusionCallback(), ModelChecksCallback()
    trainer = make_trainer(callbacks=[confusion, checks], max_epochs=2, limit_train_batches=8)
    trainer.fit(Segmenter(), digit_masks(), digit_masks("val"))
    assert [f.code for f in ls.collect_findings(trainer) if f.code == "sanity.internal_error"] == []
    assert confusion.pairing is not None and confusion.pairing.loss == "SmpLikeDiceLoss"
    matrix = confusion.confusion_matrices["val"]
    assert matrix.shape == (11, 11) and int(matrix.sum()) == len(digit_masks("val").dataset) * 64


def test_a_segmentation_model_ignoring_its_input_is_caught_with_an_smp_like_loss(make_trainer: Any) -> None:
    findings = fit(make_trainer, Segmenter(ignores_input=True), digit_masks())
    assert "sanity.internal_error" not in [f.code for f in findings]
    assert only(findings, "model.input_independent").severity is Severity.ERROR
    quiet(fit(make_trainer, Segmenter(), digit_masks()))


class OddCrossEntropy(nn.CrossEntropyLoss):
    """A cross-entropy whose attributes carry values of their own, as user losses do."""

    def __init__(self) -> None:
        super().__init__(label_smoothing=0.1)
        self.reduction = "mean_over_pixels"  # forward below does not read it
        self.__dict__["built"] = True

    @property  # type: ignore[override]
    def ignore_index(self) -> int:
        raise KeyError("ignore_index is not configured")

    @ignore_index.setter
    def ignore_index(self, value: int) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name == "weight" and self.__dict__.get("built"):
            raise RuntimeError("weights live on the datamodule")
        return super().__getattr__(name)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=0.1)


@pytest.mark.parametrize(
    ("name", "value", "kind", "expected"),
    [
        ("ignore_index", None, int, None),
        ("ignore_index", 255, int, 255),
        ("ignore_index", torch.tensor(255), int, 255),
        ("ignore_index", np.int64(-1), int, -1),
        ("ignore_index", True, int, None),
        ("ignore_index", 2.5, int, None),
        ("ignore_index", "255", int, None),
        ("label_smoothing", "0.1", float, None),
        ("label_smoothing", torch.tensor(0.1), float, pytest.approx(0.1)),
        ("label_smoothing", float("nan"), float, None),
        ("label_smoothing", 0, float, 0.0),
        ("reduction", "mean_over_pixels", str, "mean_over_pixels"),
        ("weight", None, Tensor, None),
        ("weight", [1.0, 2.0], Tensor, None),
    ],
)
def test_loss_attributes_are_read_as_their_kind_or_unknown(name: str, value: Any, kind: type, expected: Any) -> None:
    from lightning_sanity.losses import loss_attribute

    loss = nn.modules.loss._Loss()
    loss.__dict__[name] = value
    assert loss_attribute(loss, name, kind) == expected
    assert loss_attribute(loss, "missing", kind) is None
    assert loss_attribute(OddCrossEntropy(), "ignore_index", int) is None  # a property raising KeyError
    assert loss_attribute(OddCrossEntropy(), "weight", Tensor) is None  # __getattr__ raising RuntimeError


def test_odd_loss_attributes_never_become_internal_errors(make_trainer: Any) -> None:
    class Holder(Net):
        def __init__(self) -> None:
            super().__init__(mlp())
            self.criterion, self.other = OddCrossEntropy(), SmpLikeDiceLoss()
            self.other.weight, self.other.label_smoothing = "balanced", float("inf")  # type: ignore[assignment]

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return self.criterion(self(batch[0]), batch[1])

    pl.seed_everything(0)
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_steps=2, limit_val_batches=0)
    trainer.fit(Holder(), digits())
    assert [f.message for f in ls.collect_findings(trainer) if f.code == "sanity.internal_error"] == []


def test_private_state_gives_writes_to_copies_and_puts_back_every_tensor_and_attribute() -> None:
    from lightning_sanity.isolation import private_state

    class Stateful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.register_buffer("queue", torch.zeros(3, 4))
            self.alias = self.queue  # one tensor held twice
            self.lazy = nn.LazyBatchNorm1d()  # never called: uninitialised buffers

        def forward(self, x: Tensor) -> Tensor:
            self.queue[0] = x[0]
            assert self.alias is self.queue
            self.last, self.bn.running_mean = x, torch.ones(4)
            return self.bn(x)

    module = Stateful().eval()
    queue, mean, versions = (
        module.queue,
        module.bn.running_mean,
        (module.queue._version, module.bn.running_mean._version),
    )
    with private_state(module), torch.no_grad():
        module(torch.randn(2, 4))
    assert module.queue is queue and module.alias is queue and module.bn.running_mean is mean
    assert (module.queue._version, module.bn.running_mean._version) == versions and not module.queue.any()
    assert not hasattr(module, "last")
