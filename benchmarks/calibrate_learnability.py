"""Calibrate ConfusionCallback's learnability verdict on real fits of healthy and broken programs.

Every run is a real ``Trainer.fit`` on scikit-learn digits (flat features or PIL images through torchvision) or
wine, with ``ConfusionCallback`` and ``ModeGuardCallback`` attached. Broken programs are those of issue 13 and
their variants (labels that carry no signal, labels joined to the wrong rows, a model that ignores its input, the
0-255 ``Normalize`` demo, a constant input) and of issue 23 (coin-flip labels whose training loss creeps towards ln 2
and never below it in a few epochs); healthy ones are slow learners (some starting above ln C), noisy labels,
imbalanced data, label smoothing, a run of two epochs, a model right to predict mostly one class, regression, a
frozen backbone in eval mode, and a deep network without normalisation that sits on the ln(C) plateau before it
learns. Each runs with several seeds; the statistics are read at every epoch of a run, where the same run stopped
there would have had its verdict (except for the pace of a training loss above the prior, which is projected over
the run's planned epochs).

It prints one line per run, then the statistics behind each threshold: for the runs where that threshold decides,
the largest value seen on healthy runs against the smallest on broken ones (the table in docs/findings.md).

    python benchmarks/calibrate_learnability.py            # 3 seeds, about 10 minutes on one CPU core
    python benchmarks/calibrate_learnability.py --seeds 1  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T

from lightning_sanity import ConfusionCallback, ModeGuardCallback, Severity, collect_findings
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN, digits_tensors, mlp, wine_tensors
from lightning_sanity.learnability import (
    CHANCE_Z,
    MIN_STEPS,
    ONE_CLASS_SHARE,
    EpochEvidence,
    below_chance_z,
    binomial_noise,
    has_learning_signal,
    prior_loss_floor,
    verdict_checks,
)

# The programs the tests assert on are the ones calibrated here: one definition, in tests/test_learnability.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learnability import (
    NORMALIZED,
    Blind,
    FrozenBackbone,
    PlainSGD,
    Regressor,
    Relabelled,
    Smoothed,
    deep_plain,
    flipped,
    rare_positives,
)

VERDICTS = {
    "eval.chance_level",
    "eval.prediction_collapse",
    "eval.imbalance_masked",
    "eval.loss_at_chance",
    "eval.below_chance",
}


class HotHead(Classifier):
    """A head initialised 8x too large: the training loss starts far above ln C and falls through it."""

    def __init__(self, net: nn.Sequential, lr: float) -> None:
        super().__init__(net, lr)
        with torch.no_grad():
            net[-1].weight.mul_(8.0)


class ConstantInput(Classifier):
    """Feeds a constant tensor instead of the batch."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.ones_like(x))


