"""Calibrate the checks added for issue 16 on healthy programs and their broken twins.

Each family prints one table: the statistic each check measures, per run, for healthy and broken
variants over several seeds, sizes, batch sizes and accumulation settings, and the healthy maximum
against the broken minimum that the threshold sits between. The tables are in docs/findings.md.

    python benchmarks/calibrate_silent_bugs.py                 # every family
    python benchmarks/calibrate_silent_bugs.py metric          # one family: metric, grad, plain, bn, frozen, mask
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_sanity import ConfusionCallback
from lightning_sanity.demos import Classifier, digits_tensors, mlp, wine_tensors

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

SEEDS = (0, 1, 2)


def trainer(callbacks: list[Any], epochs: int = 2, **options: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        **options,
    )


def table(title: str, rows: list[tuple[str, str, float]], statistic: str) -> None:
    """Print ``(group, healthy|broken, value)`` rows aggregated per group, then healthy max against broken min."""
    groups: dict[tuple[str, str], list[float]] = {}
    for group, kind, value in rows:
        groups.setdefault((group, kind), []).append(value)
    print(f"\n## {title}\n\n| variant | kind | runs | min {statistic} | max {statistic} |\n|---|---|---|---|---|")
    for (group, kind), values in groups.items():
        print(f"| {group} | {kind} | {len(values)} | {min(values):.4g} | {max(values):.4g} |")
    healthy = [v for _, k, v in rows if k == "healthy"]
    broken = [v for _, k, v in rows if k == "broken"]
    print(f"\nhealthy max {max(healthy, default=float('nan')):.4g}, broken min {min(broken, default=float('nan')):.4g}")


# ---------------------------------------------------------------- eval.metric_mismatch: per-batch metrics


class PerBatchLogging(Classifier):
    """Logs ``val_acc`` one of four ways: the metric object, or the tensor a per-batch call returns."""

    def __init__(self, features: int, classes: int, average: str, as_object: bool) -> None:
        super().__init__(mlp(features, classes), lr=1e-2)
        self.accuracy = MulticlassAccuracy(num_classes=classes, average=average)  # type: ignore[arg-type]
        self.as_object = as_object

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        value = self.accuracy(logits.argmax(1), y)
        self.log("val_acc", self.accuracy if self.as_object else value, on_epoch=True)


def sorted_by_class(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


def metric_runs() -> None:
    rows: list[tuple[str, str, float]] = []
    data: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"digits": digits_tensors, "wine": wine_tensors}
    for name, tensors in data.items():
        features, classes = (64, 10) if name == "digits" else (13, 3)
        for batch_size in (8, 32, 64):
            for order in ("shuffled", "fixed", "sorted"):
                for average, as_object in (("micro", False), ("macro", False), ("macro", True), ("micro", True)):
                    for seed in SEEDS[:2]:
                        pl.seed_everything(seed, verbose=False)
                        x, y = tensors("val")
                        if order == "sorted":
                            x, y = sorted_by_class(x, y)
                        val = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=order == "shuffled")
                        train = DataLoader(TensorDataset(*tensors("train")), batch_size=32, shuffle=True)
                        callback = ConfusionCallback()
                        run = trainer([callback], epochs=2, num_sanity_val_steps=0)
                        run.fit(PerBatchLogging(features, classes, average, as_object), train, val)
                        summary = callback.summaries["val"]
                        logged = float(run.callback_metrics["val_acc"])
                        distance = min(abs(logged - summary.accuracy), abs(logged - summary.macro_accuracy))
                        # a per-batch macro value is only a correct reading when it lands on an accumulated one
                        how = "object" if as_object else "per-batch tensor"
                        if average == "macro" and not as_object and order != "sorted":
                            kind = "biased"  # per-batch macro on mixed batches: off by less than the tolerance
                        elif average == "macro" and not as_object and summary.accuracy < 0.99:
                            kind = "broken"  # one class per batch: the per-batch macro values are wrong
                        else:
                            kind = "healthy"  # logged right, or a perfect model that any method scores 1.0
                        rows.append((f"{name} bs{batch_size} {order} {average} {how}", kind, distance))
    table("eval.metric_mismatch: |logged - closest accumulated accuracy| (2 seeds each)", rows, "distance")


FAMILIES: dict[str, Callable[[], None]] = {"metric": metric_runs}


def main(names: list[str]) -> None:
    for name in names or list(FAMILIES):
        FAMILIES[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
