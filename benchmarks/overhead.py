"""CPU-time overhead of the sanity callbacks, split into a fixed cost per fit and a per-step cost.

    python benchmarks/overhead.py              # the README table (about 20 minutes on one CPU core)
    python benchmarks/overhead.py --repeats 1  # quick look

Each program is fitted, with the same seed, for ``E1`` and ``E2`` epochs (default 2 and 5: the first epoch holds
the one-time work, e.g. GradientFlow's 20 dense check steps and the step-zero checks, in both), without callbacks
and with ``default_callbacks()``, alternating in one process. A fit costs ``fixed + epochs * per_epoch`` of
process CPU time (``time.process_time``: what the machine spends, independent of other load), so

    per_epoch = (T(E2) - T(E1)) / (E2 - E1)         fixed = T(E1) - E1 * per_epoch

and the pack's fixed cost is ``fixed_with - fixed_without`` (seconds the user waits once per fit:
one-time checks, pipeline inspection, figures, the report), its per-step cost
``per_epoch_with / per_epoch_without - 1`` (what it adds to every training and validation step).
Both are medians over ``--repeats``. The difference of two whole fits is noisy (on a shared VM the speed of
the same fit drifts by +-10 % between runs), so the same split is also applied to direct measurements taken
during the fits:

- *inside the pack*: the CPU time spent in the pack's callback hooks, in the forward and tensor hooks it
  registers on the user's modules, and at the end of the run (figures, report files), less Python's garbage
  collections (which land in whichever code crosses the allocation threshold). Its per-epoch part is read
  directly in the ``E2``-epoch fits, from the start of the second epoch (past the first epoch's one-time work)
  to the end of training; the rest is its fixed part. (A difference of two fits does not work here: the one-time
  work, e.g. GradientFlow's 20 dense checks, varies between fits by more than the per-epoch cost.)
- *and its dispatch*: plus what Lightning spends dispatching every hook to as many callbacks that override none
  (``IdleCallback``, fits with ``"idle"``), which any eight callbacks cost and the pack's own timers cannot see;
- *outside the pack*: the whole-fit difference at ``E1`` epochs less the time inside the pack, paired per repeat
  (about zero, within the noise of the whole fits, when the direct measurement misses nothing), and how much
  more of the fit went to Python's garbage collections with the pack than without it.

Programs log to a ``CSVLogger`` (so figures are
rendered and the report files written, as in a real run) and use one torch thread, for repeatable numbers. Work
done once per validation run (weight checksums, epoch-end judgements) is spread over the steps of an epoch: with
the short epochs here (32-43 training steps) that inflates the per-step figure compared with real epochs of
hundreds of steps.

It also times the CPU spent drawing and saving each default figure (``figure_cost``: a fit pays it once, at its
end, for a logger without an image API), the CPU spent inside the pack's hooks during one fit (a direct per-step
measurement), and two scale properties: ConfusionCallback's state on a 50,000-class head and
GradientFlowCallback's per-step cost on a 100-layer MLP.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import io
import logging
import math
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import lightning.pytorch.trainer.call as pl_call
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T

import lightning_sanity as ls
import lightning_sanity.base as ls_base
import lightning_sanity.figures as ls_figures
import lightning_sanity.loggers as ls_loggers
import lightning_sanity.run as ls_run
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN

MEAN, STD = (0.1, 0.1, 0.1), (0.25, 0.25, 0.25)


@dataclass
class Program:
    """A typical training program: how to build its model and its train/val loaders."""

    name: str
    model: Callable[[], pl.LightningModule]
    loaders: Callable[[], tuple[DataLoader, DataLoader]]
    train_batches: int


def synthetic(batches: int, batch_size: int, num_classes: int, features: tuple[int, ...]) -> tuple[DataLoader, ...]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, *features, generator=generator)
    y = torch.randint(0, num_classes, (batches * batch_size,), generator=generator)
    val = max(batches // 4, 1) * batch_size
    return (
        DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[:val], y[:val]), batch_size=batch_size),
    )


def digit_loaders() -> tuple[DataLoader, DataLoader]:
    train = T.Compose([T.RandomRotation(10), T.ToTensor(), T.Normalize(MEAN, STD)])
    val = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    return (
        DataLoader(DigitImages(train, "train"), batch_size=32, shuffle=True),
        DataLoader(DigitImages(val, "val"), batch_size=64),
    )


def conv_net() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 64), *block(64, 128), *block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(256, 10),
    )  # fmt: skip


PROGRAMS = (
    Program(
        "digits, SmallCNN, torchvision transforms on PIL, batch 32",
        lambda: Classifier(SmallCNN(), lr=1e-3),
        digit_loaders,
        train_batches=43,
    ),
    Program(
        "conv net 0.37M params (BatchNorm, dropout), 32x32, batch 32",
        lambda: Classifier(conv_net(), lr=1e-3),
        lambda: synthetic(32, 32, 10, (3, 32, 32)),
        train_batches=32,
    ),
    Program(
        "torchvision ResNet-18 (11M params), 32x32, batch 16",
        lambda: Classifier(torchvision.models.resnet18(num_classes=10), lr=1e-3),
        lambda: synthetic(32, 16, 10, (3, 32, 32)),
        train_batches=32,
    ),
)


RUN_END = "run end (figures, report)"


@contextlib.contextmanager
def timed_hooks() -> Iterator[tuple[collections.Counter[str], collections.Counter[str]]]:
    """CPU seconds and calls per ``Callback.hook`` spent inside the pack while the block runs: every hook of every
    sanity callback runs through ``base._run_isolated``, the end of a run (figures, report files) through
    ``run.leave`` / ``run.abort``, and the forward, forward-pre and tensor hooks the pack registers on the user's
    modules are timed under ``[module hooks] <function>``. Python's garbage collections are left out: one runs
    wherever an allocation crosses its threshold, so a full collection of the whole process (tens to hundreds of
    ms) landing in a hook in one run length and not in another made the inside-the-pack split swing by more than
    the pack's own cost."""
    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    run_isolated, leave, abort = ls_base._run_isolated, ls_run.leave, ls_run.abort
    registrars = [(nn.Module, name) for name in ("register_forward_hook", "register_forward_pre_hook")]
    registrars.append((Tensor, "register_hook"))
    originals = [getattr(owner, name) for owner, name in registrars]

    def timed(callback: Any, hook: Any, trainer: pl.Trainer, args: tuple, kwargs: dict) -> Any:
        key = f"{type(callback).__name__}.{hook.__name__}"
        return timed_call(key, run_isolated, callback, hook, trainer, args, kwargs)

    def timing_registrar(register: Callable[..., Any]) -> Callable[..., Any]:
        def register_timed(target: Any, hook: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if getattr(hook, "__module__", "").startswith("lightning_sanity"):
                key = f"[module hooks] {hook.__qualname__.replace('.<locals>', '')}"
                hook = functools.partial(timed_call, key, hook)
            return register(target, hook, *args, **kwargs)

        return register_timed

    with cpu_timer(spent, calls) as timed_call:
        ls_base._run_isolated = timed
        ls_run.leave = lambda *args: timed_call(RUN_END, leave, *args)
        ls_run.abort = lambda *args: timed_call(RUN_END, abort, *args)
        for (owner, name), register in zip(registrars, originals, strict=True):
            setattr(owner, name, timing_registrar(register))
        try:
            yield spent, calls
        finally:
            ls_base._run_isolated, ls_run.leave, ls_run.abort = run_isolated, leave, abort
            for (owner, name), register in zip(registrars, originals, strict=True):
                setattr(owner, name, register)


@contextlib.contextmanager
def garbage_collections() -> Iterator[dict[str, float]]:
    """``{"total": CPU seconds}`` spent in Python's garbage collections while the block runs, kept up to date."""
    collecting = {"since": 0.0, "total": 0.0}

    def gc_clock(phase: str, info: dict) -> None:
        if phase == "start":
            collecting["since"] = time.process_time()
        else:
            collecting["total"] += time.process_time() - collecting["since"]

    gc.callbacks.append(gc_clock)
    try:
        yield collecting
    finally:
        gc.callbacks.remove(gc_clock)


@contextlib.contextmanager
def cpu_timer(spent: collections.Counter[str], calls: collections.Counter[str]) -> Iterator[Callable[..., Any]]:
    """``timed_call(key, function, *args)``: calls ``function`` and adds its CPU seconds, less the garbage
    collections that ran meanwhile, to ``spent[key]``."""
    with garbage_collections() as collecting:

        def timed_call(key: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            start, collected = time.process_time(), collecting["total"]
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += time.process_time() - start - (collecting["total"] - collected)
                calls[key] += 1

        yield timed_call


@contextlib.contextmanager
def timed_dispatch() -> Iterator[collections.Counter[str]]:
    """CPU seconds spent in Lightning's calls of callback hooks (``trainer.call._call_callback_hooks``): with
    :class:`IdleCallback` s, what dispatching every hook to that many callbacks costs before any does anything."""
    spent: collections.Counter[str] = collections.Counter()
    dispatch = pl_call._call_callback_hooks
    with cpu_timer(spent, collections.Counter()) as timed_call:
        pl_call._call_callback_hooks = lambda *args, **kwargs: timed_call("dispatch", dispatch, *args, **kwargs)
        try:
            yield spent
        finally:
            pl_call._call_callback_hooks = dispatch


class IdleCallback(pl.Callback):
    """A callback overriding no hook: what Lightning's dispatch of every hook to one more callback costs."""

    def __init__(self, index: int) -> None:
        self.index = index

    @property
    def state_key(self) -> str:
        return f"IdleCallback{self.index}"


KITS: dict[str, Callable[[], list[pl.Callback]]] = {
    "without": list,
    "pack": ls.default_callbacks,
    "idle": lambda: [IdleCallback(index) for index in range(len(ls.default_callbacks()))],
}
"""The callbacks a measured fit runs with: none, the pack, or as many callbacks that do nothing."""


class EpochMarks(pl.Callback):
    """Reads a running total where the second training epoch starts and where training ends (first in the callback
    list: before the pack's hooks of those events)."""

    def __init__(self, total: Callable[[], float]) -> None:
        self.total = total
        self.marks: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.marks["second epoch"] = self.total()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks["train end"] = self.total()


@dataclass
class Fit:
    cpu: float  # process CPU seconds of trainer.fit
    dispatch: float  # of which in Lightning's calls of callback hooks (``_call_callback_hooks``)
    spent: collections.Counter[str]  # of which inside the pack, per hook (see ``timed_hooks``)
    calls: collections.Counter[str]
    steady_per_epoch: float  # inside the pack per epoch after the first (its one-time work), to the end of training
    collecting: float  # of the whole fit, in Python's garbage collections

    @property
    def in_hooks(self) -> float:
        return sum(self.spent.values())


def cpu_seconds_of_fit(program: Program, epochs: int, kit: str) -> Fit:
    pl.seed_everything(0, verbose=False)
    train, val = program.loaders()
    model = program.model()
    with tempfile.TemporaryDirectory() as log_dir, contextlib.ExitStack() as stack:
        if kit == "pack":
            spent, calls = stack.enter_context(timed_hooks())
        else:
            spent, calls = collections.Counter(), collections.Counter()
        # the dispatch is timed only when nothing inside it is: the pack's timers would count as dispatch
        dispatch = stack.enter_context(timed_dispatch()) if kit != "pack" else collections.Counter()
        marks = EpochMarks(lambda: sum(spent.values()))
        trainer = pl.Trainer(
            accelerator="cpu", max_epochs=epochs, logger=pl.loggers.CSVLogger(log_dir), enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=2,
            callbacks=[marks, *KITS[kit]()],
        )  # fmt: skip
        collections_of_fit = stack.enter_context(garbage_collections())
        start = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # the run report
            trainer.fit(model, train, val)
        cpu = time.process_time() - start
        steady = (marks.marks["train end"] - marks.marks["second epoch"]) / (epochs - 1) if epochs > 1 else math.nan
        return Fit(cpu, dispatch["dispatch"], spent, calls, steady, collections_of_fit["total"])


def overhead_row(program: Program, short: int, long: int, repeats: int) -> str:
    fits: dict[tuple[str, int], list[Fit]] = {(kit, e): [] for kit in ("without", "pack") for e in (short, long)}
    fits["idle", long] = []
    cpu_seconds_of_fit(program, short, "without")  # warm-up: imports, allocator, dataset caches
    for _ in range(repeats):
        for kit, epochs in fits:
            fits[kit, epochs].append(cpu_seconds_of_fit(program, epochs, kit))
    median = {key: statistics.median(fit.cpu for fit in values) for key, values in fits.items()}
    per_epoch = {kit: (median[kit, long] - median[kit, short]) / (long - short) for kit in ("without", "pack")}
    fixed = {kit: median[kit, short] - short * per_epoch[kit] for kit in ("without", "pack")}
    extra_fixed = fixed["pack"] - fixed["without"]
    per_step = per_epoch["pack"] / per_epoch["without"] - 1
    step_ms = (per_epoch["pack"] - per_epoch["without"]) / program.train_batches * 1e3
    # Inside the pack the cost per epoch is read directly in the long fits, from the second epoch (past the first
    # epoch's one-time work) to the end of training, and the rest of the time inside the pack is its fixed cost:
    # no difference of two fits, whose one-time work (e.g. GradientFlow's 20 dense checks) varies by more than the
    # per-epoch cost between fits.
    hooks_per_epoch = statistics.median(fit.steady_per_epoch for fit in fits["pack", long])
    hooks_fixed = statistics.median(fit.in_hooks - long * fit.steady_per_epoch for fit in fits["pack", long])
    # Lightning's dispatch to as many callbacks doing nothing, all counted as per-step cost (its few once-per-fit
    # hooks are negligible): what the pack's hooks cost before any of them does anything.
    idle = statistics.median(fit.dispatch for fit in fits["idle", long])
    idle_per_epoch = (idle - statistics.median(fit.dispatch for fit in fits["without", long])) / long
    all_in_per_epoch = hooks_per_epoch + idle_per_epoch
    # What the direct measurement misses, if anything: the whole-fit difference at E1 epochs less the time inside
    # the pack, per repeat (paired fits run minutes apart, not hours), then the median.
    pairs = list(zip(fits["pack", short], fits["without", short], strict=True))
    outside = statistics.median(pack.cpu - pack.in_hooks - without.cpu for pack, without in pairs)
    collecting = statistics.median(pack.collecting - without.collecting for pack, without in pairs)

    def share(seconds_per_epoch: float) -> str:
        ms = seconds_per_epoch / program.train_batches * 1e3
        return f"{seconds_per_epoch / per_epoch['without']:+.1%} ({ms:+.2f} ms)"

    return (
        f"| {program.name} | {median['without', long]:.1f} s | {extra_fixed:+.2f} s | {per_step:+.1%} "
        f"({step_ms:+.2f} ms) | {hooks_fixed:+.2f} s | {share(hooks_per_epoch)} | {share(all_in_per_epoch)} "
        f"| {outside:+.2f} s (garbage collections {collecting:+.2f} s) |"
    )


TABLE_HEADER = (
    "| program | fit of {long} epochs without the pack | fixed cost per fit | per-step cost "
    "| fixed cost inside the pack | per-step cost inside the pack | per-step cost inside the pack and its dispatch "
    "| whole-fit difference outside the pack, {short} epochs |\n"
    "|---|---|---|---|---|---|---|---|"
)


def overhead_table(repeats: int, short: int, long: int) -> None:
    print(f"\n### Overhead of default_callbacks(): CPU time, fits of {short} and {long} epochs, {repeats} repeats")
    print(TABLE_HEADER.format(short=short, long=long))
    for program in PROGRAMS:
        print(overhead_row(program, short, long, repeats), flush=True)


def time_in_hooks(program: Program, epochs: int) -> None:
    """CPU time spent inside the pack during one fit, per callback hook and module hook: a direct measurement that
    does not depend on subtracting two noisy fits."""
    idle = cpu_seconds_of_fit(program, epochs, "idle").dispatch
    idle -= cpu_seconds_of_fit(program, epochs, "without").dispatch
    fit = cpu_seconds_of_fit(program, epochs, "pack")
    steps = program.train_batches * epochs
    print(f"\n### CPU time inside the pack: {program.name}, {epochs} epochs ({steps} training steps)")
    print(f"fit {fit.cpu:.2f} s, in the pack {fit.in_hooks:.3f} s = {fit.in_hooks / steps * 1e3:.2f} ms per step")
    print(
        f"Lightning's dispatch of every hook to {len(KITS['idle']())} callbacks that do nothing: {idle:.3f} s = "
        f"{idle / steps * 1e3:.2f} ms per step"
    )
    print("| hook | calls | total | per call |\n|---|---|---|---|")
    for key, seconds in fit.spent.most_common(16):
        print(f"| {key} | {fit.calls[key]} | {seconds * 1e3:.1f} ms | {seconds / fit.calls[key] * 1e3:.3f} ms |")


def confusion_at_scale(num_classes: int = 50_000) -> None:
    train, val = synthetic(4, 64, num_classes, (32,))
    callback = ls.ConfusionCallback()
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, callbacks=[callback],
    )  # fmt: skip
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(Classifier(nn.Linear(32, num_classes), lr=1e-3), train, val)
    seconds = time.process_time() - start
    held = sum(getattr(counts, state).numel() for counts in callback._counts.values() for state in counts._defaults)
    print(f"\n### ConfusionCallback with a {num_classes:,}-class head")
    print(f"metric state elements held: {held:,} (C = {num_classes:,}, C² = {num_classes**2:,})")
    print(f"fit: {seconds:.1f} s CPU")


class DeepMLP(Classifier):
    def __init__(self, depth: int = 100, width: int = 64) -> None:
        layers: list[nn.Module] = [nn.Linear(32, width)]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU()]
        super().__init__(nn.Sequential(*layers, nn.Linear(width, 10)), lr=1e-3)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)