class WeightDecayed(Classifier):
    """SGD with ``weight_decay=1.0`` (meant 1e-4): the weights decay to a constant output faster than they learn."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1.0)


def deep_tanh(depth: int, width: int = 32) -> nn.Sequential:
    """:func:`deep_plain` with tanh: on plain SGD it also sits on the ln(C) plateau before it learns."""
    layers: list[nn.Module] = [nn.Linear(64, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def tabular(x: Tensor, y: Tensor, batch_size: int = 32, shuffle: bool = True) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def images(split: str, transform: Any = NORMALIZED) -> DigitImages:
    return DigitImages(transform, split=split, size=16)  # type: ignore[arg-type]


def random_labels(seed: int, classes: int, n: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, classes, n)


def permuted(labels: Any, seed: int) -> np.ndarray:
    return np.random.default_rng(2000 + seed).permutation(np.asarray(labels))


Built = tuple[pl.LightningModule, DataLoader, DataLoader]


def build(name: str, seed: int) -> Built:
    x, y = digits_tensors("train")
    xv, yv = digits_tensors("val")
    if name == "random_binary_mlp":
        return (
            Classifier(mlp(64, 2, hidden=128), lr=3e-3),
            tabular(x, torch.from_numpy(random_labels(seed, 2, len(y)))),
            tabular(xv, torch.from_numpy(random_labels(seed + 50, 2, len(yv))), 128, False),
        )
    if name == "random_binary_cnn":
        train, val = images("train"), images("val")
        return (
            Classifier(SmallCNN(2), lr=3e-3),
            DataLoader(Relabelled(train, random_labels(seed, 2, len(train))), batch_size=32, shuffle=True),
            DataLoader(Relabelled(val, random_labels(seed + 50, 2, len(val))), batch_size=128),
        )
    if name in ("coin_flip_cnn", "coin_flip_cnn_slow"):
        # issue 23: coin-flip labels, a small CNN, a few epochs of Adam: the loss creeps towards ln 2, never below
        train, val = images("train"), images("val")
        return (
            Classifier(SmallCNN(2), lr=1e-2 if name == "coin_flip_cnn" else 3e-3),
            DataLoader(Relabelled(train, random_labels(seed + 10, 2, len(train))), batch_size=32, shuffle=True),
            DataLoader(Relabelled(val, (val.targets >= 5).astype(int)), batch_size=128),
        )
    if name == "biased_coin_mlp":
        # labels drawn with P(1) = 0.2: the prior entropy (0.50) is below ln 2
        flips = np.random.default_rng(3000 + seed)
        return (
            Classifier(mlp(64, 2), lr=1e-2),
            tabular(x, torch.from_numpy((flips.random(len(y)) < 0.2).astype(np.int64))),
            tabular(xv, torch.from_numpy((flips.random(len(yv)) < 0.2).astype(np.int64)), 128, False),
        )
    if name == "random_wine":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return (
            Classifier(mlp(13, 3, hidden=128), lr=3e-3),
            tabular(w, torch.from_numpy(random_labels(seed, 3, len(wy))), 8),
            tabular(wv, torch.from_numpy(random_labels(seed + 50, 3, len(wyv))), 64, False),
        )
    if name == "wrong_rows_mlp":
        return (
            Classifier(mlp(64, 10, hidden=128), lr=3e-3),
            tabular(x, torch.from_numpy(permuted(y, seed))),
            tabular(xv, torch.from_numpy(permuted(yv, seed)), 128, False),
        )
    if name == "wrong_rows_cnn":
        train, val = images("train"), images("val")
        return (
            Classifier(SmallCNN(10), lr=3e-3),
            DataLoader(Relabelled(train, permuted(train.targets, seed)), batch_size=32, shuffle=True),
            DataLoader(Relabelled(val, permuted(val.targets, seed)), batch_size=128),
        )
    if name == "blind_imbalanced_mlp":
        return Blind(mlp(64, 2), lr=1e-2), tabular(x, (y != 0).long()), tabular(xv, (yv != 0).long(), 128, False)
    if name == "blind_imbalanced_cnn":
        train, val = images("train"), images("val")
        return (
            Blind(SmallCNN(2), lr=3e-3),
            DataLoader(Relabelled(train, (train.targets != 0).astype(int)), batch_size=32, shuffle=True),
            DataLoader(Relabelled(val, (val.targets != 0).astype(int)), batch_size=128),
        )
    if name == "blind_balanced_mlp":
        return Blind(mlp(64, 2), lr=1e-2), tabular(x, (y >= 5).long()), tabular(xv, (yv >= 5).long(), 128, False)
    if name == "constant_input_wine":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return ConstantInput(mlp(13, 3), lr=1e-2), tabular(w, wy, 8), tabular(wv, wyv, 64, False)
    if name == "decayed_wine":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return WeightDecayed(mlp(13, 3)), tabular(w, wy, 16), tabular(wv, wyv, 64, False)
    if name == "decayed_mlp":
        return WeightDecayed(mlp(64, 10)), tabular(x, y), tabular(xv, yv, 128, False)
    if name == "cycled_val_labels_wine":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return Classifier(mlp(13, 3), lr=1e-2), tabular(w, wy, 16), tabular(wv, (wyv + 1) % 3, 64, False)
    if name == "cycled_val_labels_mlp":
        return Classifier(mlp(64, 10), lr=3e-3), tabular(x, y), tabular(xv, (yv + 1) % 10, 128, False)
    if name == "small_wine_adam":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return Classifier(mlp(13, 3), lr=1e-3), tabular(w, wy, 16), tabular(wv, wyv, 64, False)
    if name == "small_wine_sgd":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return PlainSGD(mlp(13, 3), lr=1e-2), tabular(w, wy, 16), tabular(wv, wyv, 64, False)
    if name == "normalize_bug_cnn":
        train_transform = T.Compose([T.ToTensor(), T.Normalize([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])])
        return (
            Classifier(SmallCNN(10), lr=3e-3),
            DataLoader(images("train", train_transform), batch_size=64, shuffle=True),
            DataLoader(images("val", T.ToTensor()), batch_size=128),
        )
    if name == "slow_sgd_mlp":
        return PlainSGD(mlp(64, 10), lr=2e-3), tabular(x, y), tabular(xv, yv, 128, False)
    if name == "slow_sgd_cnn":
        return (
            PlainSGD(SmallCNN(10), lr=3e-3),
            DataLoader(images("train"), batch_size=64, shuffle=True),
            DataLoader(images("val"), batch_size=128),
        )
    if name == "flipped30_mlp":
        return Classifier(mlp(64, 10), lr=3e-3), tabular(x, flipped(y, 0.3, 10)), tabular(xv, yv, 128, False)
    if name == "flipped30_binary_mlp":
        yb, ybv = (y >= 5).long(), (yv >= 5).long()
        return Classifier(mlp(64, 2), lr=3e-3), tabular(x, flipped(yb, 0.6, 2)), tabular(xv, ybv, 128, False)
    if name == "imbalanced_learnable_mlp":
        return Classifier(mlp(64, 2), lr=3e-3), tabular(x, (y == 0).long()), tabular(xv, (yv == 0).long(), 128, False)
    if name == "mostly_one_class_mlp":
        # about 6 % positives, half of them told apart by one feature: right to predict the majority nearly always
        return (
            Classifier(mlp(8, 2), lr=3e-3),
            tabular(*rare_positives(3000, seed), 64),
            tabular(*rare_positives(1000, seed + 50), 256, False),
        )
    if name == "regression_wine":
        w, _ = wine_tensors("train")
        wv, _ = wine_tensors("val")
        return Regressor(), tabular(w[:, 1:], w[:, 0], 16), tabular(wv[:, 1:], wv[:, 0], 64, False)
    if name == "frozen_backbone_cnn":
        return (
            FrozenBackbone(),
            DataLoader(images("train"), batch_size=64, shuffle=True),
            DataLoader(images("val"), batch_size=128),
        )
    if name == "deep_relu_plateau_sgd":
        return PlainSGD(deep_plain(7), lr=0.1), tabular(x, y), tabular(xv, yv, 128, False)
    if name == "deep_tanh_plateau_sgd":
        return PlainSGD(deep_tanh(10), lr=0.05), tabular(x, y), tabular(xv, yv, 128, False)
    if name == "hot_head_cnn":
        return (
            HotHead(SmallCNN(10), lr=1e-3),
            DataLoader(images("train"), batch_size=64, shuffle=True),
            DataLoader(images("val"), batch_size=128),
        )
    if name == "slow_imbalanced_sgd":
        return PlainSGD(mlp(64, 2), lr=2e-3), tabular(x, (y == 0).long()), tabular(xv, (yv == 0).long(), 128, False)
    if name == "smoothed_sgd_mlp":
        return Smoothed(mlp(64, 10), 1e-3, 0.3, "sgd"), tabular(x, y), tabular(xv, yv, 128, False)
    if name == "smoothed_binary_sgd_mlp":
        yb, ybv = (y >= 5).long(), (yv >= 5).long()
        return Smoothed(mlp(64, 2), 1e-3, 0.3, "sgd"), tabular(x, yb), tabular(xv, ybv, 128, False)
    if name == "two_epochs_sgd_mlp":
        return PlainSGD(mlp(64, 10), lr=3e-3), tabular(x, y, 16), tabular(xv, yv, 128, False)
    if name == "slow_wine_adam":
        w, wy = wine_tensors("train")
        wv, wyv = wine_tensors("val")
        return Classifier(mlp(13, 3), lr=3e-4), tabular(w, wy, 16), tabular(wv, wyv, 64, False)
    if name == "healthy_cnn":
        return (
            Classifier(SmallCNN(10), lr=3e-3),
            DataLoader(images("train"), batch_size=64, shuffle=True),
            DataLoader(images("val"), batch_size=128),
        )
    raise ValueError(name)


BROKEN = {
    "random_binary_mlp": 8,
    "random_binary_cnn": 6,
    "random_wine": 10,
    "wrong_rows_mlp": 8,
    "wrong_rows_cnn": 6,
    "blind_imbalanced_mlp": 5,
    "blind_imbalanced_cnn": 4,
    "blind_balanced_mlp": 5,
    "constant_input_wine": 6,
    "normalize_bug_cnn": 3,
    "decayed_wine": 10,
    "decayed_mlp": 5,
    "cycled_val_labels_wine": 8,
    "cycled_val_labels_mlp": 5,
    "coin_flip_cnn": 3,
    "coin_flip_cnn_slow": 4,
    "biased_coin_mlp": 5,
}
HEALTHY = {
    "slow_sgd_mlp": 10,
    "slow_sgd_cnn": 8,
    "flipped30_mlp": 8,
    "flipped30_binary_mlp": 8,
    "imbalanced_learnable_mlp": 8,
    "mostly_one_class_mlp": 8,
    "regression_wine": 6,
    "frozen_backbone_cnn": 5,
    "deep_relu_plateau_sgd": 10,
    "deep_tanh_plateau_sgd": 14,
    "healthy_cnn": 5,
    "small_wine_adam": 10,
    "small_wine_sgd": 10,
    "hot_head_cnn": 4,
    "slow_imbalanced_sgd": 6,
    "smoothed_sgd_mlp": 6,
    "smoothed_binary_sgd_mlp": 6,
    "two_epochs_sgd_mlp": 2,
    "slow_wine_adam": 10,
}


PLATEAU = {"deep_relu_plateau_sgd", "deep_tanh_plateau_sgd", "slow_sgd_cnn"}
"""Healthy programs that may sit on the ln(C) plateau for much of the horizon: a verdict may stand only if they never
left it (validation still at chance at the last epoch: "learns nothing" is true so far), and must be resolved if
they did."""


@dataclass
class Run:
    name: str
    seed: int
    healthy: bool
    epochs: int
    standing: list[str]
    resolved: list[str]
    first_epoch: int | None
    history: list[EpochEvidence]
    losses: list[float]
    noise: list[float]
    kinds: list[str]
    seconds: float


def fit(name: str, seed: int, epochs: int, healthy: bool) -> Run:
    pl.seed_everything(seed, verbose=False)
    model, train, val = build(name, seed)
    confusion = ConfusionCallback(figure_every_n_epochs=0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[confusion, ModeGuardCallback()],
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(model, train, val)
    serious = [f for f in collect_findings(trainer) if f.severity >= Severity.WARNING]
    verdicts = [f for f in serious if f.code in VERDICTS]
    return Run(
        name=name,
        seed=seed,
        healthy=healthy,
        epochs=epochs,
        standing=sorted(f.code for f in serious if f.standing),
        resolved=sorted(f"{f.code}@{f.resolved_epoch}" for f in serious if not f.standing),
        first_epoch=min((f.epoch for f in verdicts), default=None),
        history=confusion.history.get("val", []),
        losses=list(confusion.train_losses.epoch_losses),
        noise=list(confusion.train_losses.epoch_noise),
        kinds=sorted({str(f.evidence.get("training")) for f in verdicts if "training" in f.evidence}),
        seconds=time.perf_counter() - start,
    )


def train_fall(losses: list[float]) -> float:
    """Relative fall of the epoch-mean training loss from the first epoch to the last."""
    return (losses[0] - losses[-1]) / losses[0] if len(losses) > 1 else 0.0


def val_follow(losses: list[float], history: list[EpochEvidence]) -> float | None:
    """Share of the training-loss fall that the validation loss followed, first epoch to last."""
    measured = [e.eval_loss for e in history if e.eval_loss is not None]
    fall = losses[0] - losses[-1] if len(losses) > 1 else 0.0
    if len(measured) < 2 or fall <= 0:
        return None
    return (measured[0] - measured[-1]) / fall


def chance_margin(entry: EpochEvidence) -> float:
    """Balanced accuracy above 1/K in units of the allowed margin (<= 1 is "no better than one class")."""
    summary = entry.summary
    chance = 1.0 / max(summary.present_classes, 1)
    noise = binomial_noise(chance, summary.total // max(summary.present_classes, 1))
    return (summary.balanced_accuracy - chance) / max(0.05, 2.0 * noise)


def one_class_margin(entry: EpochEvidence) -> float:
    """Top-class share above the one-class rule's bound ``ONE_CLASS_SHARE - CHANCE_Z * noise`` (>= 0 is one class)."""
    summary = entry.summary
    return summary.top_predicted_share - (ONE_CLASS_SHARE - CHANCE_Z * binomial_noise(ONE_CLASS_SHARE, summary.total))


