"""Per-channel statistics of float inputs and class counts of targets, exact or sampled, folded per epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from typing_extensions import override

from lightning_sanity.folding import FoldingMetric

EPOCH_VALUES_PER_CHANNEL = 4096
"""Values per channel and batch that feed the epoch statistics (fixed pseudo-random positions, every sample); a
32x32 RGB batch of 32 has 32,768 per channel. The first ``check_batches`` batches are judged on every value."""


@dataclass(frozen=True)
class ChannelSummary:
    """Per-channel moments of float inputs, on the host (float64): enough for mean, std, min, max, non-finite."""

    samples: int
    count: Tensor
    total: Tensor
    total_sq: Tensor
    minimum: Tensor
    maximum: Tensor
    non_finite: Tensor

    @property
    def channels(self) -> int:
        return int(self.count.numel())

    @property
    def mean(self) -> Tensor:
        return self.total / self.count.clamp_min(1)

    @property
    def std(self) -> Tensor:
        variance = self.total_sq / self.count.clamp_min(1) - self.mean**2
        return variance.clamp_min(0).sqrt()

    @property
    def scale(self) -> Tensor:
        """``max(|mean|, std)`` per channel: about 1 for standardised data, about 100 for 0-255 pixels."""
        return torch.maximum(self.mean.abs(), self.std)

    @property
    def seen(self) -> Tensor:
        """Channels holding at least one finite value."""
        return self.count > 0

    @property
    def non_finite_fraction(self) -> float:
        values = float(self.count.sum() + self.non_finite.sum())
        return float(self.non_finite.sum()) / values if values else 0.0

    def merge(self, other: ChannelSummary) -> ChannelSummary:
        return ChannelSummary(
            self.samples + other.samples,
            self.count + other.count,
            self.total + other.total,
            self.total_sq + other.total_sq,
            torch.minimum(self.minimum, other.minimum),
            torch.maximum(self.maximum, other.maximum),
            self.non_finite + other.non_finite,
        )


def channel_view(inputs: Tensor) -> Tensor | None:
    """``inputs`` as ``(samples, channels, values)`` (channel = dim 1), or ``None`` if not float or empty."""
    if not inputs.is_floating_point() or inputs.ndim == 0 or inputs.numel() == 0:
        return None
    if inputs.ndim == 1:
        return inputs.reshape(-1, 1, 1)
    return inputs.reshape(inputs.shape[0], inputs.shape[1], -1)


def batch_moments(view: Tensor) -> ChannelSummary:
    """Per-channel moments of a ``(samples, channels, values)`` tensor, on its device.

    Sums are taken around the batch mean (then shifted back in float64) so that a nearly
    constant channel (std 0.004 around -2.1) keeps its std instead of losing it to float32 rounding.
    """
    dims = (0, 2)
    finite = torch.isfinite(view)
    count = finite.sum(dims)
    shift = torch.where(finite, view, 0).sum(dims) / count.clamp_min(1)
    centred = torch.where(finite, view - shift[None, :, None], 0)
    centred_sum, shift64 = centred.sum(dims).double(), shift.double()
    return ChannelSummary(
        samples=view.shape[0],
        count=count.double(),
        total=count * shift64 + centred_sum,
        total_sq=centred.square().sum(dims).double() + 2 * shift64 * centred_sum + count * shift64.square(),
        minimum=torch.where(finite, view, math.inf).amin(dims).double(),
        maximum=torch.where(finite, view, -math.inf).amax(dims).double(),
        non_finite=(view.shape[0] * view.shape[2] - count).double(),
    )


def _finite_moments(values: Tensor, samples: int) -> ChannelSummary:
    """:func:`batch_moments` of ``(channels, values)`` that are all finite, by reductions and in-place operations on
    ``values`` (which it overwrites): no temporary as large as ``values``. On CPU such temporaries (an allocation and
    a pass each) cost more than the arithmetic, and masking out non-finite values needs several."""
    count = values.shape[1]
    minimum, maximum = values.amin(1).double(), values.amax(1).double()
    shift = values.sum(1) / count
    centred = values.sub_(shift[:, None])
    centred_sum, shift64 = centred.sum(1).double(), shift.double()
    centred_sq = centred.square_().sum(1).double()
    return ChannelSummary(
        samples=samples,
        count=torch.full_like(shift64, count),
        total=count * shift64 + centred_sum,
        total_sq=centred_sq + 2 * shift64 * centred_sum + count * shift64.square(),
        minimum=minimum,
        maximum=maximum,
        non_finite=torch.zeros_like(shift64),
    )


def _channel_major(view: Tensor) -> Tensor:
    """``[N, C, L]`` values as a ``[C, N * L]`` tensor of the pack's own, which :func:`_finite_moments` may overwrite.

    The reshape copies, except when the memory of ``view`` (a view of the user's batch) is already channel-major
    (one sample, or one value per channel): then it is a view of that memory, and is cloned.
    """
    values = view.transpose(0, 1).reshape(view.shape[1], -1)
    shares_memory = values.untyped_storage().data_ptr() == view.untyped_storage().data_ptr()
    return values.clone() if shares_memory else values


def checked_moments(view: Tensor) -> ChannelSummary:
    """:func:`batch_moments` of one judged batch; on CPU (where the host read is free) by :func:`_finite_moments` on a
    channel-major copy when every value is finite."""
    if view.device.type == "cpu":
        values = _channel_major(view)
        if bool(torch.isfinite(values.sum(1)).all()):
            return _finite_moments(values, view.shape[0])
    return batch_moments(view)


def to_host(summary: ChannelSummary) -> ChannelSummary:
    # One stacked copy: a single device-to-host transfer per checked batch.
    stacked = torch.stack(
        [summary.count, summary.total, summary.total_sq, summary.minimum, summary.maximum, summary.non_finite]
    ).cpu()
    return ChannelSummary(summary.samples, *stacked.unbind(0))


class _SampledBatch(NamedTuple):
    """What :class:`ChannelStats` queues of one batch."""

    values: Tensor
    """A copy of the batch's sampled values, ``(channels, samples * positions)``."""
    samples: int
    full_sum: Tensor | None
    """Per-channel sum of every value of the batch, non-finite when one of them is (finite float32 values overflow it
    only above ~1e33 on average); ``None`` when every value was sampled."""


class ChannelStats(FoldingMetric):
    """Per-channel count, sum, sum of squares, min, max and non-finite count of float inputs over an epoch.

    Sized on the first update; a later batch with a different channel count is ignored. Batches with more than
    ``values_per_channel`` values per channel contribute the values at fixed pseudo-random positions (the same
    for every batch, all samples, at least one position each): an unbiased sample whose cost does not grow with the
    image size. Non-finite values are detected in every value (the batch's sum of the channel is NaN/Inf then): a
    channel with any NaN/Inf counts at least one non-finite value.
    Per batch only the sampled values and that sum are taken (two kernels); the moments of the queued batches are
    taken together (see :class:`~lightning_sanity.folding.FoldingMetric`), equal up to float summation order.

    Example::

        stats = ChannelStats()
        stats.update(torch.randn(8, 3, 4, 4))
        summary = stats.summary()
        summary.mean, summary.std
    """

    full_state_update: bool = False
    samples: Tensor
    count: Tensor
    total: Tensor
    total_sq: Tensor
    minimum: Tensor
    maximum: Tensor
    non_finite: Tensor

    def __init__(self, values_per_channel: int = EPOCH_VALUES_PER_CHANNEL, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values_per_channel = values_per_channel
        self._positions: dict[tuple[int, int, int, int, torch.device], Tensor] = {}
        self._channels: int | None = None
        self.add_state("samples", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for state, reduce in (
            ("count", "sum"),
            ("total", "sum"),
            ("total_sq", "sum"),
            ("minimum", "min"),
            ("maximum", "max"),
            ("non_finite", "sum"),
        ):
            self.add_state(state, default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx=reduce)

    def update(self, view: Tensor) -> None:
        samples, channels, _ = view.shape
        if self._channels is None:
            self._channels = channels
        elif channels != self._channels:
            return
        positions = self._sampled_positions(view)
        if positions is None:  # a copy: the step may change the batch in place after this hook
            values = _channel_major(view)
            self.queue(_SampledBatch(values, samples, None), values.numel())
            return
        # float32 at least: a float16 sum of ordinary pixels overflows to Inf
        full_sum = view.sum((0, 2), dtype=torch.promote_types(view.dtype, torch.float32))
        values = view.reshape(-1).index_select(0, positions).view(channels, -1)
        self.queue(_SampledBatch(values, samples, full_sum), values.numel())

    @override
    def _fold(self, pending: list[_SampledBatch]) -> None:
        if self.count.numel() == 0:
            channels, device = pending[0].values.shape[0], self.samples.device
            self.count, self.total, self.total_sq, self.non_finite = (
                torch.zeros(channels, dtype=torch.float64, device=device) for _ in range(4)
            )
            self.minimum = torch.full((channels,), math.inf, dtype=torch.float64, device=device)
            self.maximum = torch.full((channels,), -math.inf, dtype=torch.float64, device=device)
        values = torch.cat([batch.values for batch in pending], 1) if len(pending) > 1 else pending[0].values
        if values.dtype.itemsize < 4:  # float16 sums of many batches overflow; float32 holds them exactly
            values = values.float()
        samples = sum(batch.samples for batch in pending)
        # On CPU a host read is free: take the cheap path when every value is finite (a finite sum says so).
        all_finite = values.device.type == "cpu" and bool(torch.isfinite(values.sum(1)).all())
        moments = batch_moments(values[None]) if not all_finite else None
        full_sums = [batch.full_sum for batch in pending if batch.full_sum is not None]
        missed = None
        if full_sums:  # a batch's NaN/Inf outside its sampled positions counts once in its channel
            missed = ~torch.isfinite(torch.stack(full_sums))
            if not all_finite:
                parts = torch.isfinite(values).split([batch.values.shape[1] for batch in pending], 1)
                sampled = (
                    part.all(1) for batch, part in zip(pending, parts, strict=True) if batch.full_sum is not None
                )
                missed &= torch.stack(list(sampled))
        if moments is None:
            moments = _finite_moments(values, samples)  # last: it overwrites the values
        non_finite = moments.non_finite if missed is None else moments.non_finite + missed.sum(0)
        self.samples += samples
        self.count += moments.count
        self.total += moments.total
        self.total_sq += moments.total_sq
        self.minimum = torch.minimum(self.minimum, moments.minimum)
        self.maximum = torch.maximum(self.maximum, moments.maximum)
        self.non_finite += non_finite

    @override
    def reset(self) -> None:
        self._channels = None
        super().reset()

    def _sampled_positions(self, view: Tensor) -> Tensor | None:
        """Flat indices into ``view`` of its sampled values in channel-major order, ``None`` when all are taken."""
        samples, channels, values = view.shape
        per_sample = max(1, self.values_per_channel // max(samples, 1))
        if per_sample >= values:
            return None
        key = (samples, channels, values, per_sample, view.device)
        if key not in self._positions:  # own generator: the user's random streams are never touched
            generator = torch.Generator().manual_seed(values)
            positions = torch.randperm(values, generator=generator)[:per_sample].sort().values
            # One gather over the flattened batch: much cheaper than index_select along the last dim.
            rows = torch.arange(channels)[:, None, None] * values + torch.arange(samples)[None, :, None] * (
                channels * values
            )
            self._positions[key] = (rows + positions).reshape(-1).to(view.device)
        return self._positions[key]

    def compute(self) -> dict[str, Tensor]:
        return {state: getattr(self, state) for state in self._defaults}

    def summary(self) -> ChannelSummary:
        """The epoch's :class:`ChannelSummary` on the host (synchronised across processes)."""
        # compute() squeezes one-channel states to scalars; restore the channel dim.
        states = {state: value.reshape(-1) for state, value in self.compute().items()}
        return to_host(
            ChannelSummary(
                int(states["samples"]),
                states["count"],
                states["total"],
                states["total_sq"],
                states["minimum"],
                states["maximum"],
                states["non_finite"],
            )
        )


class ClassCounts(FoldingMetric):
    """Exact count of each class index in ``[0, capacity)`` over an epoch; other values are counted as out of range.

    Example::

        counts = ClassCounts(capacity=10)
        counts.update(torch.tensor([0, 0, 3]))
        counts.compute()[:4].tolist()  # [2, 0, 0, 1]
    """

    full_state_update: bool = False
    counts: Tensor

    def __init__(self, capacity: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self.add_state("counts", default=torch.zeros(capacity, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, labels: Tensor) -> None:
        self.queue(labels.reshape(-1).to(torch.long, copy=True), labels.numel())

    @override
    def _fold(self, pending: list[Tensor]) -> None:
        # index_add_ rather than masking + bincount: both of those read a size back to the host on GPU.
        labels = torch.cat(pending)
        in_range = (labels >= 0) & (labels < self.capacity)
        self.counts.index_add_(0, labels.clamp(0, self.capacity - 1), in_range.long())

    def compute(self) -> Tensor:
        return self.counts.cpu()
