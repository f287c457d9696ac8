"""Calibrate ``MIN_VERDICT_STEPS`` (lightning_sanity/progress.py): optimizer steps before any verdict about learning.

Full-batch training takes one optimizer step per epoch (a graph's node classification, small tabular data in one
batch), so after ``min_epochs`` epochs such a model has taken two steps and still predicts one class. Every run here
is a real ``Trainer.fit`` with ``ConfusionCallback`` and the floor set to 0, so what the floor must cover is seen:

- healthy runs (full-batch node classification on digits with an SGC-style propagation over a k-nearest-neighbour
  graph, full-batch MLPs on digits, wine and breast cancer, digits in two batches per epoch; Adam and SGD at several
  learning rates, 3 seeds): the last step at which a validation still looked collapsed or at chance (any check of
  ``verdict_checks`` held), and the last step of a verdict they got without the floor;
- broken runs (training labels shuffled, inputs multiplied by 0, on the same programs): the step of their earliest
  verdict without the floor, which the floor must not delay much.

    python benchmarks/calibrate_verdict_steps.py            # 3 seeds, about 3 minutes on one CPU core
    python benchmarks/calibrate_verdict_steps.py --seeds 1  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import ConfusionCallback, Severity, progress
from lightning_sanity.demos import digits_tensors, wine_tensors
from lightning_sanity.learnability import verdict_checks

VERDICTS = ("eval.prediction_collapse", "eval.chance_level", "eval.imbalance_masked", "eval.below_chance")
Data = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def breast_cancer() -> Data:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    features = torch.tensor(bunch.data[order], dtype=torch.float32)
    labels = torch.tensor(bunch.target[order], dtype=torch.long)
    cut = int(0.75 * len(labels))
    mean, std = features[:cut].mean(0), features[:cut].std(0).clamp(min=1e-6)
    features = (features - mean) / std
    return (features[:cut], labels[:cut]), (features[cut:], labels[cut:])


def propagated_digits() -> Data:
    """Digits as a graph's nodes: features averaged twice over a symmetric 10-nearest-neighbour graph of all nodes
    (SGC, Wu et al. 2019: a GCN without its nonlinearities), split into train and validation nodes."""
    (train_x, train_y), (val_x, val_y) = digits_tensors("train"), digits_tensors("val")
    x, y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
    distances = torch.cdist(x, x)
    neighbours = distances.topk(11, largest=False).indices
    adjacency = torch.zeros(len(x), len(x)).scatter_(1, neighbours, 1.0)
    adjacency = ((adjacency + adjacency.T) > 0).float()
    degree = adjacency.sum(1)
    normalised = adjacency / degree.sqrt()[:, None] / degree.sqrt()[None, :]
    propagated = normalised @ (normalised @ x)
    cut = len(train_x)
    return (propagated[:cut], y[:cut]), (propagated[cut:], y[cut:])


class FullBatch(pl.LightningModule):
    def __init__(self, net: nn.Module, optimizer: str, lr: float, input_scale: float = 1.0) -> None:
        super().__init__()
        self.net, self.optimizer_name, self.lr, self.input_scale = net, optimizer, lr, input_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.input_scale)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@dataclass(frozen=True)
class Program:
    name: str
    data: Callable[[], Data]
    hidden: int
    optimizer: str
    lr: float
    batches: int = 1
    """Training batches per epoch (1: full-batch)."""
    broken: str = ""
    """``"labels shuffled"`` or ``"input x 0"``; empty for a healthy run."""


def tabular(name: str) -> Callable[[], Data]:
    loaders = {"digits": digits_tensors, "wine": wine_tensors}
    return lambda: (loaders[name]("train"), loaders[name]("val"))


HEALTHY = [
    Program("sgc digits", propagated_digits, 0, "adam", 1e-2),
    Program("sgc digits", propagated_digits, 16, "adam", 1e-2),
    Program("sgc digits", propagated_digits, 16, "adam", 3e-3),
    Program("sgc digits", propagated_digits, 16, "adam", 1e-3),
    Program("sgc digits", propagated_digits, 64, "sgd", 0.1),
    Program("sgc digits", propagated_digits, 64, "sgd", 0.01),
    Program("mlp digits", tabular("digits"), 32, "adam", 1e-2),
    Program("mlp digits", tabular("digits"), 32, "adam", 3e-3),
    Program("mlp digits", tabular("digits"), 32, "sgd", 0.1),
    Program("mlp digits", tabular("digits"), 32, "sgd", 0.01),
    Program("mlp digits", tabular("digits"), 32, "adam", 1e-2, batches=2),
    Program("mlp wine", tabular("wine"), 16, "adam", 1e-2),
    Program("mlp wine", tabular("wine"), 16, "adam", 3e-3),
    Program("mlp wine", tabular("wine"), 16, "adam", 1e-3),
    Program("mlp wine", tabular("wine"), 16, "sgd", 0.05),
    Program("mlp breast cancer", breast_cancer, 16, "adam", 1e-2),
    Program("mlp breast cancer", breast_cancer, 16, "adam", 1e-3),
    Program("mlp breast cancer", breast_cancer, 16, "sgd", 0.01),
]
BROKEN = [
    Program("sgc digits", propagated_digits, 16, "adam", 1e-2, broken="labels shuffled"),
    Program("sgc digits", propagated_digits, 16, "adam", 1e-2, broken="input x 0"),
    Program("mlp digits", tabular("digits"), 32, "adam", 1e-2, broken="labels shuffled"),
    Program("mlp wine", tabular("wine"), 16, "adam", 1e-2, broken="labels shuffled"),
    Program("mlp wine", tabular("wine"), 16, "sgd", 0.05, broken="input x 0"),
    Program("mlp breast cancer", breast_cancer, 16, "adam", 1e-2, broken="labels shuffled"),
    Program("mlp breast cancer", breast_cancer, 16, "adam", 1e-2, broken="input x 0"),
]


@dataclass(frozen=True)
class Outcome:
    last_collapsed: int | None
    """Last step at which a validation looked collapsed or at chance (a check of ``verdict_checks`` held)."""
    verdict_steps: list[int]
    """Steps at which a verdict about learning was recorded (floor 0)."""
    standing: bool
    """A verdict still stands at the end (not resolved)."""
    final_balanced: float


def run(program: Program, seed: int, epochs: int) -> Outcome:
    (train_x, train_y), val = program.data()
    pl.seed_everything(seed, verbose=False)
    if program.broken == "labels shuffled":
        train_y = train_y[torch.randperm(len(train_y))]
    classes = int(train_y.max()) + 1
    width = program.hidden
    net: nn.Module = (
        nn.Linear(train_x.shape[1], classes)
        if width == 0
        else nn.Sequential(nn.Linear(train_x.shape[1], width), nn.ReLU(), nn.Linear(width, classes))
    )
    model = FullBatch(net, program.optimizer, program.lr, 0.0 if program.broken == "input x 0" else 1.0)
    batch_size = -(-len(train_y) // program.batches)
    callback = ConfusionCallback()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(
            model,
            DataLoader(TensorDataset(train_x, train_y), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(*val), batch_size=len(val[1])),
        )
    history = callback.history.get("val", [])
    collapsed = [entry.steps for entry in history if any(verdict_checks(entry.summary).values())]
    verdicts = [f for f in callback.findings if f.code in VERDICTS and f.severity >= Severity.WARNING]
    return Outcome(
        max(collapsed) if collapsed else None,
        sorted(f.step for f in verdicts),
        any(f.resolved_epoch is None for f in verdicts),
        history[-1].summary.balanced_accuracy if history else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    floor, progress.MIN_VERDICT_STEPS = (
        progress.MIN_VERDICT_STEPS,
        0,
    )  # what the floor has to cover: every verdict the runs would get without it
    healthy_collapsed, healthy_verdicts, broken_first, missed = [], [], [], []
    for group, programs in (("healthy", HEALTHY), ("broken", BROKEN)):
        for program in programs:
            for seed in range(args.seeds):
                outcome = run(program, seed, args.epochs)
                label = f"{group:7s} {program.name:18s} {program.broken or 'ok':15s} {program.optimizer} {program.lr:g}"
                label += f" h{program.hidden} b{program.batches} seed {seed}"
                print(
                    f"{label}: last collapsed-looking validation at step {outcome.last_collapsed}, verdicts at "
                    f"steps {outcome.verdict_steps[:4]}, standing {outcome.standing}, final balanced accuracy "
                    f"{outcome.final_balanced:.3f}",
                    flush=True,
                )
                if group == "healthy":
                    healthy_collapsed.append(outcome.last_collapsed or 0)
                    healthy_verdicts.extend(outcome.verdict_steps)
                elif outcome.verdict_steps:
                    broken_first.append(outcome.verdict_steps[0])
                else:
                    missed.append(label)
    print()
    print("| statistic | healthy | broken | floor MIN_VERDICT_STEPS |")
    print("|---|---|---|---|")
    print(
        f"| last step whose validation still looked collapsed / at chance | max {max(healthy_collapsed)} "
        f"(n={len(healthy_collapsed)} runs) | | >= it: no verdict while a healthy run has not started |"
    )
    print(
        f"| steps of the verdicts made without a floor | max {max(healthy_verdicts, default=0)} "
        f"(n={len(healthy_verdicts)} verdicts) | min {min(broken_first, default=0)}, median "
        f"{int(np.median(broken_first)) if broken_first else 0} (n={len(broken_first)} runs' first verdicts) | "
        f"{floor} |"
    )
    print(f"broken runs without a verdict in {args.epochs} epochs: {missed or 'none'}")


if __name__ == "__main__":
    main()