def prior_ratio(entry: EpochEvidence) -> float | None:
    """Validation loss over the entropy of the validation class prior (< 1 - PRIOR_MARGIN vetoes a verdict)."""
    if entry.eval_loss is None or entry.summary.prior_entropy <= 0:
        return None
    return entry.eval_loss / entry.summary.prior_entropy


def recent_fall(history: list[EpochEvidence]) -> float:
    """Fall of the validation loss over the last four validations over ln C, 0 unless it fell at each of them."""
    recent = [e.eval_loss for e in history[-4:] if e.eval_loss is not None]
    if len(recent) < 4 or not all(later < earlier for earlier, later in zip(recent, recent[1:], strict=False)):
        return 0.0
    if recent[-1] >= math.log(max(history[-1].summary.present_classes, 2)):
        return 0.0  # worse than a uniform guess: unlearning its initial bias, not learning
    return (recent[0] - recent[-1]) / math.log(max(history[-1].summary.present_classes, 2))


def prior_margin(run: Run, k: int) -> float | None:
    """Where the run's training loss never went below the prior's noise floor up to validation ``k`` (after
    ``MIN_STEPS``): how far above the floor it ends at the pace of its last epochs, at the planned end of training,
    over the prior entropy (the never-below-the-prior rule: >= 0 is a verdict); ``None`` elsewhere."""
    entry = run.history[k]
    losses, noise = run.losses[: k + 1], run.noise[: k + 1]
    if k < 1 or entry.steps < MIN_STEPS or len(losses) < 2 or entry.summary.prior_entropy <= 0:
        return None
    floors = [prior_loss_floor(entry.summary, n) for n in noise]
    if any(loss < floor for loss, floor in zip(losses, floors, strict=True)):
        return None
    recent = losses[-3:]
    pace = max((recent[0] - recent[-1]) / (len(recent) - 1), 0.0)
    return (recent[-1] - pace * (run.epochs - k - 1) - floors[-1]) / entry.summary.prior_entropy


