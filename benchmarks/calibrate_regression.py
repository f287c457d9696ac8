"""Calibrate RegressionCallback's ``eval.regression_at_mean`` on real fits of healthy and broken regression programs.

Every run is a real ``Trainer.fit`` with ``ModelChecksCallback`` (which decides the task at step 0) and
``RegressionCallback``. Healthy programs: scikit-learn diabetes (features and targets standardised with the training
split's statistics; MLPs and a linear model; Adam, AdamW, SGD with momentum; several learning rates; MSE and L1),
wine regression (alcohol from the 12 other columns), synthetic linear and non-linear targets with small and large
validation splits, three-output targets, and weak learners whose best R² is 0.1, 0.2 or 0.3. Broken programs: training
targets shuffled against their inputs, a model that multiplies its input by zero, targets around -2700 (unscaled)
under Adam and SGD, a learning rate far too small for anything to move, and validation targets from another
distribution (shifted by two standard deviations, or in other units). Each runs with several seeds for 10 epochs.

It prints one line per run, then the statistics behind each threshold (the table in docs/findings.md).

    python benchmarks/calibrate_regression.py            # 3 seeds, about 3 minutes on one CPU core
    python benchmarks/calibrate_regression.py --seeds 1  # a quick look
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_wine
from torch import Tensor, nn

from lightning_sanity import ModelChecksCallback
from lightning_sanity.regression import RegressionCallback
from lightning_sanity.regression_metrics import CHANCE_Z, CONSTANT_SHARE, GENERALISE_SHARE

# The programs the tests assert on are the ones calibrated here: one definition, in tests/test_regression.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_regression import Regressor, diabetes, loaders, mlp, standardise, weak_signal

Data = tuple[Tensor, ...]


def wine(seed: int) -> Data:
    """Wine: alcohol (column 0) from the 12 other columns, 2/3 train, standardised with the training split."""
    table = torch.tensor(load_wine().data, dtype=torch.float32)
    table = table[torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))]
    features, targets = table[:, 1:], table[:, :1]
    cut = len(table) * 2 // 3
    return (
        standardise(features[:cut], features[:cut]),
        standardise(targets[:cut], targets[:cut]),
        standardise(features[cut:], features[:cut]),
        standardise(targets[cut:], targets[:cut]),
    )


def synthetic(seed: int, samples: int, nonlinear: bool, outputs: int = 1, val_share: float = 0.3) -> Data:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(samples, 8, generator=generator)
    weights = torch.randn(8, outputs, generator=generator)
    targets = torch.sin(features @ weights) if nonlinear else features @ weights / 8**0.5
    targets = targets + 0.3 * torch.randn(samples, outputs, generator=generator)
    cut = int(samples * (1 - val_share))
    return features[:cut], targets[:cut], features[cut:], targets[cut:]


def shifted_val(data: Data, shift: float = 2.0, scale: float = 1.0) -> Data:
    """BUG: validation targets from another distribution (other units, or an offset)."""
    x_train, y_train, x_val, y_val = data
    return x_train, y_train, x_val, y_val * scale + shift


def unscaled(seed: int) -> Data:
    """BUG: diabetes targets moved to around -2700 (raw units, std 77)."""
    x_train, y_train, x_val, y_val = diabetes(seed, scale=False)
    return x_train, y_train - 2850.0, x_val, y_val - 2850.0


@dataclass(frozen=True)
class Program:
    name: str
    healthy: bool
    build: Callable[[int], tuple[pl.LightningModule, Data]]


def programs() -> list[Program]:
    def reg(net: Callable[[], nn.Module], **options: object) -> Callable[[Data], pl.LightningModule]:
        return lambda data: Regressor(net(), **options)  # type: ignore[arg-type]

    def make(name: str, healthy: bool, model: Callable[[], pl.LightningModule], data: Callable[[int], Data]) -> Program:
        return Program(name, healthy, lambda seed: (model(), data(seed)))

    return [
        make("diabetes mlp adam 1e-2", True, lambda: Regressor(mlp(10), lr=1e-2), diabetes),
        make("diabetes mlp adam 1e-3", True, lambda: Regressor(mlp(10), lr=1e-3), diabetes),
        make("diabetes mlp adamw 3e-3", True, lambda: Regressor(mlp(10), lr=3e-3, optimizer="adamw"), diabetes),
        make("diabetes mlp sgd 1e-2", True, lambda: Regressor(mlp(10), lr=1e-2, optimizer="sgd"), diabetes),
        make("diabetes linear sgd 1e-3", True, lambda: Regressor(nn.Linear(10, 1), lr=1e-3, optimizer="sgd"), diabetes),
        make("diabetes mlp l1 adam 1e-2", True, lambda: Regressor(mlp(10), lr=1e-2, loss_fn=F.l1_loss), diabetes),
        make("diabetes mlp smooth-l1", True, lambda: Regressor(mlp(10), lr=1e-2, loss_fn=F.smooth_l1_loss), diabetes),
        make("wine mlp adam 1e-2", True, lambda: Regressor(mlp(12), lr=1e-2), wine),
        make("wine linear sgd 1e-2", True, lambda: Regressor(nn.Linear(12, 1), lr=1e-2, optimizer="sgd"), wine),
        make("linear 300 adam", True, lambda: Regressor(mlp(8), lr=1e-2), lambda s: synthetic(s, 300, False)),
        make("sine 3000 adam", True, lambda: Regressor(mlp(8, hidden=64), lr=3e-3), lambda s: synthetic(s, 3000, True)),
        make("3 outputs adam", True, lambda: Regressor(mlp(8, 3), lr=1e-2), lambda s: synthetic(s, 600, True, 3)),
        make("weak r2 0.1 linear", True, lambda: Regressor(nn.Linear(5, 1), lr=1e-2), lambda s: weak_signal(s, r2=0.1)),
        make("weak r2 0.2 mlp", True, lambda: Regressor(mlp(5), lr=3e-3), lambda s: weak_signal(s, r2=0.2)),
        make(
            "weak r2 0.3 sgd",
            True,
            lambda: Regressor(nn.Linear(5, 1), lr=1e-2, optimizer="sgd"),
            lambda s: weak_signal(s, r2=0.3),
        ),  # fmt: skip
        make("weak r2 0.1 3000", True, lambda: Regressor(mlp(5), lr=1e-3), lambda s: weak_signal(s, 3000, r2=0.1)),
        make(
            "weak r2 0.15 150",
            True,
            lambda: Regressor(nn.Linear(5, 1), lr=1e-2),
            lambda s: weak_signal(s, 150, r2=0.15),
        ),  # fmt: skip
        make(
            "shuffled mlp adam 1e-2",
            False,
            lambda: Regressor(mlp(10, hidden=64), lr=1e-2),
            lambda s: diabetes(s, shuffle_targets=True),
        ),  # fmt: skip
        make(
            "shuffled mlp adam 1e-3",
            False,
            lambda: Regressor(mlp(10), lr=1e-3),
            lambda s: diabetes(s, shuffle_targets=True),
        ),  # fmt: skip
        make(
            "shuffled linear sgd",
            False,
            lambda: Regressor(nn.Linear(10, 1), lr=1e-2, optimizer="sgd"),
            lambda s: diabetes(s, shuffle_targets=True),
        ),  # fmt: skip
        make("ignores input adam", False, lambda: Regressor(mlp(10), lr=1e-2, ignore_input=True), diabetes),
        make(
            "ignores input sgd",
            False,
            lambda: Regressor(mlp(10), lr=1e-2, optimizer="sgd", ignore_input=True),
            diabetes,
        ),  # fmt: skip
        make("unscaled -2700 adam 1e-3", False, lambda: Regressor(mlp(10), lr=1e-3), unscaled),
        make("unscaled -2700 adam 1e-2", False, lambda: Regressor(mlp(10), lr=1e-2), unscaled),
        make("unscaled -2700 sgd 1e-6", False, lambda: Regressor(mlp(10), lr=1e-6, optimizer="sgd"), unscaled),
        make("lr far too small adam 1e-6", False, lambda: Regressor(mlp(10), lr=1e-6), diabetes),
        make(
            "val targets shifted 2 std", False, lambda: Regressor(mlp(10), lr=1e-2), lambda s: shifted_val(diabetes(s))
        ),  # fmt: skip
        make(
            "val targets other units",
            False,
            lambda: Regressor(mlp(10), lr=1e-2),
            lambda s: shifted_val(diabetes(s), shift=0.0, scale=-1.0),
        ),  # fmt: skip
    ]


@dataclass
class Result:
    program: Program
    seed: int
    reported: bool
    epoch: int | None
    training: str | None
    r2: float
    noise: float
    std_ratio: float
    train_r2: float
    bound: float
    standing: bool


def run(program: Program, seed: int, epochs: int) -> Result:
    pl.seed_everything(seed, verbose=False)
    model, data = program.build(seed)
    callback = RegressionCallback()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=[ModelChecksCallback(), callback],
    )  # fmt: skip
    trainer.fit(model, *loaders(*data))
    found = [f for f in callback.findings if f.code == "eval.regression_at_mean"]
    last = callback.history["val"][-1]
    train_r2 = callback.fit.epochs[-1].r2 if callback.fit is not None and callback.fit.epochs else float("nan")
    return Result(
        program, seed, bool(found), found[0].epoch if found else None,
        found[0].evidence.get("training") if found else None, last.r2, last.r2_noise, last.std_ratio, train_r2,
        last.worst_r2_bound, any(f.standing for f in found),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_sanity").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    start = time.time()
    results: list[Result] = []
    for program in programs():
        for seed in range(args.seeds):
            result = run(program, seed, args.epochs)
            results.append(result)
            verdict = f"REPORTED epoch {result.epoch} ({result.training}){'' if result.standing else ' resolved'}"
            print(
                f"{'healthy' if program.healthy else 'BROKEN '} {program.name:28s} seed {seed} "
                f"{verdict if result.reported else 'quiet':38s} "
                f"val R² {result.r2:+.3f} ± {result.noise:.3f}  pred/target std {result.std_ratio:.3f}  "
                f"train R² {result.train_r2:+.3f}",
                flush=True,
            )  # fmt: skip
    healthy = [r for r in results if r.program.healthy]
    broken = [r for r in results if not r.program.healthy]
    print(f"\n{len(results)} runs in {time.time() - start:.0f} s")
    print("| statistic (rule) | healthy | broken | note |")
    print("|---|---|---|---|")
    print(
        f"| runs with eval.regression_at_mean | {sum(r.reported for r in healthy)}/{len(healthy)} | "
        f"{sum(r.reported for r in broken)}/{len(broken)} | standing at the end: healthy "
        f"{sum(r.standing for r in healthy)}, broken {sum(r.standing for r in broken)} |"
    )
    z_healthy = min(r.r2 / max(r.noise, 1e-12) for r in healthy)
    z_broken = max(r.r2 / max(r.noise, 1e-12) for r in broken if r.reported)
    print(
        f"| last validation R² / its standard error (no better than the mean: <= CHANCE_Z {CHANCE_Z}) | "
        f"min {z_healthy:.2f} | max {z_broken:.2f} (reported runs) | weak learners may sit below: the training side "
        "decides |"
    )
    ratio_healthy = min(r.std_ratio for r in healthy)
    constant = [r.std_ratio for r in broken if "ignores input" in r.program.name]
    print(
        f"| prediction std / target std (constant: <= CONSTANT_SHARE {CONSTANT_SHARE}) | min {ratio_healthy:.3f} | "
        f"max {max(constant):.2e} (input ignored) | |"
    )
    fitted = [r for r in healthy if r.train_r2 > 0]
    share = min(r.bound / r.train_r2 for r in fitted)
    memorisers = [r for r in broken if r.training == "memorising"]
    broken_share = max((r.bound / r.train_r2 for r in memorisers), default=float("nan"))
    print(
        f"| lower of the two val R² (+ {CHANCE_Z} SE) / training R² > 0 (memorising: < GENERALISE_SHARE "
        f"{GENERALISE_SHARE}) | min {share:.3f} (n={len(fitted)}) | max {broken_share:.3f} "
        f"(n={len(memorisers)}, memorising runs) | |"
    )
    missed = sorted({r.program.name for r in broken if not r.reported})
    alarms = sorted({r.program.name for r in healthy if r.reported})
    print(f"\nbroken programs missed in some seed: {missed}\nhealthy programs reported in some seed: {alarms}")


if __name__ == "__main__":
    main()
