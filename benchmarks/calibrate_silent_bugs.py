"""Calibrate the checks added for issue 16 on healthy programs and their broken twins.

Each family prints one table: the statistic each check measures, per run, for healthy and broken
variants over several seeds, sizes, batch sizes and accumulation settings, and the healthy maximum
against the broken minimum that the threshold sits between. The tables are in docs/findings.md.

    python benchmarks/calibrate_silent_bugs.py                 # every family
    python benchmarks/calibrate_silent_bugs.py mask            # one family: metric, grad, plain, bn, frozen, mask
"""

from __future__ import annotations

import contextlib
import io
import logging
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
for name in ("lightning.pytorch", "lightning.fabric", "lightning_sanity"):
    logging.getLogger(name).setLevel(logging.ERROR)

SEEDS = (0, 1, 2)


class QuietTrainer(pl.Trainer):
    """A Trainer whose ``fit`` prints nothing (the run report goes to stdout)."""

    def fit(self, *args: Any, **kwargs: Any) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            super().fit(*args, **kwargs)


def trainer(callbacks: list[Any], epochs: int = 2, **options: Any) -> pl.Trainer:
    return QuietTrainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        **options,
    )


def table(title: str, rows: list[tuple[str, str, float]], statistic: str, higher_is_broken: bool = True) -> None:
    """Print ``(group, healthy|broken, value)`` rows aggregated per group, then the healthy extreme against the
    broken one on the side the threshold separates (healthy max vs broken min, or the reverse for accuracies)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for group, kind, value in rows:
        groups.setdefault((group, kind), []).append(value)
    print(f"\n## {title}\n\n| variant | kind | runs | min {statistic} | max {statistic} |\n|---|---|---|---|---|")
    for (group, kind), values in groups.items():
        print(f"| {group} | {kind} | {len(values)} | {min(values):.4g} | {max(values):.4g} |")
    healthy = [v for _, k, v in rows if k == "healthy"]
    broken = [v for _, k, v in rows if k == "broken"]
    nan = float("nan")
    if higher_is_broken:
        print(f"\nhealthy max {max(healthy, default=nan):.4g}, broken min {min(broken, default=nan):.4g}")
    else:
        print(f"\nhealthy min {min(healthy, default=nan):.4g}, broken max {max(broken, default=nan):.4g}")


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
                        elif average == "macro" and not as_object and summary.accuracy < 0.99 and len(y) > batch_size:
                            kind = "broken"  # one class per batch: the per-batch macro values are wrong
                        else:
                            kind = "healthy"  # logged right, a perfect model (any method gives 1.0), or one batch
                        rows.append((f"{name} bs{batch_size} {order} {average} {how}", kind, distance))
    table("eval.metric_mismatch: |logged - closest accumulated accuracy| (2 seeds each)", rows, "distance")


# ---------------------------------------------------------------- grad.not_reset: gradients never zeroed


class ManualSteps(Classifier):
    """Manual optimisation stepping every ``k`` batches; ``zero=False`` is the bug (no ``zero_grad``)."""

    def __init__(self, features: int, classes: int, k: int, zero: bool) -> None:
        super().__init__(mlp(features, classes), lr=1e-3)
        self.automatic_optimization = False
        self.k, self.zero = k, zero

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(F.cross_entropy(self(x), y) / self.k)
        if (batch_idx + 1) % self.k == 0:
            opt.step()  # type: ignore[union-attr]
            if self.zero:
                opt.zero_grad()  # type: ignore[union-attr]


class NoOpZeroGrad(Classifier):
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        pass


def grad_runs() -> None:
    from lightning_sanity import GradientFlowCallback, collect_findings

    rows: list[tuple[str, str, float]] = []
    for name, tensors, features, classes in (("digits", digits_tensors, 64, 10), ("wine", wine_tensors, 13, 3)):
        for batch_size in (16, 64):
            variants: list[tuple[str, str, Callable[[int, int], pl.LightningModule], dict[str, Any]]] = [
                ("manual, zero_grad every step", "healthy", lambda f, c: ManualSteps(f, c, 1, True), {}),
                ("manual accumulation k=2", "healthy", lambda f, c: ManualSteps(f, c, 2, True), {}),
                ("manual accumulation k=4", "healthy", lambda f, c: ManualSteps(f, c, 4, True), {}),
                ("automatic", "healthy", lambda f, c: Classifier(mlp(f, c), lr=1e-3), {}),
                (
                    "automatic accumulate_grad_batches=3",
                    "healthy",
                    lambda f, c: Classifier(mlp(f, c), lr=1e-3),
                    {"accumulate_grad_batches": 3},
                ),
                ("manual, no zero_grad", "broken", lambda f, c: ManualSteps(f, c, 1, False), {}),
                ("no-op optimizer_zero_grad", "broken", lambda f, c: NoOpZeroGrad(mlp(f, c), lr=1e-3), {}),
            ]
            for variant, kind, build, options in variants:
                for seed in SEEDS:
                    pl.seed_everything(seed, verbose=False)
                    callback = GradientFlowCallback()
                    run = trainer([callback], epochs=3, num_sanity_val_steps=0, **options)
                    model = build(features, classes)
                    run.fit(model, DataLoader(TensorDataset(*tensors("train")), batch_size=batch_size, shuffle=True))
                    watch = callback._watches.get(0)
                    held = list(watch.kept_gradient) if watch is not None else []
                    if not held:
                        continue  # fewer optimizer steps than watched windows (k=4 on 3 batches per epoch)
                    kept = sum(1 for norm in held if norm is not None and float(norm) > 0) / max(len(held), 1)
                    fired = any(f.code == "grad.not_reset" for f in collect_findings(run))
                    group = f"{name} bs{batch_size} {variant}"
                    rows.append((group + (" [fired]" if fired else ""), kind, kept))
    table("grad.not_reset: share of watched steps whose previous gradient was still in .grad", rows, "share")


# ---------------------------------------------------------------- param.plain_tensor: tensors that are not state


class Gate(torch.nn.Module):
    """``x * sigmoid(x) + alpha * x * (1 - sigmoid(x))`` with ``alpha`` held as ``how`` says."""

    def __init__(self, size: int, how: str, fill: float) -> None:
        super().__init__()
        alpha = torch.full((size,), fill)
        if how == "parameter":
            self.alpha = torch.nn.Parameter(alpha)
        elif how == "buffer":
            self.register_buffer("alpha", alpha)
        elif how == "requires_grad":
            self.alpha = alpha.requires_grad_()
        else:
            self.alpha = alpha
        self.causal = torch.tril(torch.ones(size, size))  # a constant mask: should be a buffer (INFO)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(x)
        self.cached = gate.detach()  # made in forward: never reported
        return gate * x + self.alpha * (1 - gate) * x


class Standardize(torch.nn.Module):
    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6  # constants kept as plain tensors (INFO)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def plain_runs() -> None:
    from lightning_sanity import GradientFlowCallback, Severity
    from lightning_sanity.demos import GAN, SmallCNN

    rank = {None: 0.0, Severity.INFO: 1.0, Severity.WARNING: 2.0, Severity.ERROR: 3.0}
    x, y = digits_tensors("train")

    def gated(how: str, fill: float) -> pl.LightningModule:
        return Classifier(torch.nn.Sequential(torch.nn.Linear(64, 32), Gate(32, how, fill), torch.nn.Linear(32, 10)))

    variants: list[tuple[str, str, Callable[[], pl.LightningModule]]] = [
        ("demos mlp", "healthy", lambda: Classifier(mlp(64, 10))),
        ("demos mlp + torchmetrics", "healthy", lambda: PerBatchLogging(64, 10, "macro", True)),
        ("standardize constants", "healthy", lambda: Classifier(torch.nn.Sequential(Standardize(x), mlp(64, 10)))),
        ("gate alpha parameter (0)", "healthy", lambda: gated("parameter", 0.0)),
        ("gate alpha buffer (0.25)", "healthy", lambda: gated("buffer", 0.25)),
        ("gate alpha plain zeros", "broken", lambda: gated("plain", 0.0)),
        ("gate alpha plain ones", "broken", lambda: gated("plain", 1.0)),
        ("gate alpha plain requires_grad", "broken", lambda: gated("requires_grad", 0.25)),
    ]
    rows: list[tuple[str, str, float]] = []
    for variant, kind, build in variants:
        for seed in SEEDS[:2]:
            pl.seed_everything(seed, verbose=False)
            callback = GradientFlowCallback()
            run = trainer([callback], epochs=1, num_sanity_val_steps=0, limit_train_batches=5)
            run.fit(build(), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
            worst = max((f.severity for f in callback.findings if f.code == "param.plain_tensor"), default=None)
            rows.append((variant, kind, rank[worst]))
    images = DataLoader(TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))), batch_size=16)
    for variant, build_image, data in (("SmallCNN", lambda: Classifier(SmallCNN(10)), images), ("GAN", GAN, None)):
        callback = GradientFlowCallback()
        run = trainer([callback], epochs=1, num_sanity_val_steps=0, limit_train_batches=4)
        loader = data or DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16)
        run.fit(build_image(), loader)
        worst = max((f.severity for f in callback.findings if f.code == "param.plain_tensor"), default=None)
        rows.append((f"demos {variant}", "healthy", rank[worst]))
    table("param.plain_tensor: worst severity (0 none, 1 info, 2 warning, 3 error)", rows, "severity")


# ---------------------------------------------------------------- mode.bn_tiny_batch: BatchNorm on tiny batches


def digit_image_tensors(split: str, size: int = 16) -> tuple[Tensor, Tensor]:
    from torchvision import transforms as T

    from lightning_sanity.demos import DigitImages

    data = DigitImages(T.ToTensor(), split=split, size=size)  # type: ignore[arg-type]
    return torch.stack([data[i][0] for i in range(len(data))]), torch.as_tensor(data.targets)


def bn_runs() -> None:
    """Eval-mode validation accuracy of BatchNorm networks against the batch size they trained with (4 epochs, Adam
    at 3e-3 for 32 samples per step, scaled with the square root of the samples per step): a CNN (BatchNorm2d sees
    batch x 8 x 8 values per channel) and an MLP (BatchNorm1d sees batch values per channel)."""
    from lightning_sanity.demos import SmallCNN

    images = digit_image_tensors("train"), digit_image_tensors("val")
    rows_2d: list[tuple[str, str, float]] = []
    for batch_size, accumulate in ((1, 1), (2, 1), (2, 4), (3, 1), (4, 1), (8, 1), (32, 1)):
        for seed in SEEDS[:2]:
            model = Classifier(SmallCNN(10, width=8), lr=3e-3 * (batch_size * accumulate / 32) ** 0.5)
            accuracy = _bn_eval_accuracy(model, images, batch_size, accumulate, seed)
            kind = "broken" if batch_size == 1 else "healthy"
            rows_2d.append((f"CNN batch {batch_size} accumulate {accumulate}", kind, accuracy))
    table("mode.bn_tiny_batch: BatchNorm2d CNN, eval-mode validation accuracy", rows_2d, "accuracy", False)
    features = digits_tensors("train"), digits_tensors("val")
    rows_1d: list[tuple[str, str, float]] = []
    for batch_size in (2, 3, 4, 8, 32):
        for seed in SEEDS[:2]:
            net = torch.nn.Sequential(
                torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
            )
            accuracy = _bn_eval_accuracy(
                Classifier(net, lr=3e-3 * (batch_size / 32) ** 0.5), features, batch_size, 1, seed
            )
            rows_1d.append((f"MLP batch {batch_size}", "broken" if batch_size <= 2 else "healthy", accuracy))
    table("mode.bn_tiny_batch: BatchNorm1d MLP, eval-mode validation accuracy", rows_1d, "accuracy", False)


def _bn_eval_accuracy(
    model: Classifier,
    data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    batch_size: int,
    accumulate: int,
    seed: int,
) -> float:
    pl.seed_everything(seed, verbose=False)
    (x, y), (val_x, val_y) = data
    run = trainer([], epochs=4, num_sanity_val_steps=0, accumulate_grad_batches=accumulate)
    # drop_last: a last batch of one sample would crash BatchNorm1d in training mode
    run.fit(model, DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True))
    model.eval()
    with torch.no_grad():
        return float((model(val_x).argmax(1) == val_y).float().mean())


# ---------------------------------------------------------------- mode.eval_frozen_but_trained: .eval() as a freeze


class FineTune(pl.LightningModule):
    """A convolutional backbone and a linear head; ``freeze`` says how the backbone is frozen."""

    def __init__(self, freeze: str, optimizer: str) -> None:
        from lightning_sanity.demos import SmallCNN

        super().__init__()
        self.backbone = torch.nn.Sequential(*list(SmallCNN(10, width=8).children())[:-2])
        self.head = torch.nn.Linear(16, 10)
        self.freeze, self.optimizer_name = freeze, optimizer
        if freeze in ("requires_grad", "requires_grad+eval"):
            self.backbone.requires_grad_(False)
        if freeze == "bn":
            for module in self.backbone.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
        elif freeze in ("eval", "eval own group", "requires_grad+eval"):
            self.backbone.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        kind = torch.optim.Adam if self.optimizer_name == "adam" else torch.optim.SGD
        lr = 1e-2 if self.optimizer_name == "adam" else 5e-2
        if self.freeze == "eval own group":
            groups = [{"params": self.backbone.parameters(), "lr": lr / 10}, {"params": self.head.parameters()}]
            return kind(groups, lr=lr)
        return kind(self.parameters(), lr=lr)


def frozen_runs() -> None:
    from lightning_sanity import ModeGuardCallback

    train = digit_image_tensors("train")
    rank = {None: 0.0, "info": 1.0, "warning": 2.0, "error": 3.0}
    severities: list[tuple[str, str, float]] = []
    changes: list[tuple[str, str, float]] = []
    kinds = {
        "none": "healthy",
        "requires_grad": "healthy",
        "requires_grad+eval": "healthy",
        "bn": "healthy",
        "eval own group": "deliberate",
        "eval": "broken",
    }
    for freeze, kind in kinds.items():
        for optimizer in ("adam", "sgd"):
            for batch_size in (16, 64):
                for seed in SEEDS[:2]:
                    pl.seed_everything(seed, verbose=False)
                    callback = ModeGuardCallback()
                    model = FineTune(freeze, optimizer)
                    start = torch.cat([p.detach().flatten().clone() for p in model.backbone.parameters()])
                    run = trainer([callback], epochs=1, num_sanity_val_steps=0)
                    run.fit(model, DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True))
                    end = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
                    found = [f for f in callback.findings if f.code == "mode.eval_frozen_but_trained"]
                    worst = max((f.severity for f in found), default=None)
                    group = f"{freeze} {optimizer} bs{batch_size}"
                    severities.append((group, kind, rank[str(worst) if worst is not None else None]))
                    changes.append((group, kind, float((end - start).norm() / start.norm())))
    table("mode.eval_frozen_but_trained: worst severity (0 none, 1 info, 2 warning, 3 error)", severities, "severity")
    table("backbone weights moved, ||W_end - W_start|| / ||W_start|| over one epoch", changes, "relative change")


# ---------------------------------------------------------------- mode.params_changed_in_eval: re-masking


class MaskedConv(torch.nn.Conv2d):
    """PixelCNN's masked convolution, re-masked in place in every forward (``how="clamp"``: non-negative weights)."""

    def __init__(self, channels_in: int, channels_out: int, how: str = "mask") -> None:
        super().__init__(channels_in, channels_out, 5, padding=2)
        mask = torch.ones_like(self.weight)
        mask[:, :, 2, 3:] = 0
        mask[:, :, 3:] = 0
        self.register_buffer("mask", mask)
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "clamp":
            self.weight.data.clamp_(min=0)
        else:
            self.weight.data *= self.mask
        return super().forward(x)


