"""What enters the model: per-split input statistics and target distribution."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from lightning_sanity.base import EvalSplit, SanityCallback, is_int, require
from lightning_sanity.batch import BatchAdapter
from lightning_sanity.channel_stats import (
    ChannelStats,
    ChannelSummary,
    ClassCounts,
    channel_view,
    checked_moments,
    to_host,
)
from lightning_sanity.dense_targets import MaskEvidence, dense_class_targets, interpolating_steps
from lightning_sanity.figures import input_histogram_figure, sample_grid_figure
from lightning_sanity.findings import Severity
from lightning_sanity.loggers import log_scalars, scalar_key
from lightning_sanity.observe import dataloader_label
from lightning_sanity.pipelines import find_normalize, iter_loaders

IMAGE_MAX = 50.0
"""A non-negative image batch whose max exceeds this and whose mean exceeds :data:`IMAGE_MEAN` looks like 0-255."""
IMAGE_MEAN = 2.0
FEATURE_SCALE = 100.0
"""A feature whose ``max(|mean|, std)`` exceeds this is far from standardised (wine's proline is ~750)."""
COLLAPSE_RATIO = 0.01
"""Every channel with ``std <= COLLAPSE_RATIO * |mean|`` means the inputs are nearly constant (case 1: ~0.002)."""
SHIFT_MEAN = 3.0
"""A channel has shifted when its means differ by more than this many pooled standard deviations ..."""
SHIFT_STD_RATIO = 4.0
"""... or when one split's standard deviation is more than this many times the other's."""
SHIFT_MIN_SAMPLES = 16
"""Samples each side needs before the first batches of two splits are compared (else the epochs are)."""
SINGLE_CLASS_ALPHA = 1e-6
"""Chance that a shuffled loader produced the observed single-class batches, below which we warn."""
IMBALANCE_RATIO = 10.0
"""Most frequent class at least this many times as frequent as the rarest one is "strongly imbalanced"."""
IMBALANCE_MIN_SAMPLES = 100
IDENTICAL_MIN_SAMPLES = 4
"""Samples a training batch needs before "every sample is the same" is judged (two equal rows can be a duplicate)."""
_SHOWN = 8  # channels listed in messages and evidence
_FIGURE_SAMPLES = 64
"""Inputs per split kept (first batch of each epoch) for the histogram and sample-grid figures."""


# Pure rules -----------------------------------------------------------------------------------------------------


def looks_like_raw_pixels(summary: ChannelSummary) -> bool:
    """Non-negative image values, max well above 1 and mean above a few: the 0-255 signature."""
    seen = summary.seen
    if not bool(seen.any()):
        return False
    mean = float(summary.total[seen].sum() / summary.count[seen].sum())
    return (
        float(summary.minimum[seen].min()) >= 0 and float(summary.maximum[seen].max()) > IMAGE_MAX and mean > IMAGE_MEAN
    )


def unscaled_channels(summary: ChannelSummary) -> list[int]:
    """Channels whose ``max(|mean|, std)`` is in the hundreds or more."""
    return [int(c) for c in torch.nonzero(summary.seen & (summary.scale > FEATURE_SCALE)).flatten()]


def is_collapsed(summary: ChannelSummary) -> bool:
    """Every channel nearly constant (``std <= 1% of |mean|``, which includes exactly constant), over >= 2 samples."""
    seen = summary.seen & (summary.count >= 2)
    if summary.samples < 2 or not bool(seen.any()):
        return False
    return bool((summary.std[seen] <= COLLAPSE_RATIO * summary.mean[seen].abs()).all())


@dataclass(frozen=True)
class Shift:
    """How far apart two splits' per-channel distributions are."""

    mean_gap: Tensor
    """``|mean_a - mean_b| / pooled std`` per channel."""
    std_ratio: Tensor
    """``max(std) / min(std)`` per channel."""
    shifted: Tensor
    """Channels beyond :data:`SHIFT_MEAN` or :data:`SHIFT_STD_RATIO`."""

    @property
    def fraction(self) -> float:
        return float(self.shifted.double().mean()) if self.shifted.numel() else 0.0


def shift_between(a: ChannelSummary, b: ChannelSummary) -> Shift | None:
    """Standardised mean difference and std ratio per channel; ``None`` if the channels do not correspond."""
    if a.channels != b.channels:
        return None
    usable = a.seen & b.seen & (a.count >= 2) & (b.count >= 2)
    std_a, std_b = a.std[usable], b.std[usable]
    # Ignore channels constant in both splits (an alpha channel): they carry no distribution to compare.
    varied = torch.maximum(std_a, std_b) > 0
    std_a, std_b = std_a[varied], std_b[varied]
    mean_a, mean_b = a.mean[usable][varied], b.mean[usable][varied]
    pooled = ((std_a**2 + std_b**2) / 2).sqrt()
    gap = (mean_a - mean_b).abs() / pooled
    ratio = torch.maximum(std_a, std_b) / torch.minimum(std_a, std_b).clamp_min(torch.finfo(torch.float64).tiny)
    return Shift(gap, ratio, (gap > SHIFT_MEAN) | (ratio > SHIFT_STD_RATIO))


def single_class_probability(single: int, batch_sizes: Sequence[int], counts: Sequence[int]) -> float:
    """Upper bound on the chance that a shuffled loader yields ``single`` or more one-class batches.

    With class frequencies ``p_k`` a batch of ``B`` samples holds one class with probability
    ``sum_k p_k ** B`` (sampling without replacement makes it smaller still). ``p_k`` is the observed
    frequency raised to a 3-sigma upper bound, and the largest per-batch probability is used, so the
    bound stays conservative when the frequencies come from few samples.
    """
    seen = sum(counts)
    if not batch_sizes or seen == 0:
        return 1.0
    upper = [min(1.0, p + 3 * math.sqrt(p * (1 - p) / seen) + 1 / seen) for p in (c / seen for c in counts if c)]
    q = min(1.0, max(sum(p**size for p in upper) for size in batch_sizes))
    n = len(batch_sizes)
    return min(1.0, sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(single, n + 1)))


