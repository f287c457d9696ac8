"""The preprocessing pipelines themselves, compared across splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from typing_extensions import override

from lightning_sanity.base import SanityCallback, require, stage_of
from lightning_sanity.batch import BatchAdapter
from lightning_sanity.findings import Severity
from lightning_sanity.pipelines import (
    LoaderView,
    Normalization,
    Overlap,
    Pipeline,
    Scale,
    content_overlap,
    describe_loader,
    draw_inputs,
    index_overlap,
    index_segments,
    iter_loaders,
    measured_scale,
    raw_fingerprints,
    received_range,
    sample_segments,
    scale_of_range,
    segments_size,
    value_range,
)

_KNOWN = (Scale.UNIT, Scale.BYTE)


def normalization_gap(
    train: tuple[Sequence[float], Sequence[float]], other: tuple[Sequence[float], Sequence[float]]
) -> tuple[float, float] | None:
    """How far ``other``'s normalisation is from ``train``'s: ``(mean shift in train std units, worst std ratio)``.

    ``None`` when the channel counts cannot be broadcast against each other (itself a mismatch).
    """
    (train_mean, train_std), (other_mean, other_std) = train, other
    channels = max(len(train_mean), len(other_mean), len(train_std), len(other_std))
    vectors = [np.asarray(v, dtype=np.float64) for v in (train_mean, train_std, other_mean, other_std)]
    if any(len(v) not in (1, channels) for v in vectors):
        return None
    t_mean, t_std, o_mean, o_std = (np.broadcast_to(v, (channels,)) for v in vectors)
    shift = float(np.max(np.abs(t_mean - o_mean) / np.abs(t_std)))
    ratio = float(np.max(np.maximum(t_std / o_std, o_std / t_std)))
    return shift, ratio


class TransformParityCallback(SanityCallback):
    """Check each dataloader's preprocessing pipeline, and compare train against val/test, before training starts.

    Finds the transform behind every dataloader (through ``Subset``, ``ConcatDataset`` and wrappers
    exposing ``.dataset``), models the pixel scale through torchvision v1/v2 steps and reports:
    ``Normalize`` constants on the wrong scale for what they receive, a split that normalises
    differently or not at all, differing pixel scaling, random augmentation in val/test, train and
    val samples of different shape or dtype, and train samples reused in val/test (only noted, as
    ``data.eval_on_train``, when the evaluation deliberately runs on the training dataloader itself).
    Where a step is opaque (a ``Lambda``, a custom class) it reads a few items through the pipeline
    with the RNG forked and measures them instead.

    Runs at the start of ``fit`` / ``validate`` / ``test``: single-split checks as soon as a
    dataloader is loaded, train-vs-eval comparisons once both are (before the first optimizer step
    unless validation is first loaded later). ``test``/``validate`` after ``fit`` compare against the
    train dataloader of that fit; on their own they use a datamodule's ``train_dataloader()`` if any.

    Args:
        num_samples: Items read from each dataset to compare train and eval outputs and to measure
            opaque pipelines (0 disables every check that reads items).
        min_content_overlap: Fraction of an eval dataset's raw samples found in the training data
            above which ``data.split_overlap`` fires (shared indices of one dataset always fire).
        max_fingerprint_items: At most this many training items (and a tenth as many, at least 1000, evaluation
            items) are hashed for the content-overlap check: a fixed-seed sample of larger datasets, so the check's
            cost does not grow with the dataset; the finding's evidence says what was sampled. 0 turns it off.
        strict: Raise :class:`~lightning_sanity.SanityError` on the first ERROR finding.
        batch_adapter: See :class:`~lightning_sanity.SanityCallback`.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Example::

        from lightning_sanity import TransformParityCallback

        trainer = Trainer(callbacks=[TransformParityCallback()])
        trainer.fit(model, train_loader, val_loader)
        # SanityWarning: [error] transform.normalize_scale: Normalize(mean=[123.7, 116.3, 103.5], ...) at
        # position 3 of the train pipeline receives [0, 1] input (from ToTensor at position 2) ...
    """

    name: ClassVar[str] = "transform_parity"

    def __init__(
        self,
        *,
        num_samples: int = 4,
        min_content_overlap: float = 0.05,
        max_fingerprint_items: int = 50_000,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(strict=strict, batch_adapter=batch_adapter)
        self.configure_findings(ignore, severity)
        require(
            isinstance(num_samples, int) and 0 <= num_samples <= 64, "num_samples", "an int in [0, 64]", num_samples
        )
        require(
            isinstance(min_content_overlap, (int, float)) and 0.0 < min_content_overlap <= 1.0,
            "min_content_overlap",
            "a float in (0, 1]",
            min_content_overlap,
        )
        require(
            isinstance(max_fingerprint_items, int) and max_fingerprint_items >= 0,
            "max_fingerprint_items",
            "an int >= 0",
            max_fingerprint_items,
        )
        self.num_samples = num_samples
        self.min_content_overlap = float(min_content_overlap)
        self.max_fingerprint_items = max_fingerprint_items
        self._fit_train_views: list[LoaderView] = []
        self._fit_train_loaders: list[Any] = []
        self._reset_run()

    def _reset_run(self) -> None:
        self._checked: set[str] = set()
        self._compared: set[tuple[str, str]] = set()
        self._inputs_cache: dict[str, list[Tensor]] = {}
        self._fingerprint_cache: dict[tuple[int, int], tuple[Any, np.ndarray | None]] = {}
        self._fallback_train_views: list[LoaderView] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._reset_run()
        if stage == "fit":
            self._fit_train_views = []
            self._fit_train_loaders = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loaded(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loaded(trainer)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loaded(trainer)

    # ------------------------------------------------------------ which dataloaders

    def _check_loaded(self, trainer: pl.Trainer) -> None:
        """Check every dataloader loaded so far, and every train/eval pair, each once per run."""
        train_views = self._train_views(trainer)
        eval_views = self._eval_views(trainer)
        for view in train_views:
            self._once(trainer, view, evaluation=False)
        for view in eval_views:
            self._once(trainer, view, evaluation=True)
        for train in train_views:
            for other in eval_views:
                if (train.label, other.label) not in self._compared:
                    self._compared.add((train.label, other.label))
                    self._compare(trainer, train, other)

    def _once(self, trainer: pl.Trainer, view: LoaderView, *, evaluation: bool) -> None:
        if view.label in self._checked:
            return
        self._checked.add(view.label)
        self._check_alone(trainer, view, evaluation=evaluation)

    def _train_views(self, trainer: pl.Trainer) -> list[LoaderView]:
        if trainer.train_dataloader is not None:
            loaders = list(iter_loaders(trainer.train_dataloader, "train"))
            self._fit_train_views = [describe_loader(dl, label) for label, dl in loaders]
            self._fit_train_loaders = [dl for _, dl in loaders]
            return self._fit_train_views
        if self._fit_train_views or trainer.state.fn == TrainerFn.FITTING:
            return self._fit_train_views
        if self._fallback_train_views is None:
            self._fallback_train_views = _declared_train_views(trainer)
        return self._fallback_train_views

    @staticmethod
    def _eval_views(trainer: pl.Trainer) -> list[LoaderView]:
        return [describe_loader(dl, label) for label, dl in _eval_loaders(trainer)]

    # ------------------------------------------------------------ one split

    def _check_alone(self, trainer: pl.Trainer, view: LoaderView, *, evaluation: bool) -> None:
        if not view.pipelines:
            self.record(
                trainer,
                "transform.unreachable",
                Severity.INFO,
                f"No transform pipeline found for the {view.label} dataloader "
                f"(dataset {type(view.dataset).__name__}); pipeline checks skipped, statistics checks still run.",
                "Expose the preprocessing as a `transform` attribute of the dataset (torchvision style) "
                "to have it checked.",
                subject=view.label,
                evidence={"dataset": type(view.dataset).__name__},
            )
            return
        for pipeline in view.pipelines:
            for normalization in pipeline.normalizations:
                self._check_normalize_scale(trainer, view, pipeline, normalization)
            if evaluation:
                self._check_random_in_eval(trainer, view, pipeline)

    def _check_normalize_scale(
        self, trainer: pl.Trainer, view: LoaderView, pipeline: Pipeline, normalization: Normalization
    ) -> None:
        constants = normalization.constants_scale
        if constants is Scale.UNKNOWN:
            return
        receives, span = self._received_scale(view, pipeline, normalization)
        if receives not in _KNOWN or receives is constants:
            return
        step = normalization.step
        measured = f" (measured on {len(self._inputs(view))} samples: {_span(span)})" if span else ""
        outputs = value_range(self._inputs(view)) if span else None
        effect = f"; its outputs span {_span(outputs)}" if outputs else ""
        factor = 1 / 255 if receives is Scale.UNIT else 255.0
        mean, std = ([round(v * factor, 4) for v in values] for values in (normalization.mean, normalization.std))
        self.record(
            trainer,
            "transform.normalize_scale",
            Severity.ERROR,
            f"{step} of the {view.label} pipeline receives {step.scaled_by} output in {receives}{measured}, "
            f"but its mean/std are written for {constants} data{effect}.",
            f"Use mean/std on the {receives} scale: Normalize(mean={mean}, std={std}), or change the steps before "
            "it to produce the scale the constants are written for.",
            subject=f"{view.label}:{step.position}",
            evidence={
                "dataloader": view.label,
                "position": step.position,
                "mean": normalization.mean,
                "std": normalization.std,
                "receives": str(receives),
                "constants_scale": str(constants),
                "received_range": span,
                "output_range": outputs,
                "pipeline": pipeline.summary(),
            },
        )

    def _check_random_in_eval(self, trainer: pl.Trainer, view: LoaderView, pipeline: Pipeline) -> None:
        steps = pipeline.random_steps
        if not steps:
            return
        listed = ", ".join(f"{step.name} at position {step.position}" for step in steps)
        self.record(
            trainer,
            "transform.random_in_eval",
            Severity.WARNING,
            f"The {view.label} pipeline applies random augmentation ({listed}): every evaluation sees "
            "different inputs, so its metrics are noisy and do not measure the model on the real data.",
            "Use deterministic transforms for val/test (e.g. Resize + CenterCrop instead of RandomResizedCrop, "
            "no flips or colour jitter); keep augmentation in the train pipeline only.",
            subject=view.label,
            evidence={"dataloader": view.label, "random_steps": [[s.position, s.name] for s in steps]},
        )

    # ------------------------------------------------------------ scale, modelled or measured

    def _inputs(self, view: LoaderView) -> list[Tensor]:
        if view.label not in self._inputs_cache:
            self._inputs_cache[view.label] = draw_inputs(view.dataset, self.num_samples)
        return self._inputs_cache[view.label]

    def _measurable(self, view: LoaderView) -> bool:
        """Drawn items tell about the pipeline only if every item goes through that one pipeline."""
        return self.num_samples > 0 and len(view.pipelines) == 1

    def _received_scale(
        self, view: LoaderView, pipeline: Pipeline, normalization: Normalization
    ) -> tuple[Scale, tuple[float, float] | None]:
        """What ``Normalize`` receives: the model when it agrees with the constants, else measured if possible.

        Measuring settles opaque steps and the model's one assumption (``ToTensor`` of a uint8 image).
        """
        modelled = normalization.step.receives
        if modelled is normalization.constants_scale or not self._measurable(view):
            return modelled, None
        if pipeline.range_preserved_after(normalization.step):
            span = received_range(self._inputs(view), normalization)
            if span is not None and (measured := scale_of_range(*span)) in _KNOWN:
                return measured, span
        return modelled, None

    def _output_scale(self, view: LoaderView, pipeline: Pipeline, *, confirm: bool) -> Scale:
        """The scale of the pipeline's output; measured if the model does not know it, or to ``confirm`` it.

        A confirming measurement that finds no plain pixel scale (negative values: something outside the
        pipeline normalised) vetoes the model.
        """
        modelled = pipeline.output_scale
        if (modelled in _KNOWN and not confirm) or not self._measurable(view) or not self._inputs(view):
            return modelled
        measured, _ = measured_scale(self._inputs(view))
        return measured if confirm or measured in _KNOWN else modelled

    def _normalization_of(self, view: LoaderView, pipeline: Pipeline) -> tuple[Normalization, Scale] | None:
        normalizations = pipeline.normalizations
        if not normalizations:
            return None
        last = normalizations[-1]
        return last, self._received_scale(view, pipeline, last)[0]

    # ------------------------------------------------------------ train against val/test

    def _compare(self, trainer: pl.Trainer, train: LoaderView, other: LoaderView) -> None:
        if getattr(trainer, "overfit_batches", 0) == 0:  # overfitting runs reuse the training data on purpose
            self._check_overlap(trainer, train, other)
        if train.pipeline is not None and other.pipeline is not None:
            self._check_normalization_parity(trainer, train, train.pipeline, other, other.pipeline)
        if self.num_samples > 0:
            self._check_output_parity(trainer, train, other)

    def _check_normalization_parity(
        self,
        trainer: pl.Trainer,
        train: LoaderView,
        train_pipeline: Pipeline,
        other: LoaderView,
        other_pipeline: Pipeline,
    ) -> None:
        train_norm = self._normalization_of(train, train_pipeline)
        other_norm = self._normalization_of(other, other_pipeline)
        if train_norm is None and other_norm is None:
            self._check_plain_scaling(trainer, train, train_pipeline, other, other_pipeline)
        elif train_norm is None or other_norm is None:
            self._check_normalize_missing(
                trainer, (train, train_pipeline, train_norm), (other, other_pipeline, other_norm)
            )
        else:
            self._check_normalize_constants(trainer, train, train_norm, other, other_norm)

    def _check_plain_scaling(
        self,
        trainer: pl.Trainer,
        train: LoaderView,
        train_pipeline: Pipeline,
        other: LoaderView,
        other_pipeline: Pipeline,
    ) -> None:
        train_scale = self._output_scale(train, train_pipeline, confirm=False)
        other_scale = self._output_scale(other, other_pipeline, confirm=False)
        if train_scale not in _KNOWN or other_scale not in _KNOWN or train_scale is other_scale:
            return
        train_scale = self._output_scale(train, train_pipeline, confirm=True)
        other_scale = self._output_scale(other, other_pipeline, confirm=True)
        if train_scale not in _KNOWN or other_scale not in _KNOWN or train_scale is other_scale:
            return
        self._record_scaling_mismatch(
            trainer,
            train,
            other,
            f"{train.label} inputs are on the {train_scale} scale ({train_pipeline.output_scaled_by}) but "
            f"{other.label} inputs on the {other_scale} scale ({other_pipeline.output_scaled_by})",
            {"train_scale": str(train_scale), "other_scale": str(other_scale)},
        )

    def _check_normalize_missing(
        self,
        trainer: pl.Trainer,
        train: tuple[LoaderView, Pipeline, tuple[Normalization, Scale] | None],
        other: tuple[LoaderView, Pipeline, tuple[Normalization, Scale] | None],
    ) -> None:
        with_norm, without = (train, other) if train[2] is not None else (other, train)
        view, pipeline, _ = without
        normalization, _ = with_norm[2]  # type: ignore[misc]
        # An opaque step may normalise by hand: only a measured plain pixel scale proves it does not.
        scale = self._output_scale(view, pipeline, confirm=True)
        if scale not in _KNOWN:
            return
        self.record(
            trainer,
            "transform.normalize_missing",
            Severity.ERROR,
            f"The {with_norm[0].label} pipeline normalises ({normalization.step}) but the {view.label} pipeline "
            f"({pipeline.summary()}) does not: {view.label} inputs reach the model on the {scale} scale.",
            f"Add the same {normalization.step.name}(mean={list(normalization.mean)}, std={list(normalization.std)}) "
            f"to the {view.label} pipeline, e.g. build both pipelines from one shared list of final steps.",
            subject=f"{train[0].label}|{other[0].label}",
            evidence={
                "normalized": with_norm[0].label,
                "not_normalized": view.label,
                "mean": normalization.mean,
                "std": normalization.std,
                "position": normalization.step.position,
                "unnormalized_scale": str(scale),
                "unnormalized_pipeline": pipeline.summary(),
            },
        )

    def _check_normalize_constants(
        self,
        trainer: pl.Trainer,
        train: LoaderView,
        train_norm: tuple[Normalization, Scale],
        other: LoaderView,
        other_norm: tuple[Normalization, Scale],
    ) -> None:
        (train_n, train_receives), (other_n, other_receives) = train_norm, other_norm
        both_known = train_receives in _KNOWN and other_receives in _KNOWN
        train_params = train_n.on_unit_scale(train_receives) if both_known else (train_n.mean, train_n.std)
        other_params = other_n.on_unit_scale(other_receives) if both_known else (other_n.mean, other_n.std)
        gap = normalization_gap(train_params, other_params)
        # Per-split statistics (MNIST train 0.1307/0.3081 vs test 0.1325/0.3104) differ by ~0.01: harmless.
        if gap is not None and gap[0] <= 0.1 and gap[1] <= 1.1:
            return
        if both_known and train_receives is not other_receives:
            self._record_scaling_mismatch(
                trainer,
                train,
                other,
                f"{train_n.step} of the {train.label} pipeline receives {train_receives} input but "
                f"{other_n.step} of the {other.label} pipeline receives {other_receives} input",
                {"train_scale": str(train_receives), "other_scale": str(other_receives)},
            )
            return
        shift, ratio = gap if gap is not None else (float("inf"), float("inf"))
        self.record(
            trainer,
            "transform.normalize_mismatch",
            Severity.ERROR,
            f"{train.label} and {other.label} normalise differently: {train_n.step} vs {other_n.step} "
            f"(means differ by up to {shift:.3g} train std, stds by a factor up to {ratio:.3g}).",
            "Normalise every split with the training split's mean/std: define Normalize once and reuse it.",
            subject=f"{train.label}|{other.label}",
            evidence={
                "train_mean": train_n.mean,
                "train_std": train_n.std,
                "other_mean": other_n.mean,
                "other_std": other_n.std,
                "mean_shift_in_std": shift,
                "std_ratio": ratio,
            },
        )

    def _record_scaling_mismatch(
        self, trainer: pl.Trainer, train: LoaderView, other: LoaderView, what: str, evidence: dict[str, Any]
    ) -> None:
        self.record(
            trainer,
            "transform.scaling_mismatch",
            Severity.ERROR,
            f"Pixel scaling differs between splits: {what}.",
            "Convert images the same way in every split (e.g. ToTensor(), or ToImage() + "
            "ToDtype(torch.float32, scale=True)) before any Normalize.",
            subject=f"{train.label}|{other.label}",
            evidence={"train": train.label, "other": other.label, **evidence},
        )

    def _check_output_parity(self, trainer: pl.Trainer, train: LoaderView, other: LoaderView) -> None:
        train_inputs, other_inputs = self._inputs(train), self._inputs(other)
        if not train_inputs or not other_inputs:
            return
        train_shape, other_shape = (
            _common({tuple(t.shape) for t in train_inputs}),
            _common({tuple(t.shape) for t in other_inputs}),
        )
        train_dtype, other_dtype = _common({t.dtype for t in train_inputs}), _common({t.dtype for t in other_inputs})
        # Variable-size items (token sequences, uncropped images) have no single shape to compare, and
        # FiveCrop/TenCrop evaluation stacks crops on purpose.
        multi_crop = any(
            step.name in ("FiveCrop", "TenCrop") for view in (train, other) for p in view.pipelines for step in p.steps
        )
        shape_differs = not multi_crop and None not in (train_shape, other_shape) and train_shape != other_shape
        dtype_differs = train_dtype is not None and other_dtype is not None and train_dtype != other_dtype
        if not (shape_differs or dtype_differs):
            return
        self.record(
            trainer,
            "transform.output_mismatch",
            Severity.WARNING,
            f"A {train.label} sample comes out as {train_dtype} {list(train_shape or [])} but a {other.label} "
            f"sample as {other_dtype} {list(other_shape or [])}.",
            "Make the final steps of both pipelines produce the same size and dtype "
            "(e.g. the same crop size, and ToTensor()/ToDtype(torch.float32, scale=True) in both).",
            subject=f"{train.label}|{other.label}",
            evidence={
                "train_shape": train_shape,
                "other_shape": other_shape,
                "train_dtype": str(train_dtype),
                "other_dtype": str(other_dtype),
            },
        )

    # ------------------------------------------------------------ shared samples

    def _fingerprints(self, base: Any, indices: np.ndarray) -> np.ndarray | None:
        key = (id(base), hash(indices.tobytes()))
        cached = self._fingerprint_cache.get(key)
        if cached is None or cached[0] is not base:
            cached = (base, raw_fingerprints(base, indices))
            self._fingerprint_cache[key] = cached
        return cached[1]

    def _check_overlap(self, trainer: pl.Trainer, train: LoaderView, other: LoaderView) -> None:
        overlap, sampled = _overlap(train, other, self._fingerprints, self.max_fingerprint_items)
        if overlap is None or overlap.shared == 0:
            return
        by_index = overlap.how != "identical raw samples"
        if not by_index and overlap.fraction < self.min_content_overlap:
            return
        if overlap.how == "the same dataset object" and self._evaluates_on_purpose(trainer, other):
            self._report_eval_on_train(trainer, train, other)
            return
        self.record(
            trainer,
            "data.split_overlap",
            Severity.ERROR,
            f"The {other.label} dataloader shares {'about ' if sampled else ''}{overlap.shared} of its {overlap.total} "
            f"samples ({overlap.fraction:.0%}) with the {train.label} dataloader ({overlap.how}"
            f"{', estimated from a fixed-seed sample' if sampled else ''}): "
            f"{other.label} metrics measure memorisation, not generalisation.",
            "Split the data once into disjoint index sets (e.g. torch.utils.data.random_split, or separate "
            "files per split) and build each split's dataset from its own part.",
            subject=f"{train.label}|{other.label}",
            evidence={
                "shared": overlap.shared,
                "total": overlap.total,
                "fraction": overlap.fraction,
                "how": overlap.how,
                "train_dataset": type(train.dataset).__name__,
                "other_dataset": type(other.dataset).__name__,
                "sampled": sampled,
            },
        )

    def _evaluates_on_purpose(self, trainer: pl.Trainer, other: LoaderView) -> bool:
        """Whether the eval split is deliberately the training data: the training dataloader object itself, or
        dataloaders handed to ``trainer.test``/``validate`` by the caller (not declared by the module/datamodule)."""
        eval_loaders = [dl for label, dl in _eval_loaders(trainer) if label == other.label]
        if any(dl is train for dl in eval_loaders for train in self._fit_train_loaders):
            return True
        return trainer.state.fn in (TrainerFn.TESTING, TrainerFn.VALIDATING) and _eval_loaders_passed_by_caller(trainer)

    def _report_eval_on_train(self, trainer: pl.Trainer, train: LoaderView, other: LoaderView) -> None:
        self.record(
            trainer,
            "data.eval_on_train",
            Severity.INFO,
            f"The {other.label} dataloader evaluates the training dataset itself (the {train.label} dataloader's "
            f"dataset object, {type(other.dataset).__name__}): its {other.label} metrics are training-set metrics, "
            "not a measure of generalisation.",
            "Fine to report training accuracy next to test accuracy; report generalisation from a dataloader over a "
            "disjoint split.",
            subject=f"{train.label}|{other.label}",
            evidence={"dataset": type(other.dataset).__name__, "stage": stage_of(trainer)},
        )


def _eval_loaders(trainer: pl.Trainer) -> list[tuple[str, Any]]:
    if trainer.testing:
        return list(iter_loaders(trainer.test_dataloaders, "test"))
    if trainer.validating or trainer.sanity_checking or trainer.training:
        return list(iter_loaders(trainer.val_dataloaders, "val"))
    return []


def _eval_loaders_passed_by_caller(trainer: pl.Trainer) -> bool:
    """Were the running ``test``/``validate`` dataloaders passed to the Trainer call rather than declared by hooks?

    Lightning keeps no public record of this: its private ``_data_source`` holds the module/datamodule
    when the dataloaders come from their ``*_dataloader()`` hooks, else what the caller passed.
    """
    loop = trainer.test_loop if trainer.testing else trainer.validate_loop
    source = getattr(getattr(loop, "_data_source", None), "instance", None)
    return source is not None and not isinstance(source, (pl.LightningModule, pl.LightningDataModule))


def _overlap(
    train: LoaderView, other: LoaderView, fingerprints: Any, max_items: int
) -> tuple[Overlap | None, dict[str, int] | None]:
    """Shared samples: by index when both splits index one dataset object, else by raw content, hashing at most
    ``max_items`` training items (and a tenth as many evaluation items); with the sample sizes when sampled."""
    if train.dataset is None or other.dataset is None:
        return None, None
    train_segments, other_segments = index_segments(train.dataset), index_segments(other.dataset)
    if train_segments is None or other_segments is None:
        if train.dataset is other.dataset:
            return Overlap(1, 1, "the same dataset object"), None
        return None, None
    by_index = index_overlap(train_segments, other_segments)
    if by_index is not None or max_items == 0:
        return by_index, None
    sizes = segments_size(train_segments), segments_size(other_segments)
    hashed = min(sizes[0], max_items), min(sizes[1], max(max_items // 10, 1000))
    found = content_overlap(
        sample_segments(train_segments, hashed[0]), sample_segments(other_segments, hashed[1]), fingerprints
    )
    if found is None or hashed == sizes:
        return found, None
    estimate = round(found.shared * (sizes[0] / hashed[0]) * (sizes[1] / hashed[1]))
    sampled = {"train_items": sizes[0], "train_hashed": hashed[0], "other_items": sizes[1], "other_hashed": hashed[1]}
    return Overlap(min(estimate, sizes[1]), sizes[1], found.how), sampled


def _span(span: tuple[float, float]) -> str:
    low, high = (round(v, 3) + 0.0 for v in span)  # + 0.0 turns -0.0 into 0.0
    return f"[{low:.3g}, {high:.3g}]"


def _common(values: set[Any]) -> Any:
    """The one value all items share, or ``None``."""
    return next(iter(values)) if len(values) == 1 else None


def _declared_train_views(trainer: pl.Trainer) -> list[LoaderView]:
    """The train dataloader a datamodule (or the LightningModule) declares, for ``validate``/``test`` on their own.

    A datamodule whose ``setup`` only builds the training set for ``fit`` raises here: no comparison then.
    """
    source: Any = getattr(trainer, "datamodule", None)
    if source is None or not is_overridden("train_dataloader", source):
        source = trainer.lightning_module
        if source is None or not is_overridden("train_dataloader", source):
            return []
    try:
        loaders = source.train_dataloader()
    except Exception:
        return []
    return [describe_loader(dl, label) for label, dl in iter_loaders(loaders, "train")]