def gradient_flow_deep_mlp(short: int, long: int) -> None:
    program = Program("100-layer MLP", DeepMLP, lambda: synthetic(32, 64, 10, (32,)), train_batches=32)
    print("\n### GradientFlowCallback's share on a 100-layer MLP (LayerNorm + ReLU, 64 wide), whole pack")
    print(TABLE_HEADER.format(short=short, long=long))
    print(overhead_row(program, short, long, repeats=3))


def figure_inputs() -> dict[str, Callable[[], Any]]:
    """Each default figure, as a function drawing it from realistic inputs: a 10-class confusion matrix, the 41
    modules with parameters of a ResNet-18, 3-channel histograms of 64 32x32 images per split, 8 RGB samples per
    split."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randint(0, 40, (10, 10), generator=generator) + torch.diag(torch.full((10,), 300))
    classes = [f"class {index}" for index in range(10)]
    resnet = torchvision.models.resnet18(num_classes=10)
    # GradientFlowCallback draws one bar per module holding parameters, named as in ``named_modules``.
    names = [name for name, module in resnet.named_modules() if list(module.parameters(recurse=False))]
    layers = {name: (1e-4 * 1.3**index, 1e-3 * 1.3**index) for index, name in enumerate(names)}
    images = {split: torch.randn(64, 3, 32, 32, generator=generator) for split in ("train", "val")}
    per_channel = {split: batch.transpose(0, 1).reshape(3, -1).T for split, batch in images.items()}
    normalization = {"train": (MEAN, STD), "val": None}
    return {
        "confusion matrix": lambda: ls_figures.confusion_figure(matrix, classes, "val confusion matrix, epoch 4"),
        f"gradient flow ({len(layers)} layers)": lambda: ls_figures.gradient_flow_figure(layers),
        "input histograms": lambda: ls_figures.input_histogram_figure(per_channel),
        "sample grid": lambda: ls_figures.sample_grid_figure(images, normalization),
    }


def figure_cost(repeats: int = 5) -> None:
    """CPU time to draw and save each default figure as a PNG (as written for a CSVLogger): the first time in this
    process (fonts and text caches are loaded then: what a fit pays once), then the median of ``repeats``."""
    print(f"\n### CPU time per default figure: first in this process, then median of {repeats} (build + save PNG)")
    print("| figure | first | build | save PNG | total |\n|---|---|---|---|---|")
    firsts, totals = [], []
    with tempfile.TemporaryDirectory() as directory:
        for name, draw in figure_inputs().items():
            start = time.process_time()
            ls_loggers.save_png(draw(), directory, "first", 0)
            firsts.append(time.process_time() - start)
            build, save = [], []
            for _ in range(repeats):
                start = time.process_time()
                figure = draw()
                built = time.process_time()
                ls_loggers.save_png(figure, directory, "figure", 0)
                build.append(built - start)
                save.append(time.process_time() - built)
            row = statistics.median(build), statistics.median(save)
            totals.append(sum(row))
            print(
                f"| {name} | {firsts[-1] * 1e3:.0f} ms | {row[0] * 1e3:.0f} ms | {row[1] * 1e3:.0f} ms "
                f"| {sum(row) * 1e3:.0f} ms |"
            )
    print(f"| all | {sum(firsts) * 1e3:.0f} ms | | | {sum(totals) * 1e3:.0f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, nargs=2, default=(2, 5), metavar=("E1", "E2"))
    parser.add_argument("--skip-overhead", action="store_true", help="only the scale measurements")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_sanity").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, 1 torch thread, torch {torch.__version__}, lightning {pl.__version__}")
    if not args.skip_overhead:
        overhead_table(args.repeats, *args.epochs)
    figure_cost()
    time_in_hooks(PROGRAMS[0], epochs=4)
    confusion_at_scale()
    gradient_flow_deep_mlp(*args.epochs)


if __name__ == "__main__":
    main()
