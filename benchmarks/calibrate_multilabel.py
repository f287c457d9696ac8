"""Calibrate MultiLabelCallback's verdicts on real multi-label fits: many healthy runs vs broken runs.

Data: digit attributes (even, > 4, has a loop, is a 7 at 10 %), digits with rare labels (a 7 in half the rows of
7s: 5 %, a 3 in a quarter of the rows of 3s: 2.5 %; the best model predicts them never or seldom) and scikit-learn's
``make_multilabel_classification`` (5 labels, 20 features). Healthy: MLPs on Adam (1e-3, 3e-3, 1e-2) and SGD with
momentum, with and without weight decay, 2 seeds. Broken: targets shuffled against the inputs, a model ignoring its
input, a learning rate far too small, a sigmoid before ``BCEWithLogitsLoss``, ``pos_weight`` far off (0.01 and 100).
Each statistic is read at every validation; the table prints what the rules decide on. Run:

    .venv/bin/python benchmarks/calibrate_multilabel.py          # about 3 minutes on 2 cores
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import make_multilabel_classification
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import ModelChecksCallback, Severity, collect_findings
from lightning_sanity.demos import digits_tensors
from lightning_sanity.multilabel import MultiLabelCallback
from lightning_sanity.multilabel_metrics import is_collapsed, labels_told_apart, told_apart_margin

CODES = ("eval.multilabel_collapse", "eval.multilabel_chance_level")


def digit_data(split: str, rare: bool) -> tuple[Tensor, Tensor]:
    features, digits = digits_tensors(split)  # type: ignore[arg-type]
    rows = torch.arange(len(digits))
    if rare:
        labels = [digits % 2 == 0, digits > 4, (digits == 7) & (rows % 2 == 0), (digits == 3) & (rows % 4 == 0)]
    else:
        labels = [digits % 2 == 0, digits > 4, torch.isin(digits, torch.tensor([0, 6, 8, 9])), digits == 7]
    return features, torch.stack(labels, 1).float()


def sklearn_data(split: str) -> tuple[Tensor, Tensor]:
    x, y = make_multilabel_classification(n_samples=1600, n_features=20, n_classes=5, n_labels=2, random_state=0)
    x = (x - x[:1200].mean(0)) / (x[:1200].std(0) + 1e-6)
    part = slice(0, 1200) if split == "train" else slice(1200, None)
    return torch.tensor(x[part], dtype=torch.float32), torch.tensor(y[part], dtype=torch.float32)


def dataset(name: str, split: str) -> tuple[Tensor, Tensor]:
    return sklearn_data(split) if name == "sklearn" else digit_data(split, rare=name == "digits_rare")


class Net(pl.LightningModule):
    def __init__(self, inputs: int, labels: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, labels))
        self.config = config
        weight = config.get("pos_weight")
        self.loss = nn.BCEWithLogitsLoss(pos_weight=None if weight is None else torch.full((labels,), float(weight)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x * 0 if self.config.get("ignore_input") else x)
        return out.sigmoid() if self.config.get("sigmoid_twice") else out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        lr, decay = self.config["lr"], self.config.get("weight_decay", 0.0)
        if self.config.get("sgd"):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
        return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=decay)


@dataclass
class Outcome:
    scenario: str
    healthy: bool
    seed: int
    standing: list[str]
    resolved: list[str]
    first_epoch: int | None
    last_margin: float
    last_f1_gap: float
    last_loss_ratio: float
    early_margins: list[float]
    collapsed_epochs: int
    epochs: int


def run(args: tuple[str, bool, str, dict[str, Any], int]) -> Outcome:
    scenario, healthy, data, config, seed = args
    warnings.filterwarnings("ignore")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (each fit prints its report)
    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    x, y = dataset(data, "train")
    if config.get("shuffle"):
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))]
    val = DataLoader(TensorDataset(*dataset(data, "val")), batch_size=64)
    callback = MultiLabelCallback()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=config.get("epochs", 6),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[ModelChecksCallback(), callback],
    )
    trainer.fit(Net(x.shape[1], y.shape[1], config), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True), val)
    findings = [f for f in collect_findings(trainer) if f.code in CODES and f.severity >= Severity.WARNING]
    history = callback.history.get("val", [])
    if not history:
        raise RuntimeError(f"{scenario}: nothing judged (task {callback.task})")
    margins = [max((told_apart_margin(e.summary, c) for c in e.summary.varying()), default=0.0) for e in history]
    last = history[-1].summary
    return Outcome(
        scenario=scenario,
        healthy=healthy,
        seed=seed,
        standing=[f.code for f in findings if f.resolved_epoch is None],
        resolved=[f.code for f in findings if f.resolved_epoch is not None],
        first_epoch=min((f.epoch for f in findings), default=None),
        last_margin=margins[-1],
        last_f1_gap=last.micro_f1 - last.constant_micro_f1(),
        last_loss_ratio=(last.eval_loss or 0.0) / last.prior_bce,
        early_margins=margins,
        collapsed_epochs=sum(is_collapsed(e.summary) or not labels_told_apart(e.summary) for e in history),
        epochs=len(history),
    )


HEALTHY = {
    "Adam 1e-3": {"lr": 1e-3},
    "Adam 3e-3": {"lr": 3e-3},
    "Adam 1e-2": {"lr": 1e-2},
    "Adam 3e-3 wd 1e-4": {"lr": 3e-3, "weight_decay": 1e-4},
    "SGD momentum 0.05": {"lr": 0.05, "sgd": True},
    "SGD momentum 0.01": {"lr": 0.01, "sgd": True, "epochs": 8},
}
BROKEN = {
    "targets shuffled, Adam 3e-3": {"lr": 3e-3, "shuffle": True, "epochs": 8},
    "targets shuffled, Adam 1e-2": {"lr": 1e-2, "shuffle": True, "epochs": 8},
    "input ignored (x * 0)": {"lr": 3e-3, "ignore_input": True},
    "lr far too small (Adam 1e-6)": {"lr": 1e-6, "epochs": 5},
    "sigmoid before BCEWithLogits": {"lr": 3e-3, "sigmoid_twice": True},
    "pos_weight 0.01": {"lr": 3e-3, "pos_weight": 0.01},
    "pos_weight 100": {"lr": 3e-3, "pos_weight": 100.0},
}
DATASETS = ("digits", "digits_rare", "sklearn")


def main() -> None:
    seeds = (0, 1)
    jobs = [
        (f"{data}: {name}", True, data, config, s)
        for data in DATASETS
        for name, config in HEALTHY.items()
        for s in seeds
    ]
    jobs += [
        (f"{data}: {name}", False, data, config, s)
        for data in DATASETS
        for name, config in BROKEN.items()
        for s in seeds
    ]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        outcomes = pool.map(run, jobs, chunksize=1)
    print(
        "| scenario | runs | standing verdicts | resolved | first verdict epoch | last best-label margin "
        "| micro F1 - constant | val BCE / prior |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scenario in dict.fromkeys(o.scenario for o in outcomes):
        rows = [o for o in outcomes if o.scenario == scenario]
        standing = sorted({code.removeprefix("eval.") for o in rows for code in o.standing})
        first = [o.first_epoch for o in rows if o.first_epoch is not None]
        kind = "healthy" if rows[0].healthy else "broken"
        print(
            f"| {kind}: {scenario} | {len(rows)} | {sum(bool(o.standing) for o in rows)} {standing or ''} | "
            f"{sum(bool(o.resolved) for o in rows)} | {min(first) if first else '-'} | "
            f"{min(o.last_margin for o in rows):.2f}-{max(o.last_margin for o in rows):.2f} | "
            f"{min(o.last_f1_gap for o in rows):+.3f}..{max(o.last_f1_gap for o in rows):+.3f} | "
            f"{min(o.last_loss_ratio for o in rows):.3f}-{max(o.last_loss_ratio for o in rows):.3f} |"
        )
    healthy = [o for o in outcomes if o.healthy]
    broken = [o for o in outcomes if not o.healthy]
    print()
    print(f"healthy runs with a standing verdict: {sum(bool(o.standing) for o in healthy)}/{len(healthy)}")
    print(f"broken runs reported (standing at the end): {sum(bool(o.standing) for o in broken)}/{len(broken)}")
    smallest = min(min(o.early_margins[1:]) for o in healthy)
    print(f"healthy: smallest best-label margin after the first validation: {smallest:.2f}")
    print(
        f"healthy: smallest last val BCE ratio gap below the veto 0.98: {max(o.last_loss_ratio for o in healthy):.3f}"
    )
    missed = [f"{o.scenario} (seed {o.seed})" for o in broken if not o.standing]
    if missed:
        print("broken runs without a standing verdict:", "; ".join(missed))
    false = [f"{o.scenario} (seed {o.seed}): {o.standing}" for o in healthy if o.standing]
    if false:
        print("healthy runs with a standing verdict:", "; ".join(false))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
