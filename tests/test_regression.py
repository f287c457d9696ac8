"""RegressionCallback on real fits: ``eval.regression_at_mean`` triggers (shuffled targets, a model ignoring its input,
unscaled targets) and healthy twins (diabetes standardised, a weak but real learner), validate and test runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes
from support import problems, quiet
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity import Finding, ModelChecksCallback, Severity
from lightning_sanity.regression import RegressionCallback
from lightning_sanity.regression_metrics import RegressionSummary, as_columns

LossFn = Callable[[Tensor, Tensor], Tensor]


class Regressor(pl.LightningModule):
    """``loss_fn(self(x), y)`` around ``net``; ``ignore_input`` multiplies the input by zero (BUG)."""

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-2,
        optimizer: str = "adam",
        loss_fn: LossFn = F.mse_loss,
        ignore_input: bool = False,
    ) -> None:
        super().__init__()
        self.net, self.lr, self.optimizer, self.loss_fn, self.ignore_input = net, lr, optimizer, loss_fn, ignore_input

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 0 if self.ignore_input else x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss_fn(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", self.loss_fn(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def mlp(inputs: int, outputs: int = 1, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def standardise(values: Tensor, reference: Tensor) -> Tensor:
    return (values - reference.mean(0)) / reference.std(0)


def diabetes(seed: int = 0, shuffle_targets: bool = False, scale: bool = True) -> tuple[Tensor, ...]:
    """Diabetes split 80/20 (353/89), features and targets standardised with the training split's statistics;
    ``shuffle_targets`` permutes the training targets against their inputs (BUG); ``scale=False`` leaves the targets
    raw (25-346)."""
    features, targets = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    features, targets = features[order], targets[order, None]
    train, val = slice(0, 353), slice(353, None)
    x_train, x_val = standardise(features[train], features[train]), standardise(features[val], features[train])
    y_train, y_val = targets[train], targets[val]
    if scale:
        y_train, y_val = standardise(y_train, targets[train]), standardise(y_val, targets[train])
    if shuffle_targets:
        y_train = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed + 1))]
    return x_train, y_train, x_val, y_val


def weak_signal(seed: int = 0, samples: int = 600, r2: float = 0.12) -> tuple[Tensor, ...]:
    """A linear target of 5 features with noise for a best achievable R² of ``r2``; 2/3 train, 1/3 val."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(samples, 5, generator=generator)
    signal = features @ torch.randn(5, 1, generator=generator)
    signal = signal / signal.std()
    noise = torch.randn(samples, 1, generator=generator) * ((1 - r2) / r2) ** 0.5
    targets = (signal + noise) / (1 + (1 - r2) / r2) ** 0.5
    cut = samples * 2 // 3
    return features[:cut], targets[:cut], features[cut:], targets[cut:]


def loaders(x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, batch: int = 32) -> tuple[DataLoader, ...]:
    return (
        DataLoader(TensorDataset(x_train, y_train), batch_size=batch, shuffle=True),
        DataLoader(TensorDataset(x_val, y_val), batch_size=64),
    )


def fit(
    make_trainer: Callable[..., pl.Trainer],
    model: pl.LightningModule,
    data: tuple[Tensor, ...],
    epochs: int = 10,
    alone: bool = False,
) -> tuple[pl.Trainer, RegressionCallback]:
    """Fit with ModelChecksCallback deciding the run's task at step 0, or ``alone`` (the callback decides it)."""
    pl.seed_everything(0, verbose=False)
    callback = RegressionCallback()
    trainer = make_trainer(callbacks=[callback] if alone else [ModelChecksCallback(), callback], max_epochs=epochs)
    trainer.fit(model, *loaders(*data))
    return trainer, callback


def at_mean(callback: RegressionCallback) -> list[Finding]:
    return [f for f in callback.findings if f.code == "eval.regression_at_mean" and f.standing]


@pytest.mark.parametrize("alone", [False, True], ids=["with ModelChecks", "alone"])
def test_standardised_diabetes_is_quiet_and_logs_r2(make_trainer: Callable[..., pl.Trainer], alone: bool) -> None:
    trainer, callback = fit(make_trainer, Regressor(mlp(10), lr=1e-2), diabetes(), alone=alone)
    quiet(callback.findings)
    assert callback.summaries["val"].r2 > 0.3
    assert "Regression" in callback.report_sections()[0][0]


