"""Step-zero target checks of ModelChecksCallback on real fits: ``loss.softmax_multilabel``, ``target.unscaled``,
``data.target_in_input``, each trigger with healthy twins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_diabetes
from support import only, quiet
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import Finding, GradientFlowCallback, ModelChecksCallback, Severity
from lightning_sanity.demos import digits_tensors, wine_tensors

LossFn = Callable[[Tensor, Tensor], Tensor]


class Net(pl.LightningModule):
    """``loss_fn(self(x), y)`` around ``net``."""

    def __init__(self, net: nn.Module, loss_fn: LossFn, lr: float = 1e-3, sgd: bool = False) -> None:
        super().__init__()
        self.net, self.loss_fn, self.lr, self.sgd = net, loss_fn, lr, sgd

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.sgd:
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(make_trainer: Any, model: pl.LightningModule, loader: DataLoader, *extra: pl.Callback) -> list[Finding]:
    pl.seed_everything(0, verbose=False)
    callback = ModelChecksCallback()
    trainer = make_trainer(callbacks=[callback, *extra], max_steps=2, limit_val_batches=0)
    trainer.fit(model, loader)
    return [f for cb in [callback, *extra] for f in getattr(cb, "findings", [])]


def loader(features: Tensor, targets: Tensor, batch_size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(features, targets), batch_size=batch_size, shuffle=True)


def mlp(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, outputs))


# ---- loss.softmax_multilabel ---------------------------------------------------------------------------------------


def digit_attributes() -> tuple[Tensor, Tensor]:
    """Digits with four attributes of the digit each image shows (multi-hot): >= 5, even, prime, has a loop."""
    features, labels = digits_tensors()
    attributes = [labels >= 5, labels % 2 == 0, torch.isin(labels, torch.tensor([2, 3, 5, 7]))]
    attributes.append(torch.isin(labels, torch.tensor([0, 6, 8, 9])))
    return features, torch.stack(attributes, dim=1).float()


def soft_cross_entropy_by_hand(logits: Tensor, targets: Tensor) -> Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@pytest.mark.parametrize("loss_fn", [F.cross_entropy, soft_cross_entropy_by_hand], ids=["cross_entropy", "by_hand"])
def test_softmax_cross_entropy_on_multi_hot_targets_is_caught(make_trainer: Any, loss_fn: LossFn) -> None:
    finding = only(fit(make_trainer, Net(mlp(64, 4), loss_fn), loader(*digit_attributes())), "loss.softmax_multilabel")
    assert finding.severity is Severity.ERROR
    assert finding.evidence["output_shape"] == [32, 4] and finding.evidence["target_shape"] == [32, 4]
    assert finding.evidence["rows_with_several_positives"] > 0 and 0 < finding.evidence["share_not_one_hot"] <= 1
    assert "BCEWithLogitsLoss" in finding.hint and "sigmoid" in finding.hint


def one_hot_digits(transform: Callable[[Tensor], Tensor]) -> DataLoader:
    features, labels = digits_tensors()
    return loader(features, transform(F.one_hot(labels, 10).float()))


def mixup(targets: Tensor) -> Tensor:
    return 0.7 * targets + 0.3 * targets.roll(1, dims=0)


@pytest.mark.parametrize(
    "data",
    [
        lambda: loader(*digit_attributes()),  # multi-hot under BCE with logits
        lambda: one_hot_digits(lambda t: t),
        lambda: one_hot_digits(lambda t: 0.9 * t + 0.01),  # label smoothing by hand
        lambda: one_hot_digits(mixup),
        lambda: one_hot_digits(lambda t: (torch.randn(t.shape) * 2).softmax(dim=1)),  # a teacher's probabilities
    ],
    ids=["bce_multi_hot", "one_hot", "smoothed", "mixup", "distillation"],
)
def test_multi_label_with_bce_and_soft_targets_with_softmax_are_healthy(make_trainer: Any, data: Any) -> None:
    loaded = data()
    targets = loaded.dataset.tensors[1]
    multi_hot = bool(((targets == 0) | (targets == 1)).all()) and bool((targets.sum(1) != 1).any())
    loss_fn = F.binary_cross_entropy_with_logits if multi_hot else F.cross_entropy
    quiet(fit(make_trainer, Net(mlp(64, targets.shape[1]), loss_fn), loaded))


# ---- target.unscaled -----------------------------------------------------------------------------------------------


def diabetes(target: Callable[[Tensor], Tensor]) -> DataLoader:
    """Diabetes features in [-1, 1] (min-max over the data) and the disease progression through ``target``."""
    features, progression = load_diabetes(return_X_y=True)
    low, high = features.min(0), features.max(0)
    x = torch.tensor(2 * (features - low) / (high - low) - 1, dtype=torch.float32)
    y = torch.tensor(progression, dtype=torch.float32)[:, None]
    return loader(x, target(y))


def around_minus_2700(y: Tensor) -> Tensor:
    return -2700 + 3 * (y - y.mean())


def test_regression_targets_far_from_standardised_are_caught(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(mlp(10, 1), F.mse_loss), diabetes(around_minus_2700)), "target.unscaled")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["identified_loss"] == "mse"
    assert finding.evidence["target_mean"] < -2000 and finding.evidence["ratio"] > finding.evidence["threshold"]
    assert finding.evidence["returned_loss"] > 10 * finding.evidence["loss_at_target_mean"]
    assert "Standardise the targets" in finding.hint


def test_unscaled_targets_read_by_l1_are_caught(make_trainer: Any) -> None:
    finding = only(fit(make_trainer, Net(mlp(10, 1), F.l1_loss), diabetes(around_minus_2700)), "target.unscaled")
    assert finding.evidence["identified_loss"] == "l1"


def standardised(y: Tensor) -> Tensor:
    return (y - y.mean()) / y.std()


def quality_scores(y: Tensor) -> Tensor:
    """Wine-quality-like integer scores 3..9."""
    return (5.8 + 0.8 * standardised(y)).round().clamp(3, 9)


class Denormalised(nn.Module):
    """A head that puts the raw targets' mean and std into the model: raw targets are then fine."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.net, self.mean, self.std = mlp(10, 1), mean, std

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.std + self.mean