def class_index_targets(targets: Tensor | None) -> Tensor | None:
    """Targets that are one class index per sample, ``(N,)`` or ``(N, 1)`` integers; else ``None``."""
    if targets is None or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        return None
    if targets.ndim == 1 or (targets.ndim == 2 and targets.shape[1] == 1):
        return targets.reshape(-1) if targets.numel() else None
    return None


def _channel_list(values: Tensor, channels: Sequence[int] | None = None) -> list[float]:
    picked = values if channels is None else values[list(channels)]
    return [round(float(v), 4) for v in picked[:_SHOWN]]


# The callback ---------------------------------------------------------------------------------------------------


class BatchStatsCallback(SanityCallback):
    """What enters the model: per-split input statistics and the target distribution.

    Per split (``train``, ``val``, ``test``; further val/test dataloaders as ``val/dataloader_idx_1`` ...) it
    accumulates exact per-channel statistics of float inputs with a torchmetrics metric (channel =
    dim 1 of >= 3-D inputs, the last dim of 2-D inputs) and logs them each epoch as
    ``sanity/batch_stats/<split>/{mean,std,min,max}_c<i>`` and ``.../non_finite_fraction``. The first
    ``check_batches`` batches of each split are judged on the host (Lightning's sanity-check val
    batches included, so a broken pipeline is reported before the first optimizer step), then each
    epoch's aggregate. Integer inputs (token ids) are never judged by float rules.

    Findings: ``input.non_finite``, ``input.unscaled``, ``input.collapsed``, ``input.split_shift``,
    ``data.identical_samples``, ``target.single_class_batches``, ``target.shape``, ``target.imbalance``.

    Args:
        check_batches: How many leading batches of each split to judge one by one (each costs one host sync).
        single_class_window: How many leading training batches to inspect for single-class batches.
        log_channels: How many leading channels to log statistics for.
        max_classes: Class indices counted per epoch for ``target.imbalance`` are ``0 .. max_classes - 1``.
        stats_every_n_batches: After a split's first pass in the run (the first training epoch, the first validation
            epoch), one batch in N of that split feeds its epoch statistics and class counts (the first pass saw every
            sample; later ones see the same samples again); 1 keeps every batch.
        strict: Raise :class:`~lightning_sanity.SanityError` on the first ERROR finding.
        batch_adapter: A function ``batch -> (inputs, targets)`` for batch structures we do not understand.
        figure_every_n_epochs: Log train-vs-val input histograms and a grid of sample inputs (de-normalised
            with the pipeline's Normalize when found) at the first epoch, then every N epochs; 0 turns them off.
        save_dir: Also save the figures as PNG files here.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Example::

        trainer = Trainer(callbacks=[BatchStatsCallback(check_batches=2)])
        trainer.fit(model, train_loader, val_loader)
    """

    name: ClassVar[str] = "batch_stats"
    batch_checks: ClassVar[str] = "input statistics, label balance, train/val shift (input.*, target.*)"

    def __init__(
        self,
        *,
        check_batches: int = 3,
        single_class_window: int = 8,
        log_channels: int = 3,
        max_classes: int = 1000,
        stats_every_n_batches: int = 4,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        figure_every_n_epochs: int = 5,
        save_dir: str | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            strict=strict, batch_adapter=batch_adapter, figure_every_n_epochs=figure_every_n_epochs, save_dir=save_dir
        )
        self.configure_findings(ignore, severity)
        require(is_int(check_batches) and check_batches >= 1, "check_batches", "an int >= 1", check_batches)
        require(
            is_int(single_class_window) and single_class_window >= 2,
            "single_class_window",
            "an int >= 2",
            single_class_window,
        )
        require(is_int(log_channels) and log_channels >= 0, "log_channels", "an int >= 0", log_channels)
        require(is_int(max_classes) and max_classes >= 2, "max_classes", "an int >= 2", max_classes)
        require(
            is_int(stats_every_n_batches) and stats_every_n_batches >= 1,
            "stats_every_n_batches",
            "an int >= 1",
            stats_every_n_batches,
        )
        self.check_batches = check_batches
        self.single_class_window = single_class_window
        self.log_channels = log_channels
        self.max_classes = max_classes
        self.stats_every_n_batches = stats_every_n_batches
        self._stats: dict[str, ChannelStats] = {}
        self._class_counts: ClassCounts | None = None
        self._reset_run()
        self._train_reference: ChannelSummary | None = None
        self._spatial: dict[str, bool] = {}
        self._figure_inputs: dict[str, Tensor] = {}

    def _reset_run(self) -> None:
        self._checked: Counter[str] = Counter()
        self._passes: Counter[str] = Counter()
        """Completed epochs per split label in this run: after the first, one batch in ``stats_every_n_batches``."""
        self._first_batches: dict[str, ChannelSummary] = {}
        self._first_classes: dict[str, Counter[int]] = {}
        self._identical_firsts: list[Tensor] = []
        """The sample of each leading training batch whose samples were all the same (while every one was)."""
        self._identical_sizes: list[int] = []
        self._identical_targets = True
        self._window_sizes: list[int] = []
        self._window_single = 0
        self._window_classes: Counter[int] = Counter()
        self._single_class_pending = False
        self._imbalance_checked = False
        self._masks: dict[str, MaskEvidence] = {}
        """Per split label, the evidence of the first batches' dense class targets, until it is judged."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._reset_run()

    # Batches --------------------------------------------------------------------------------------------------

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._observe(trainer, batch, "train", "train", self._accumulates("train", batch_idx))

    @override
    def on_eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: EvalSplit,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        if split != "predict":  # compared with training, split by split; prediction inputs are not judged
            label = dataloader_label(split, dataloader_idx)
            self._observe(trainer, batch, split, label, self._accumulates(label, batch_idx))

    def _accumulates(self, label: str, batch_idx: int) -> bool:
        return self._passes[label] == 0 or batch_idx % self.stats_every_n_batches == 0

    def _observe(self, trainer: pl.Trainer, batch: Any, split: str, label: str, accumulate: bool) -> None:
        """Judge the leading batches; with ``accumulate``, add the batch to the epoch statistics and class counts."""
        if not accumulate and self._checked[label] >= self.check_batches and self._window_full():
            return
        parts = self.split_batch(trainer, batch)
        if parts is None:
            return
        view = channel_view(parts.inputs) if parts.inputs is not None else None
        if view is not None and accumulate:
            self._spatial[label] = parts.inputs is not None and parts.inputs.ndim >= 3
            self._stats_for(label, view.device).update(view)
            if label in ("train", "val") and label not in self._figure_inputs and self.figures_wanted(trainer):
                self._figure_inputs[label] = parts.inputs[:_FIGURE_SAMPLES].detach().clone()  # type: ignore[index]
        labels = class_index_targets(parts.targets)
        if split == "train" and labels is not None and accumulate:
            self._counts_for(labels.device).update(labels)
        if self._checked[label] >= self.check_batches:
            if split == "train" and labels is not None:
                self._watch_single_class(trainer, labels)
            return
        self._checked[label] += 1
        if split == "train" and parts.inputs is not None:
            self._check_identical_samples(trainer, parts.inputs, parts.targets)
        if parts.targets is not None:
            self._check_first_targets(trainer, parts.targets, labels, split, label)
            self._watch_masks(trainer, parts.inputs, parts.targets, label)
        if view is not None:
            self._check_first_inputs(trainer, view, split, label)

    def _check_first_inputs(self, trainer: pl.Trainer, view: Tensor, split: str, label: str) -> None:
        summary = to_host(checked_moments(view))
        self._judge_inputs(trainer, summary, label, f"batch {self._checked[label] - 1}")
        earlier = self._first_batches.get(label)
        if earlier is None or earlier.channels == summary.channels:
            self._first_batches[label] = summary if earlier is None else earlier.merge(summary)
        if split == "train":
            self._compare_first_batches(trainer)

    def _check_first_targets(
        self, trainer: pl.Trainer, targets: Tensor, labels: Tensor | None, split: str, label: str
    ) -> None:
        if labels is None:
            return
        classes = Counter(labels.tolist())
        self._first_classes.setdefault(label, Counter()).update(classes)
        if targets.ndim == 2 and max(classes) >= 2:
            self.record(
                trainer,
                "target.shape",
                Severity.WARNING,
                f"{label} class-index targets have shape {tuple(targets.shape)} instead of ({targets.shape[0]},): "
                "comparisons like preds == target broadcast to N x N and losses may silently misbehave.",
                "Return the label as a plain int from the dataset, or squeeze the last dim "
                "(target.squeeze(1) / target.view(-1)) before the loss and metrics.",
                subject=label,
                evidence={"shape": list(targets.shape), "dtype": str(targets.dtype), "max_label": max(classes)},
            )
        if split == "train":
            self._watch_single_class(trainer, labels, classes)

    # Interpolated masks ---------------------------------------------------------------------------------------

    def _watch_masks(self, trainer: pl.Trainer, inputs: Tensor | None, targets: Tensor, label: str) -> None:
        masks = dense_class_targets(inputs, targets)
        if masks is None:
            return
        self._masks.setdefault(label, MaskEvidence()).update(masks)
        if self._checked[label] >= self.check_batches:
            self._judge_masks(trainer, label)

    def _judge_masks(self, trainer: pl.Trainer, label: str) -> None:
        """Judge (once) the masks of ``label``'s first batches: at its last checked batch, or at the end of an epoch
        that had fewer batches."""
        evidence = self._masks.pop(label, None)
        verdict = evidence.verdict() if evidence is not None else None
        if verdict is None:
            return
        split = label.split("/")[0]
        loaders = trainer.train_dataloader if split == "train" else getattr(trainer, f"{split}_dataloaders", None)
        steps = [step for name, loader in iter_loaders(loaders, split) if name == label
                 for step in interpolating_steps(loader)]  # fmt: skip
        where = f" The {label} dataloader's masks go through {', '.join(steps)}." if steps else ""
        self.record(
            trainer,
            "target.mask_interpolated",
            Severity.WARNING,
            f"The {label} segmentation masks went through interpolation: {verdict.describe()}.{where} The model is "
            "trained (or scored) on class ids that blend their neighbours at every border.",
            "Resample masks with nearest-neighbour: Resize(size, interpolation=InterpolationMode.NEAREST) on the mask "
            "(a PIL mask in mode 'P' is resized that way by PIL), F.interpolate(mask, mode='nearest'); with "
            "transforms.v2, wrap the mask in tv_tensors.Mask and transform it together with the image.",
            subject=label,
            evidence={
                "blended_ids": verdict.evidence(),
                "fractional_share": round(verdict.fractional_share, 4),
                "fractional_on_bands": round(verdict.band_share, 3),
                "reason": verdict.reason,
                "masks": verdict.images,
                "transforms": steps,
            },
        )

    # Identical samples -----------------------------------------------------------------------------------------

    def _check_identical_samples(self, trainer: pl.Trainer, inputs: Tensor, targets: Tensor | None) -> None:
        """Count the leading training batches whose samples are all equal; report when all ``check_batches`` are."""
        first_batch = self._checked["train"] == 1
        if not first_batch and len(self._identical_sizes) != self._checked["train"] - 1:
            return  # an earlier batch held different samples (or too few): decided
        if (
            inputs.ndim == 0
            or not inputs.numel()  # samples without elements (shape (N, 0)) are neither identical nor different
            or len(inputs) < IDENTICAL_MIN_SAMPLES
            or not torch.equal(inputs, inputs[:1].expand_as(inputs))
            or bool((inputs[0] == inputs.reshape(-1)[0]).all())  # one constant value everywhere: input.collapsed
        ):
            return
        self._identical_firsts.append(inputs[0].detach().clone())
        self._identical_sizes.append(len(inputs))
        if targets is not None and targets.ndim > 0 and not torch.equal(targets, targets[:1].expand_as(targets)):
            self._identical_targets = False
        if len(self._identical_sizes) < self.check_batches:
            return
        reference = self._identical_firsts[0]
        distinct = 1 + sum(
            not (first.shape == reference.shape and torch.equal(first, reference))
            for first in self._identical_firsts[1:]
        )
        batches = len(self._identical_sizes)
        across = "the same one in every batch" if distinct == 1 else f"{distinct} distinct ones across the batches"
        labels = "all with the same target" if self._identical_targets else "although their targets differ"
        self.record(
            trainer,
            "data.identical_samples",
            Severity.ERROR,
            f"Every sample of each of the first {batches} training batches (sizes {self._identical_sizes[:_SHOWN]}) "
            f"is the same input ({labels}): 1 distinct sample per batch, {across}. The model sees one example over "
            "and over.",
            "Check the Dataset's __getitem__ uses its index (self.data[index], not a fixed or stale variable), and "
            "that no transform or collate_fn broadcasts one sample over the batch.",
            subject="train",
            stage="train",
            evidence={
                "batches": batches,
                "batch_sizes": self._identical_sizes[:_SHOWN],
                "distinct_samples_per_batch": 1,
                "distinct_samples": distinct,
                "targets_identical": self._identical_targets,
            },
        )

    # Single-class batches -------------------------------------------------------------------------------------

    def _window_full(self) -> bool:
        return len(self._window_sizes) >= self.single_class_window

    def _watch_single_class(self, trainer: pl.Trainer, labels: Tensor, classes: Counter[int] | None = None) -> None:
        if self._window_full():
            return
        classes = Counter(labels.tolist()) if classes is None else classes
        self._window_sizes.append(labels.numel())
        self._window_single += len(classes) == 1
        self._window_classes.update(classes)
        if len(self._window_sizes) < self.single_class_window:
            return
        if self._window_single * 2 <= len(self._window_sizes):
            return
        counts = list(self._window_classes.values())
        if len(counts) >= 2 and self._report_single_class(trainer, counts, "the first batches"):
            return
        self._single_class_pending = True

    def _report_single_class(self, trainer: pl.Trainer, counts: Sequence[int], source: str) -> bool:
        chance = single_class_probability(self._window_single, self._window_sizes, counts)
        if len(counts) < 2 or chance >= SINGLE_CLASS_ALPHA:
            return False
        window = len(self._window_sizes)
        self.record(
            trainer,
            "target.single_class_batches",
            Severity.WARNING,
            f"{self._window_single} of the first {window} training batches hold a single class although "
            f"{source} show {len(counts)} classes (chance under shuffling <= {chance:.1e}): "
            "the training data is ordered by class and not shuffled.",
            "Pass shuffle=True to the training DataLoader (or a RandomSampler / DistributedSampler with shuffle=True).",
            subject="train",
            stage="train",
            evidence={
                "single_class_batches": self._window_single,
                "batches": window,
                "batch_sizes": self._window_sizes[:_SHOWN],
                "classes_seen": len(counts),
                "chance_if_shuffled": chance,
            },
        )
        return True

    # Epoch aggregates -----------------------------------------------------------------------------------------

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_split("train")
        if self._class_counts is not None:
            self._class_counts.reset()

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_split("val")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_split("test")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self._finish_split(trainer, "train")
        self._passes["train"] += 1
        if summary is not None:
            self._train_reference = summary
        self._finish_targets(trainer)
        self._judge_masks(trainer, "train")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:  # its few batches were all judged one by one
            return
        self._finish_eval(trainer, "val")
        self._draw_figures(trainer)

    def _draw_figures(self, trainer: pl.Trainer) -> None:
        """Histograms of train vs val inputs per channel and, for images, a grid of samples as the model sees them."""
        samples, self._figure_inputs = self._figure_inputs, {}
        if samples.keys() != {"train", "val"} or samples["train"].shape[1:2] != samples["val"].shape[1:2]:
            return
        per_channel = {}
        for split, inputs in samples.items():
            view = channel_view(inputs)
            if view is None:
                return
            per_channel[split] = view.transpose(1, 2).reshape(-1, view.shape[1])
        self.log_figure(trainer, "train_vs_val", "histograms", functools.partial(input_histogram_figure, per_channel))
        if all(inputs.ndim == 4 and inputs.shape[1] in (1, 3) for inputs in samples.values()):
            normalization = {
                "train": find_normalize(trainer.train_dataloader),
                "val": find_normalize(trainer.val_dataloaders),
            }
            self.log_figure(
                trainer, "train_vs_val", "samples", functools.partial(sample_grid_figure, samples, normalization)
            )

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_eval(trainer, "test")

    def _finish_eval(self, trainer: pl.Trainer, split: str) -> None:
        for label in sorted(_labels_of(self._masks, split)):
            self._judge_masks(trainer, label)
        train = self._stats.get("train")
        reference = train.summary() if train is not None and train.update_called else self._train_reference
        for label in sorted(_labels_of(self._stats, split)):
            summary = self._finish_split(trainer, label)
            self._passes[label] += 1
            if summary is not None and reference is not None:
                self._check_shift(trainer, reference, summary, label, "epoch")

    def _finish_split(self, trainer: pl.Trainer, label: str) -> ChannelSummary | None:
        stats = self._stats.get(label)
        if stats is None or not stats.update_called:
            return None
        summary = stats.summary()
        self._judge_inputs(trainer, summary, label, f"epoch {trainer.current_epoch}")
        self._log(trainer, label, summary)
        return summary

    def _finish_targets(self, trainer: pl.Trainer) -> None:
        if self._class_counts is None or not self._class_counts.update_called:
            return
        counts = self._class_counts.compute()
        present = {int(c): int(counts[c]) for c in torch.nonzero(counts).flatten()}
        if self._single_class_pending and self._report_single_class(trainer, list(present.values()), "the epoch"):
            self._single_class_pending = False
        if present:
            log_scalars(trainer, {scalar_key(self.name, "train", "classes_seen"): len(present)})
        if not self._imbalance_checked:
            self._imbalance_checked = True
            self._check_imbalance(trainer, present)

    def _reset_split(self, split: str) -> None:
        for label in _labels_of(self._stats, split):
            self._stats[label].reset()

    # Judgements -----------------------------------------------------------------------------------------------

    def _judge_inputs(self, trainer: pl.Trainer, summary: ChannelSummary, label: str, where: str) -> None:
        if summary.non_finite_fraction > 0:
            bad = [int(c) for c in torch.nonzero(summary.non_finite).flatten()]
            self.record(
                trainer,
                "input.non_finite",
                Severity.ERROR,
                f"{label} inputs contain NaN/Inf ({summary.non_finite_fraction:.2%} of values, {where}, "
                f"channels {bad[:_SHOWN]}).",
                "Find the NaN source in the dataset or transforms (missing values, division by zero, log of 0) "
                "and impute or drop those samples before training.",
                subject=label,
                evidence={"fraction": summary.non_finite_fraction, "channels": bad[:_SHOWN], "where": where},
            )
        self._judge_scale(trainer, summary, label, where)
        if is_collapsed(summary):
            self.record(
                trainer,
                "input.collapsed",
                Severity.ERROR,
                f"{label} inputs are nearly constant ({where}): per-channel mean {_channel_list(summary.mean)} "
                f"with std {_channel_list(summary.std)}.",
                "Check the normalisation: Normalize with 0-255 constants (e.g. mean=[123.675, ...]) after ToTensor() "
                "collapses 0-1 pixels to about -2.1; use mean/std on the scale of the data (e.g. [0.485, ...]).",
                subject=label,
                evidence={
                    "mean": _channel_list(summary.mean),
                    "std": _channel_list(summary.std),
                    "max_std_over_abs_mean": float((summary.std / summary.mean.abs().clamp_min(1e-300)).max()),
                    "where": where,
                },
            )

    def _judge_scale(self, trainer: pl.Trainer, summary: ChannelSummary, label: str, where: str) -> None:
        image_like = self._spatial.get(label, False)
        if image_like and looks_like_raw_pixels(summary):
            seen = summary.seen
            message = (
                f"{label} inputs look like raw 0-255 pixels ({where}): min {float(summary.minimum[seen].min()):.3g}, "
                f"max {float(summary.maximum[seen].max()):.4g}, per-channel mean {_channel_list(summary.mean)}."
            )
            hint = "Scale pixels to [0, 1] (ToTensor(), or ToDtype(torch.float32, scale=True)) and then Normalize."
            channels = list(range(summary.channels))
        else:
            channels = unscaled_channels(summary)
            if not channels:
                return
            message = (
                f"{label} input features {channels[:_SHOWN]} are far from standardised ({where}): "
                f"scale max(|mean|, std) {_channel_list(summary.scale, channels)}{_rest_scale(summary, channels)}."
            )
            hint = (
                "Standardise features with statistics of the training split (e.g. sklearn StandardScaler fit on train)."
            )
        self.record(
            trainer,
            "input.unscaled",
            Severity.WARNING,
            message,
            hint,
            subject=label,
            evidence={
                "channels": channels[:_SHOWN],
                "mean": _channel_list(summary.mean, channels),
                "std": _channel_list(summary.std, channels),
                "min": _channel_list(summary.minimum, channels),
                "max": _channel_list(summary.maximum, channels),
                "where": where,
            },
        )

    def _compare_first_batches(self, trainer: pl.Trainer) -> None:
        train = self._first_batches.get("train")
        if train is None or train.samples < SHIFT_MIN_SAMPLES:
            return
        for label in sorted(_labels_of(self._first_batches, "val")):
            # A few batches of a class-sorted loader are not the split's distribution: wait for the epoch.
            if self._few_classes("train") or self._few_classes(label):
                continue
            if self._first_batches[label].samples < SHIFT_MIN_SAMPLES:
                continue
            self._check_shift(trainer, train, self._first_batches[label], label, "first batches")

    def _few_classes(self, label: str) -> bool:
        classes = self._first_classes.get(label)
        return classes is not None and len(classes) < 2

    def _check_shift(
        self, trainer: pl.Trainer, train: ChannelSummary, other: ChannelSummary, label: str, where: str
    ) -> None:
        shift = shift_between(train, other)
        if shift is None or shift.fraction < 0.5:
            return
        self.record(
            trainer,
            "input.split_shift",
            Severity.ERROR,
            f"train and {label} inputs come from clearly different distributions ({where}): "
            f"train mean {_channel_list(train.mean)} std {_channel_list(train.std)} vs {label} mean "
            f"{_channel_list(other.mean)} std {_channel_list(other.std)}.",
            "Make the deterministic preprocessing (ToTensor/scaling, Normalize mean/std, feature scaling) identical "
            f"in the train and {label} pipelines; only random augmentation should differ.",
            subject=label,
            evidence={
                "train_mean": _channel_list(train.mean),
                "train_std": _channel_list(train.std),
                f"{label}_mean": _channel_list(other.mean),
                f"{label}_std": _channel_list(other.std),
                "mean_gap_in_pooled_std": _channel_list(shift.mean_gap),
                "std_ratio": _channel_list(shift.std_ratio),
                "shifted_fraction": shift.fraction,
                "where": where,
            },
        )

    def _check_imbalance(self, trainer: pl.Trainer, present: dict[int, int]) -> None:
        if len(present) < 2 or sum(present.values()) < IMBALANCE_MIN_SAMPLES:
            return
        most = max(present.values())
        rare = sorted(c for c, n in present.items() if n * IMBALANCE_RATIO <= most)
        if not rare:
            return
        dominant = sorted(c for c, n in present.items() if n == most)
        total = sum(present.values())
        self.record(
            trainer,
            "target.imbalance",
            Severity.INFO,
            f"training classes are strongly imbalanced: class(es) {dominant} hold {most / total:.1%} of samples, "
            f"class(es) {rare[:_SHOWN]} at most {max(present[c] for c in rare) / total:.1%}; plain accuracy will "
            "mostly reflect the dominant classes.",
            "Report balanced accuracy or per-class recall (torchmetrics Accuracy(average='macro')), and consider "
            "class weights in the loss or a WeightedRandomSampler.",
            subject="train",
            stage="train",
            evidence={"counts": {str(c): n for c, n in sorted(present.items())}, "rare": rare, "dominant": dominant},
        )

    # Plumbing -------------------------------------------------------------------------------------------------

    def _stats_for(self, label: str, device: torch.device) -> ChannelStats:
        stats = self._stats.get(label)
        if stats is None:
            stats = self._stats[label] = ChannelStats().to(device)
        return stats

    def _counts_for(self, device: torch.device) -> ClassCounts:
        if self._class_counts is None:
            self._class_counts = ClassCounts(self.max_classes).to(device)
        return self._class_counts

    def _log(self, trainer: pl.Trainer, label: str, summary: ChannelSummary) -> None:
        metrics: dict[str, float | Tensor] = {
            scalar_key(self.name, label, "non_finite_fraction"): summary.non_finite_fraction
        }
        shown = min(self.log_channels, summary.channels)
        for name, values in (
            ("mean", summary.mean),
            ("std", summary.std),
            ("min", summary.minimum),
            ("max", summary.maximum),
        ):
            for channel in range(shown):
                metrics[scalar_key(self.name, label, f"{name}_c{channel}")] = values[channel]
        log_scalars(trainer, metrics)


def _labels_of(labels: Any, split: str) -> list[str]:
    return [label for label in labels if label == split or label.startswith(f"{split}/")]


def _rest_scale(summary: ChannelSummary, channels: Sequence[int]) -> str:
    rest = summary.seen.clone()
    rest[list(channels)] = False
    return f" while the other features are at most {float(summary.scale[rest].max()):.3g}" if bool(rest.any()) else ""