def statistics(runs: list[Run]) -> list[tuple[str, str, str, str]]:
    """(statistic and threshold, healthy side, broken side, reading) for the table in docs/findings.md."""

    def fmt(values: list[float], pick: Callable[[list[float]], float]) -> str:
        return f"{pick(values):.3f} (n={len(values)})" if values else "none"

    # every (run, epoch) prefix: what the verdict saw when the run was stopped there
    prefixes = [(r, k) for r in runs for k in range(1, len(r.history))]
    at_chance = [(r, k) for r, k in prefixes if chance_margin(r.history[k]) <= 1]
    memorising = [r for r in runs if not r.healthy and "memorising" in r.kinds]
    one_class = [r for r in runs if not r.healthy and "one class throughout" in r.kinds]
    ratios_broken = [v for r in runs if not r.healthy for e in r.history if (v := prior_ratio(e)) is not None]
    rescued = [(r, k) for r, k in at_chance if r.healthy and (v := prior_ratio(r.history[k])) is not None and v < 0.98]
    falling_broken = [recent_fall(r.history[: k + 1]) for r, k in prefixes if not r.healthy]
    falling_healthy = [f for r, k in at_chance if r.healthy and (f := recent_fall(r.history[: k + 1])) >= 0.002]
    # healthy epochs at chance where no veto applies: there the memorising rule alone decides
    decides = [(r, k) for r, k in at_chance if r.healthy and not has_learning_signal(r.history[: k + 1])]
    unsaved = [r for r in runs if r.healthy and r.history and all((prior_ratio(e) or 1.0) >= 0.98 for e in r.history)]
    follow_healthy = [
        v
        for r, k in decides
        if train_fall(r.losses[: k + 1]) >= 0.02
        and (v := val_follow(r.losses[: k + 1], r.history[: k + 1])) is not None
    ]
    follow_broken = [v for r in memorising if (v := val_follow(r.losses, r.history)) is not None]
    learning = [r for r in runs if r.healthy and r.history and chance_margin(r.history[-1]) > 1]
    rescued_ratios = [prior_ratio(r.history[k]) or 0.0 for r, k in rescued]
    # the rule's earliest window, the first two validations, is where a run's smallest share is largest
    lowest_share_unsaved = [min(one_class_margin(e) for e in r.history[:2]) for r in unsaved]
    lowest_share_broken = [min(one_class_margin(e) for e in r.history[:2]) for r in one_class]
    # prefixes at chance with no veto where the training loss never went below the prior: the never-below rule decides
    undecided = [
        (r, k)
        for r, k in prefixes
        if any(verdict_checks(r.history[k].summary).values()) and not has_learning_signal(r.history[: k + 1])
    ]
    above_healthy = [
        v for r, k in undecided if r.healthy and r.name not in PLATEAU and (v := prior_margin(r, k)) is not None
    ]
    never_below = [r for r in runs if not r.healthy and "never below the prior" in r.kinds]
    above_broken = [v for r in never_below if (v := prior_margin(r, len(r.history) - 1)) is not None]
    below_healthy = [below_chance_z(r.history[k].summary) for r, k in prefixes if r.healthy]
    below_broken = [
        below_chance_z(r.history[-1].summary) for r in runs if not r.healthy and r.name.startswith("cycled")
    ]
    return [
        (
            "balanced-accuracy margin above 1/K at the last epoch, units of max(5 %, 2 sigma); <= 1 is at chance",
            f"min {fmt([chance_margin(r.history[-1]) for r in learning], min)} (runs that learned)",
            f"max {fmt([chance_margin(r.history[-1]) for r in runs if not r.healthy and r.history], max)}",
            "BALANCED_MARGIN 0.05 / CHANCE_Z 2",
        ),
        (
            "training-loss fall from the first epoch, relative (memorising rule: >= MEMORISE_DROP 0.02)",
            f"max {fmt([train_fall(r.losses[: k + 1]) for r, k in decides], max)} (epochs at chance, no veto)",
            f"min {fmt([train_fall(r.losses) for r in memorising], min)} (memorising runs)",
            "healthy epochs at chance that no veto covers: the training loss did not fall",
        ),
        (
            "validation-loss fall / training-loss fall (memorising rule: < GENERALISE_SHARE 0.25)",
            f"min {fmt(follow_healthy, min)} (epochs at chance, no veto, train fell >= 2 %)",
            f"max {fmt(follow_broken, max)} (memorising runs)",
            "broken runs' validation loss rises while the training loss falls",
        ),
        (
            "validation loss / class-prior entropy (veto: < 1 - PRIOR_MARGIN = 0.98)",
            f"{len(rescued)} healthy epochs at chance rescued, max {fmt(rescued_ratios, max)}",
            f"min {fmt(ratios_broken, min)} (every epoch of every broken run)",
            "a model ignoring its input cannot go below 1; memorisers stay above it",
        ),
        (
            "validation-loss fall over the last 4 validations / ln C, each lower (veto: >= IMPROVING_FALL 0.002)",
            f"min {fmt(falling_healthy, min)} (healthy epochs at chance it rescued)",
            f"max {fmt(falling_broken, max)} (every epoch of every broken run)",
            "overlaps: it only postpones a verdict; every broken run was caught at epochs where it did not hold",
        ),
        (
            f"smallest top-class share over the first two validations minus ONE_CLASS_SHARE {ONE_CLASS_SHARE} - "
            f"{CHANCE_Z:g} sigma (one class: >= 0)",
            f"max {fmt(lowest_share_unsaved, max)} (runs the prior veto does not cover)",
            f"min {fmt(lowest_share_broken, min)} (one-class runs)",
            "healthy >= 0: plateau runs, said while true and resolved; mostly-one-class models beat the prior",
        ),
        (
            "training loss never below the prior's noise floor: (loss at the planned end at its pace - floor) / "
            "prior entropy (never below the prior: >= 0)",
            f"max {fmt(above_healthy, max)} (healthy epochs at chance, no veto, never below; plateau runs apart)",
            f"min {fmt(above_broken, min)} (last epoch of the runs reported by this rule)",
            "a healthy run above the prior is on pace to cross it before its planned end",
        ),
        (
            "standard errors of accuracy below label-independent predictions (eval.below_chance: >= BELOW_CHANCE_Z 4)",
            f"max {fmt(below_healthy, max)} (every epoch after the first of every healthy run)",
            f"min {fmt(below_broken, min)} (last epoch, validation labels cycled)",
            "systematically wrong predictions, a label mapping that differs between splits",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_sanity").setLevel(logging.ERROR)
    runs: list[Run] = []
    plan = [(name, epochs, False) for name, epochs in BROKEN.items()] + [
        (name, epochs, True) for name, epochs in HEALTHY.items()
    ]
    print(f"{'run':<28} {'seed':>4} {'ep':>3} {'ok':>3} {'first':>5} {'val bal.acc by epoch':<44} standing / resolved")
    for name, epochs, healthy in plan:
        if args.only and name not in args.only:
            continue
        for seed in range(args.seeds):
            run = fit(name, seed, epochs, healthy)
            runs.append(run)
            verdicts = [code for code in run.standing if code in VERDICTS]
            ok = run.standing == [] if healthy else bool(verdicts)
            if name in PLATEAU and not ok and chance_margin(run.history[-1]) <= 1:
                ok = True  # still on the plateau at the end: "learns nothing" is true so far
            accuracies = " ".join(f"{e.summary.balanced_accuracy:.2f}" for e in run.history)
            first = "-" if run.first_epoch is None else str(run.first_epoch)
            print(
                f"{('+ ' if healthy else '- ') + name:<28} {seed:>4} {epochs:>3} {'yes' if ok else 'NO':>3} "
                f"{first:>5} {accuracies:<44} {run.standing} {run.resolved}",
                flush=True,
            )
            print(
                f"{'':<40}train {' '.join(f'{v:.3f}' for v in run.losses)} | val "
                f"{' '.join('-' if e.eval_loss is None else f'{e.eval_loss:.3f}' for e in run.history)} | top share "
                f"{' '.join(f'{e.summary.top_predicted_share:.2f}' for e in run.history)}",
                flush=True,
            )
    healthy_bad = [
        r for r in runs if r.healthy and r.standing and not (r.name in PLATEAU and chance_margin(r.history[-1]) <= 1)
    ]
    broken_missed = [r for r in runs if not r.healthy and not set(r.standing) & VERDICTS]
    print(f"\nhealthy runs with a standing WARNING/ERROR: {len(healthy_bad)} of {sum(r.healthy for r in runs)}")
    print(
        "healthy runs with a verdict resolved later: "
        f"{sum(bool(r.resolved) for r in runs if r.healthy)}; still on the plateau at the end: "
        f"{sum(r.name in PLATEAU and chance_margin(r.history[-1]) <= 1 for r in runs)}"
    )
    print(f"broken runs without a learnability verdict: {len(broken_missed)} of {sum(not r.healthy for r in runs)}")
    print("\n| statistic (threshold) | healthy | broken | reading |\n|---|---|---|---|")
    for statistic, healthy_value, broken_value, reading in statistics(runs):
        print(f"| {statistic} | {healthy_value} | {broken_value} | {reading} |")
    print(f"\n{len(runs)} runs, {sum(r.seconds for r in runs):.0f} s of fitting")


if __name__ == "__main__":
    main()
