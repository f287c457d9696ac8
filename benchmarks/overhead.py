"""Wall-time overhead of the sanity callbacks, and their cost at scale.

    python benchmarks/overhead.py              # full table (a few minutes on 2 CPU cores)
    python benchmarks/overhead.py --repeats 1  # quick look

1. The same seeded fit of a small CNN (~0.5M parameters, 32x32 inputs, batch 128, written the
   common way: ``validation_step`` computes ``self(x)`` and logs the loss) without callbacks, with
   ``default_callbacks()``, and with each callback alone, alternating in one process; the median
   of the per-repeat ratios is reported.
2. A 50,000-class head: ConfusionCallback's state stays O(C) (elements held by its metrics).
3. A deep 100-layer MLP: GradientFlowCallback's time per optimizer step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity.demos import Classifier


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 64), *block(64, 128), *block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(256, num_classes),
    )  # fmt: skip


def loaders(batches: int, batch_size: int = 128, num_classes: int = 10, features: tuple = (3, 32, 32)) -> tuple:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, *features, generator=generator)
    y = torch.randint(0, num_classes, (batches * batch_size,), generator=generator)
    val = batches // 4 * batch_size
    return (
        DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[:val], y[:val]), batch_size=batch_size),
    )


def timed_fit(model_fn: Callable[[], pl.LightningModule], callbacks: list, train: DataLoader, val: DataLoader) -> float:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=2, callbacks=callbacks,
    )  # fmt: skip
    model = model_fn()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run report
        trainer.fit(model, train, val)
    return time.perf_counter() - start


def overhead_table(repeats: int) -> None:
    train, val = loaders(batches=16)
    model_fn = lambda: Classifier(small_cnn(), lr=1e-3)  # noqa: E731
    params = sum(p.numel() for p in model_fn().parameters())
    variants: dict[str, Callable[[], list]] = {
        "default_callbacks()": ls.default_callbacks,
        **{cls.__name__: (lambda cls=cls: [cls()]) for cls in ls.defaults.DEFAULT_CALLBACKS},
    }
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    baseline_times = []
    timed_fit(model_fn, [], train, val)  # warm-up
    for _ in range(repeats):
        for name, make in variants.items():
            baseline = timed_fit(model_fn, [], train, val)
            baseline_times.append(baseline)
            ratios[name].append(timed_fit(model_fn, make(), train, val) / baseline)
    print(f"\n### Overhead: small CNN, {params / 1e6:.2f}M parameters, 32x32 inputs, batch 128, 2 epochs")
    print(f"median fit time without callbacks: {statistics.median(baseline_times):.2f} s, {repeats} repeats\n")
    print("| callbacks | median wall-time ratio | min | max |\n|---|---|---|---|")
    for name, values in ratios.items():
        print(f"| {name} | {statistics.median(values):.3f}x | {min(values):.3f}x | {max(values):.3f}x |")


def confusion_at_scale(num_classes: int = 50_000) -> None:
    train, val = loaders(batches=4, batch_size=64, num_classes=num_classes, features=(32,))
    callback = ls.ConfusionCallback()
    model_fn = lambda: Classifier(nn.Linear(32, num_classes), lr=1e-3)  # noqa: E731
    seconds = timed_fit(model_fn, [callback], train, val)
    held = sum(getattr(counts, state).numel() for counts in callback._counts.values() for state in counts._defaults)
    print(f"\n### ConfusionCallback with a {num_classes:,}-class head")
    print(f"metric state elements held: {held:,} (C = {num_classes:,}, C² = {num_classes**2:,}); fit {seconds:.1f} s")


class DeepMLP(Classifier):
    def __init__(self, depth: int = 100, width: int = 64) -> None:
        layers: list[nn.Module] = [nn.Linear(32, width)]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU()]
        super().__init__(nn.Sequential(*layers, nn.Linear(width, 10)), lr=1e-3)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)


def gradient_flow_deep_mlp() -> None:
    train, val = loaders(batches=32, batch_size=64, features=(32,))
    without = statistics.median(timed_fit(DeepMLP, [], train, val) for _ in range(3))
    with_callback = statistics.median(timed_fit(DeepMLP, [ls.GradientFlowCallback()], train, val) for _ in range(3))
    steps = 2 * len(train)
    print("\n### GradientFlowCallback on a 100-layer MLP (LayerNorm + ReLU, 64 wide)")
    print(f"fit without: {without:.2f} s, with: {with_callback:.2f} s, ratio {with_callback / without:.3f}x, ")
    print(f"extra per optimizer step: {(with_callback - without) / steps * 1e3:.2f} ms (median of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-overhead", action="store_true", help="only the scale measurements")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_sanity").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if not args.skip_overhead:
        overhead_table(args.repeats)
    confusion_at_scale()
    gradient_flow_deep_mlp()


if __name__ == "__main__":
    main()