@pytest.mark.parametrize("case", ["standardised", "quality_scores", "poisson_counts", "denormalising_head"])
def test_moderately_scaled_and_standardised_regression_targets_are_healthy(make_trainer: Any, case: str) -> None:
    if case == "standardised":
        model, data = Net(mlp(10, 1), F.mse_loss), diabetes(standardised)
    elif case == "quality_scores":
        model, data = Net(mlp(10, 1), F.mse_loss), diabetes(quality_scores)
    elif case == "poisson_counts":
        model, data = Net(mlp(10, 1), nn.PoissonNLLLoss()), diabetes(lambda y: (y / 8).round())
    else:
        raw = diabetes(around_minus_2700).dataset.tensors[1]  # type: ignore[attr-defined]
        model, data = Net(Denormalised(float(raw.mean()), float(raw.std())), F.mse_loss), diabetes(around_minus_2700)
    quiet(fit(make_trainer, model, data))


def test_update_too_large_names_the_unscaled_targets(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    callbacks = [ModelChecksCallback(), GradientFlowCallback()]
    trainer = make_trainer(callbacks=callbacks, max_steps=25, max_epochs=-1, limit_val_batches=0)
    trainer.fit(Net(mlp(10, 1), F.l1_loss, lr=0.5), diabetes(around_minus_2700))
    too_large = next(f for f in callbacks[1].findings if f.code == "update.too_large")
    assert "target.unscaled" in too_large.hint and "standardise them" in too_large.hint
    assert any(f.code == "target.unscaled" for f in callbacks[0].findings)


def test_update_too_large_without_unscaled_targets_says_lower_the_learning_rate(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    callbacks = [ModelChecksCallback(), GradientFlowCallback()]
    trainer = make_trainer(callbacks=callbacks, max_steps=25, max_epochs=-1, limit_val_batches=0)
    trainer.fit(Net(mlp(10, 1), F.l1_loss, lr=0.5), diabetes(standardised))
    too_large = next(f for f in callbacks[1].findings if f.code == "update.too_large")
    assert "Lower the learning rate" in too_large.hint


# ---- data.target_in_input: tokens -----------------------------------------------------------------------------------

VOCAB, LENGTH = 50, 32


def patterns(count: int = 256, seed: int = 0) -> Tensor:
    """Sequences repeating a random pattern of 2-6 tokens from a random phase: the next token is learnable."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        period = int(torch.randint(2, 7, (1,), generator=generator))
        pattern = torch.randint(1, VOCAB, (period,), generator=generator)
        rows.append(pattern.repeat(LENGTH // period + 1)[:LENGTH])
    return torch.stack(rows)


class GruLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.gru, self.head = (
            nn.Embedding(VOCAB, 32),
            nn.GRU(32, 32, batch_first=True),
            nn.Linear(32, VOCAB),
        )

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.gru(self.embed(ids))[0])


class LanguageModel(pl.LightningModule):
    """``(input_ids, labels)`` batches; ``shift``: the step pairs logits at t with the label at t + 1."""

    def __init__(self, shift: bool) -> None:
        super().__init__()
        self.lm, self.shift = GruLM(), shift

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm(ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, labels = self(batch["input_ids"]), batch["labels"]
        if self.shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class TokenDicts(torch.utils.data.Dataset):
    def __init__(self, ids: Tensor, labels: Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def tokens(ids: Tensor, labels: Tensor) -> DataLoader:
    return DataLoader(TokenDicts(ids, labels), batch_size=16, shuffle=True)


def fit_lm(make_trainer: Any, model: pl.LightningModule, data: DataLoader) -> list[Finding]:
    pl.seed_everything(0, verbose=False)
    callback = ModelChecksCallback()
    make_trainer(callbacks=[callback], max_steps=2, limit_val_batches=0).fit(model, data)
    return callback.findings


def test_a_causal_lm_trained_on_unshifted_labels_is_caught(make_trainer: Any) -> None:
    ids = patterns()
    finding = only(fit_lm(make_trainer, LanguageModel(shift=False), tokens(ids, ids.clone())), "data.target_in_input")
    assert finding.severity is Severity.ERROR
    assert (
        finding.evidence["labelled_positions"] == 16 * LENGTH and finding.evidence["identified_loss"] == "cross_entropy"
    )
    returned, evidence = finding.evidence["returned_loss"], finding.evidence
    assert abs(evidence["next_token_loss"] - returned) > abs(evidence["identified_value"] - returned)
    assert "labels[:, 1:]" in finding.hint


def test_padding_set_to_minus_100_does_not_hide_the_copy(make_trainer: Any) -> None:
    ids = patterns()
    labels = ids.clone()
    labels[:, -5:] = -100
    finding = only(fit_lm(make_trainer, LanguageModel(shift=False), tokens(ids, labels)), "data.target_in_input")
    assert finding.evidence["labelled_positions"] == 16 * (LENGTH - 5)


def masked(ids: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """BERT-style: 15% of positions chosen; the input gets token 0 there, the labels are -100 everywhere else."""
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.15
    return torch.where(chosen, torch.zeros_like(ids), ids), torch.where(chosen, ids, torch.full_like(ids, -100))


def corrupted(ids: Tensor, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(1, VOCAB, ids.shape, generator=generator)
    return torch.where(torch.rand(ids.shape, generator=generator) < 0.1, noise, ids)


@pytest.mark.parametrize("case", ["step_shifts", "dataset_shifts", "masked_lm", "denoiser"])
def test_shifted_masked_and_denoising_token_models_are_healthy(make_trainer: Any, case: str) -> None:
    ids = patterns()
    if case == "step_shifts":
        model, data = LanguageModel(shift=True), tokens(ids, ids.clone())
    elif case == "dataset_shifts":
        model, data = LanguageModel(shift=False), tokens(ids[:, :-1], ids[:, 1:])
    elif case == "masked_lm":
        model, data = LanguageModel(shift=False), tokens(*masked(ids))
    else:
        model, data = LanguageModel(shift=False), tokens(corrupted(ids), ids)
    quiet(fit_lm(make_trainer, model, data))


class InternalLoss(pl.LightningModule):
    """A Hugging Face-style model: ``model(input_ids=..., labels=...)`` returns ``{"logits", "loss"}``; the step
    returns ``outputs["loss"]``. ``shift``: the loss inside pairs logits at t with the label at t + 1 (as HF does)."""

    def __init__(self, shift: bool) -> None:
        super().__init__()
        self.model, self.shift = HfStyleLM(shift), shift

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"])["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class HfStyleLM(nn.Module):
    def __init__(self, shift: bool) -> None:
        super().__init__()
        self.lm, self.shift = GruLM(), shift

    def forward(self, input_ids: Tensor, labels: Tensor) -> dict[str, Tensor]:
        logits = self.lm(input_ids)
        scores, targets = (logits[:, :-1], labels[:, 1:]) if self.shift else (logits, labels)
        return {"logits": logits, "loss": F.cross_entropy(scores.reshape(-1, VOCAB), targets.reshape(-1))}


def test_a_model_that_receives_labels_and_shifts_inside_is_healthy_and_one_that_does_not_is_caught(
    make_trainer: Any,
) -> None:
    ids = patterns()
    quiet(fit_lm(make_trainer, InternalLoss(shift=True), tokens(ids, ids.clone())))
    finding = only(fit_lm(make_trainer, InternalLoss(shift=False), tokens(ids, ids.clone())), "data.target_in_input")
    assert finding.evidence["input"] == "input_ids"


def test_gpt2_with_labels_equal_to_input_ids_is_healthy(make_trainer: Any) -> None:
    transformers = pytest.importorskip("transformers")

    class Gpt2(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64)
            self.model = transformers.GPT2LMHeadModel(config)

        def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
            return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    ids = patterns()
    quiet(fit_lm(make_trainer, Gpt2(), tokens(ids, ids.clone())))


# ---- data.target_in_input: tabular ---------------------------------------------------------------------------------


def with_column(features: Tensor, column: Tensor, at: int) -> Tensor:
    return torch.cat([features[:, :at], column[:, None].float(), features[:, at:]], dim=1)


def test_a_feature_column_equal_to_the_label_is_caught(make_trainer: Any) -> None:
    features, labels = wine_tensors()
    data = loader(with_column(features, labels, 4), labels)
    finding = only(fit(make_trainer, Net(mlp(14, 3), F.cross_entropy), data), "data.target_in_input")
    assert finding.severity is Severity.ERROR
    assert finding.evidence["column"] == 4 and finding.evidence["slope"] == 1


def test_a_standardised_copy_of_a_regression_target_is_caught(make_trainer: Any) -> None:
    features, progression = load_diabetes(return_X_y=True)
    x = torch.tensor((features - features.mean(0)) / features.std(0), dtype=torch.float32)
    y = torch.tensor((progression - progression.mean()) / progression.std(), dtype=torch.float32)
    leaked = with_column(x, (y - 0.3) * 2.0, 10)
    finding = only(
        fit(make_trainer, Net(nn.Sequential(mlp(11, 1), nn.Flatten(0)), F.mse_loss), loader(leaked, y)),
        "data.target_in_input",
    )
    assert finding.evidence["column"] == 10 and finding.evidence["slope"] == pytest.approx(2.0, rel=1e-4)


def breast_cancer(batch_size: int, leak: bool) -> DataLoader:
    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.tensor((features - features.mean(0)) / features.std(0), dtype=torch.float32)
    y = torch.tensor(labels)
    return loader(with_column(x, y, 0) if leak else x, y, batch_size=batch_size)


def test_a_binary_label_copied_into_the_features_is_caught_on_a_large_enough_batch(make_trainer: Any) -> None:
    finding = only(
        fit(make_trainer, Net(mlp(31, 2), F.cross_entropy), breast_cancer(64, leak=True)), "data.target_in_input"
    )
    assert finding.evidence["column"] == 0


@pytest.mark.parametrize("batch_size", [16, 128])
def test_tabular_data_without_a_label_column_is_healthy(make_trainer: Any, batch_size: int) -> None:
    quiet(fit(make_trainer, Net(mlp(30, 2), F.cross_entropy), breast_cancer(batch_size, leak=False)))
    features, labels = digits_tensors()
    quiet(fit(make_trainer, Net(mlp(64, 10), F.cross_entropy), loader(features, labels, batch_size)))


class AutoEncoder(pl.LightningModule):
    """Reconstruct the input (the target is the input on purpose), optionally from a corrupted copy."""

    def __init__(self, denoise: bool) -> None:
        super().__init__()
        self.net, self.denoise = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 64)), denoise

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, clean = batch
        noisy = inputs + 0.3 * torch.randn_like(inputs) if self.denoise else inputs
        return F.mse_loss(self(noisy), clean)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("denoise", [False, True])
def test_autoencoders_are_healthy(make_trainer: Any, denoise: bool) -> None:
    features, _ = digits_tensors()
    quiet(fit(make_trainer, AutoEncoder(denoise), loader(features, features.clone())))