class MaskedNet(Classifier):
    """``leak``: what else the validation step or forward does to the weights."""

    def __init__(self, how: str, leak: str) -> None:
        net = torch.nn.Sequential(
            MaskedConv(3, 8, how),
            torch.nn.ReLU(),
            MaskedConv(8, 8, how),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 10),
        )
        super().__init__(net, lr=1e-2)
        self.leak = leak

    def forward(self, x: Tensor) -> Tensor:
        if self.leak == "drift":
            self.net[-1].bias.data += 1e-2
        return super().forward(x)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        with torch.no_grad():
            if self.leak == "add":
                self.net[0].weight.add_(1e-3)
            elif self.leak == "scale" and batch_idx == 1:
                self.net[0].weight.mul_(0.5)  # keeps masked zeros at zero: only a replay of forward tells


def mask_runs() -> None:
    from lightning_sanity import ModeGuardCallback

    train, val = digit_image_tensors("train"), digit_image_tensors("val")
    rows: list[tuple[str, str, float]] = []
    for how, leak, kind in (
        ("mask", "none", "healthy"),
        ("clamp", "none", "healthy"),
        ("mask", "add", "broken"),
        ("mask", "scale", "broken"),
        ("mask", "drift", "broken"),
    ):
        for seed in SEEDS:
            pl.seed_everything(seed, verbose=False)
            callback = ModeGuardCallback()
            run = trainer([callback], epochs=2, limit_train_batches=20, limit_val_batches=2)
            loaders = [DataLoader(TensorDataset(*data), batch_size=64, shuffle=data is train) for data in (train, val)]
            run.fit(MaskedNet(how, leak), *loaders)
            fired = any(f.code == "mode.params_changed_in_eval" for f in callback.findings)
            rows.append((f"{how} re-parametrisation, leak {leak}", kind, float(fired)))
    table("mode.params_changed_in_eval fired (1) or not (0)", rows, "fired")


FAMILIES: dict[str, Callable[[], None]] = {
    "metric": metric_runs,
    "grad": grad_runs,
    "plain": plain_runs,
    "bn": bn_runs,
    "frozen": frozen_runs,
    "mask": mask_runs,
}


def main(names: list[str]) -> None:
    for name in names or list(FAMILIES):
        FAMILIES[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