def test_a_weak_but_real_learner_is_quiet(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer, callback = fit(make_trainer, Regressor(nn.Linear(5, 1), lr=1e-2), weak_signal())
    quiet(callback.findings)
    assert 0.0 < callback.summaries["val"].r2 < 0.3


@pytest.mark.parametrize("alone", [False, True], ids=["with ModelChecks", "alone"])
def test_shuffled_targets_are_caught(make_trainer: Callable[..., pl.Trainer], alone: bool) -> None:
    model = Regressor(mlp(10, hidden=64), lr=1e-2)
    trainer, callback = fit(make_trainer, model, diabetes(shuffle_targets=True), alone=alone)
    assert callback.task is not None and callback.task.kind == "regression"
    finding = at_mean(callback)[0]
    assert finding.severity is Severity.WARNING and finding.subject == "val"
    assert finding.evidence["r2"] <= 2 * finding.evidence["r2_noise"]
    assert "belong to their inputs" in finding.message or "joined" in finding.hint


def test_a_model_ignoring_its_input_is_caught(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer, callback = fit(make_trainer, Regressor(mlp(10), lr=1e-2, ignore_input=True), diabetes())
    finding = at_mean(callback)[0]
    assert finding.evidence["training"] == "at the mean"
    assert finding.evidence["constant_predictions"] is True
    assert "does not depend on its input" in finding.message


def test_unscaled_targets_are_caught_with_their_scale_named(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer, callback = fit(make_trainer, Regressor(mlp(10), lr=1e-3), diabetes(scale=False))
    finding = at_mean(callback)[0]
    assert finding.evidence["training"] == "at the mean"
    assert "far from standardised" in finding.message and "Standardise the targets" in finding.hint
    # the report's triage opens on it and points at the targets ModelChecksCallback measured at step 0
    report = ls.last_report(trainer)
    assert report is not None
    rows = {row.check: row for row in report.triage}
    assert rows["targets and loss fit the task?"].status == "wrong"
    assert rows["targets and loss fit the task?"].code == "target.unscaled"
    assert next(f for f in ls.collect_findings(trainer) if f.code == "target.unscaled").standing


def test_unscaled_targets_a_model_fits_anyway_resolve_the_step_zero_warning(
    make_trainer: Callable[..., pl.Trainer],
) -> None:
    """Raw diabetes targets (25-346) under Adam at 0.1: the step-0 target.unscaled said the model would learn little
    more than the mean; it explains most of the variance instead, so the warning is marked resolved, not standing."""
    trainer, callback = fit(make_trainer, Regressor(mlp(10, hidden=64), lr=1e-1), diabetes(scale=False), epochs=15)
    [unscaled] = [f for f in ls.collect_findings(trainer) if f.code == "target.unscaled"]
    assert callback.summaries["val"].r2 >= 0.5
    assert unscaled.resolved_epoch is not None and [f for f in problems(trainer) if f.standing] == []


def test_a_test_run_after_the_fit_is_judged_on_its_own(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer, callback = fit(make_trainer, Regressor(mlp(10), lr=1e-2), diabetes(), epochs=4)
    trainer.test(trainer.lightning_module, loaders(*diabetes())[1], verbose=False)
    assert callback.summaries["test"].r2 > 0.3 and callback.summaries["test"].reference == "training mean"
    quiet(callback.findings)


def test_idle_on_classification(make_trainer: Callable[..., pl.Trainer]) -> None:
    x_train, y_train, x_val, y_val = diabetes()
    labels = (y_train[:, 0] > 0).long(), (y_val[:, 0] > 0).long()
    model = Regressor(mlp(10, 2), loss_fn=F.cross_entropy)
    trainer, callback = fit(make_trainer, model, (x_train, labels[0], x_val, labels[1]), epochs=2)
    assert callback.summaries == {} and callback.task is None


def test_aligns_values_per_sample() -> None:
    assert as_columns(torch.zeros(4, 6), torch.zeros(4, 6)) is not None
    assert as_columns(torch.zeros(4, 2), torch.zeros(4, 3)) is None
    sums = {k: torch.tensor([v]) for k, v in {"count": 1.0}.items()}
    assert RegressionSummary.from_sums({**sums, "shift": torch.zeros(1)}, True) is None


@pytest.mark.parametrize("option, value", [("min_epochs", 0), ("min_epochs", True)])
def test_bad_options_fail_fast(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        RegressionCallback(**{option: value})
