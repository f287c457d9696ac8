"""The position prior of a dense or token task: how well a model that ignores its input, and knows only where a pixel
(or token) is, can predict its class.

Real segmentation data has strong position priors (road at the bottom, sky at the top, objects near the centre), and
a model that learned nothing from its input (masks that belong to other images) still learns them: its validation
cross-entropy then beats the entropy of the class frequencies, and beating that entropy no longer proves the model
uses its input. :class:`PositionCounts` counts the validation targets per class and position on the device;
:func:`position_prior` turns the counts into the conditional entropy ``H(Y | position)``, corrected for the bias of
few samples per position, with its standard error over the split's images. The learnability rules
(:mod:`lightning_sanity.learnability`) compare against the lower of the class prior and this one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from lightning_sanity.learnability import ConfusionSummary

POSITION_BUDGET = 1 << 19
"""Counts kept per split (``classes * cells``, 4 MB of int64): larger images are counted on a coarser grid of cells
of ``2**k`` pixels per side."""
MAX_SPATIAL_DIMS = 3
"""Spatial dimensions of the targets a position grid is kept for (``[N, L]``, ``[N, H, W]``, ``[N, D, H, W]``)."""


@dataclass(frozen=True)
class PositionPrior:
    """The cross-entropy the best input-ignoring model reaches on a split: ``H(Y | position)``."""

    entropy: float
    """Miller-Madow corrected conditional entropy, at the grid level where it is lowest."""
    noise: float
    """Standard error of :attr:`entropy` over the split's samples (images or sequences, not pixels: the pixels of
    one image are not independent), 0 until a reference table from an earlier epoch is known."""
    accuracy: float
    """Accuracy of predicting each cell's most frequent class, on these very targets: no prediction that ignores the
    input gets more right on them."""
    cell: int
    """Side of the grid cells it was estimated on, in pixels (tokens)."""
    samples: int
    """Targets it was estimated from."""


def entropy_levels(counts: Tensor) -> list[tuple[int, float, float]]:
    """Per grid level (cells of ``2**k`` positions per side, up to one cell): the cell side, the Miller-Madow
    corrected entropy of the class given the cell, and the plug-in one, from ``[C, *grid]`` counts.

    The plug-in entropy of ``N`` samples of a ``K``-class distribution is low by ``(K - 1) / 2N`` to first order
    (Miller-Madow; ``K`` the classes seen in the cell); a fine grid has few samples per cell, a coarse one conditions
    on less (``H(Y | cell) >= H(Y | position)``): every level is a prior an input-ignoring model can reach.

    Example::

        >>> counts = torch.tensor([[[90, 10], [10, 90]], [[10, 90], [90, 10]]])  # 2 classes on a 2 x 2 grid
        >>> [(cell, round(corrected, 2)) for cell, corrected, _ in entropy_levels(counts)]
        [(1, 0.33), (2, 0.69)]
    """
    levels: list[tuple[int, float, float]] = []
    cell = 1
    grid = counts.double()
    while True:
        totals = grid.sum(0)
        occupied = totals > 0
        total = float(totals.sum())
        if total <= 0:
            return levels
        shares = grid / totals.clamp(min=1)
        plug_in = float(-(grid * shares.clamp(min=1e-300).log()).sum()) / total
        seen = (grid > 0).sum(0).double()
        bias = float(((seen - 1).clamp(min=0) / 2.0)[occupied].sum()) / total
        levels.append((cell, plug_in + bias, plug_in))
        if all(size == 1 for size in grid.shape[1:]):
            return levels
        grid, cell = pool_positions(grid), cell * 2


def pool_positions(grid: Tensor) -> Tensor:
    """Sum ``[C, *grid]`` counts over cells of two positions per spatial side (an odd side padded with nothing)."""
    for dim in range(1, grid.ndim):
        if grid.shape[dim] % 2:
            pad = list(grid.shape)
            pad[dim] = 1
            grid = torch.cat([grid, grid.new_zeros(pad)], dim)
        grid = grid.unflatten(dim, (grid.shape[dim] // 2, 2)).sum(dim + 1)
    return grid


class PositionCounts(Metric):
    """Per-class counts of an evaluation split's targets at each position of a fixed grid; sum-reduced across ranks.

    The grid is decided on the first batch: its targets' spatial shape ``[*S]`` (one to three dims), counted per
    pixel while ``C * prod(S)`` fits :data:`POSITION_BUDGET`, else on cells of ``2**k`` pixels per side. Targets of
    another spatial shape (variable-size images) are left out and counted as such; so are ignored targets (the
    ``valid`` mask). Sequences (``[N, L]``, padded to the batch's longest) are counted by their absolute position,
    whatever the batch's length, up to ``POSITION_BUDGET // C`` positions. Updates never read a tensor to the host.

    It also keeps each sample's summed ``-ln q`` under :attr:`reference` (the position prior of the previous epoch,
    when set): the standard error of the entropy over samples (a ratio estimator over images), which pixel counts
    alone cannot give.

    Example::

        counts = PositionCounts(num_classes=3).to(device)
        counts.update(targets, valid)  # [N, H, W] class indices, and which of them count
        prior = position_prior(counts)
    """

    full_state_update = False
    counts: Tensor
    grid_low: Tensor
    grid_high: Tensor
    left_out: Tensor
    sample_moments: Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.capacity = max(POSITION_BUDGET // num_classes, 1)
        # a fixed size whatever the grid: every rank's state has the same shape, even when their images differ
        # (and one trash bin last, for targets left out, so that counting is a single in-place index_add_)
        self.add_state("counts", torch.zeros(num_classes * self.capacity + 1, dtype=torch.long), dist_reduce_fx="sum")
        # the grid (cell side, then the spatial shape) every rank counted on: rank disagreement makes low != high
        for state, reduce in (("grid_low", "min"), ("grid_high", "max")):
            self.add_state(state, torch.zeros(MAX_SPATIAL_DIMS + 1, dtype=torch.long), dist_reduce_fx=reduce)
        self.add_state("left_out", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        # per sample: count, sum of -ln q, its square, targets, their square, their product (a ratio estimator)
        self.add_state("sample_moments", torch.zeros(6, dtype=torch.float64), dist_reduce_fx="sum")
        self.grid: tuple[int, ...] | None = None
        """The cell grid's shape; ``()`` when the targets have no spatial grid this metric can keep."""
        self.shape: tuple[int, ...] = ()
        self.cell = 1
        self.reference: Tensor | None = None
        """``-ln q`` per class and cell (flat, one trailing 0 for left-out targets) of an earlier epoch's prior."""
        self._cells: Tensor | None = None
        self._described = torch.zeros(MAX_SPATIAL_DIMS + 1, dtype=torch.long)
        self._undescribed = True

    def update(self, targets: Tensor, valid: Tensor) -> None:
        """Count ``[N, *S]`` class ``targets`` where ``valid``."""
        if self.grid is None:
            self._decide_grid(tuple(targets.shape[1:]))
        if self._undescribed:  # after a reset: say again which grid this rank counts on
            self._undescribed = False
            self.grid_low.copy_(self._described)
            self.grid_high.copy_(self._described)
        cells = self._cells_of(tuple(targets.shape[1:]))
        if cells is None:
            self.left_out += valid.sum()
            return
        inside = valid & (cells >= 0)
        self.left_out += (valid & ~inside).sum()
        trash = self.num_classes * self.capacity
        index = torch.where(inside, targets.long() * self.capacity + cells.clamp(min=0), trash)
        self.counts.index_add_(0, index.reshape(-1), torch.ones_like(index).reshape(-1))
        if self.reference is not None:
            losses = self.reference[index].reshape(len(targets), -1).sum(1)
            sizes = inside.reshape(len(targets), -1).sum(1).double()
            moments = [torch.ones_like(sizes), losses, losses.square(), sizes, sizes.square(), losses * sizes]
            self.sample_moments += torch.stack(moments).sum(1)

    @override
    def reset(self) -> None:
        super().reset()
        self._undescribed = True

    def _decide_grid(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        if not 1 <= len(shape) <= MAX_SPATIAL_DIMS:
            self.grid = ()
            return
        if len(shape) == 1:  # sequences of any length: absolute positions up to the capacity
            self.grid = (self.capacity,)
        else:
            while math.prod(math.ceil(size / self.cell) for size in shape) > self.capacity:
                self.cell *= 2
            self.grid = tuple(math.ceil(size / self.cell) for size in shape)
        self._described = torch.tensor([self.cell, *self.grid, *[0] * (MAX_SPATIAL_DIMS - len(self.grid))])

    def _cells_of(self, shape: tuple[int, ...]) -> Tensor | None:
        """Flat cell index of each position of ``[*shape]`` targets (-1 past the grid), ``None`` if not countable."""
        if not self.grid:
            return None
        if len(shape) == 1:
            if self._cells is None or self._cells.numel() < shape[0]:
                positions = torch.arange(max(shape[0], 64), device=self.counts.device)
                self._cells = torch.where(positions < self.capacity, positions, -1)
            return self._cells[: shape[0]]
        if shape != self.shape:
            return None
        if self._cells is None:
            ranges = (torch.arange(size, device=self.counts.device) // self.cell for size in shape)
            axes = torch.meshgrid(*ranges, indexing="ij")
            index = torch.zeros(shape, dtype=torch.long, device=self.counts.device)
            for axis, size in zip(axes, self.grid, strict=True):
                index = index * size + axis
            self._cells = index
        return self._cells

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """The ``[C, *grid]`` counts (empty when no grid was kept or the ranks counted on different grids), the valid
        targets left out, and the per-sample moments under :attr:`reference`."""
        counts = torch.zeros(0, dtype=torch.long)
        if self.grid and bool((self.grid_low == self.grid_high).all()) and int(self.grid_high[0]) > 0:
            cells = math.prod(self.grid)
            counts = (
                self.counts[:-1].view(self.num_classes, self.capacity)[:, :cells].reshape(self.num_classes, *self.grid)
            )
        return counts.clone(), self.left_out.clone(), self.sample_moments.clone()

    def set_reference(self, counts: Tensor, cell: int) -> None:
        """Score the next epoch's samples against the prior of ``[C, *grid]`` ``counts`` pooled to cells of ``cell``
        grid positions per side (smoothed by half a count per class: a class unseen there costs a finite loss)."""
        pooled = counts.double()
        for _ in range(cell.bit_length() - 1):
            pooled = pool_positions(pooled)
        smoothed = pooled + 0.5
        losses = -(smoothed / smoothed.sum(0, keepdim=True)).log()
        for dim, size in enumerate(counts.shape[1:], start=1):
            losses = losses.repeat_interleave(cell, dim).narrow(dim, 0, size)
        table = torch.zeros(self.num_classes, self.capacity, dtype=torch.float64, device=self.counts.device)
        table[:, : losses[0].numel()] = losses.reshape(self.num_classes, -1).to(table.device)
        self.reference = torch.cat([table.reshape(-1), table.new_zeros(1)])


def position_prior(metric: PositionCounts) -> PositionPrior | None:
    """The position prior of the epoch ``metric`` counted (a collective under DDP, like every metric's compute), and
    the reference its next epoch scores samples against; ``None`` when it does not cover every valid target
    (variable-size images, sequences past the budget) or nothing was counted.

    The entropy is the lowest Miller-Madow corrected level of :func:`entropy_levels`. Its noise is over samples,
    not pixels: ``H = sum_i t_i / sum_i m_i`` (``t_i`` the summed ``-ln q`` of sample ``i``'s ``m_i`` targets) is a
    ratio estimator, whose standard error is ``sqrt(Var_i(t_i - H m_i) / n) / mean(m)``; it is measured against the
    previous epoch's table (the same split, so the same prior) and is 0 at the first epoch.
    """
    counts, left_out, moments = metric.compute()
    metric.reset()
    if counts.numel() == 0 or int(left_out) > 0:
        return None
    levels = entropy_levels(counts)
    if not levels:
        return None
    cell, entropy, _ = min(levels, key=lambda level: level[1])
    metric.set_reference(counts, cell)
    pooled = counts
    for _ in range(cell.bit_length() - 1):
        pooled = pool_positions(pooled)
    total = int(counts.sum())
    accuracy = float(pooled.amax(0).sum()) / total
    return PositionPrior(entropy, _sample_noise(moments.tolist()), accuracy, cell * metric.cell, total)


def _sample_noise(moments: list[float]) -> float:
    """Standard error of a ratio estimator ``sum t / sum m`` from ``n, sum t, sum t^2, sum m, sum m^2, sum t m``."""
    n, t, tt, m, mm, tm = moments
    if n < 2 or m <= 0:
        return 0.0
    ratio = t / m
    residual = (tt - 2 * ratio * tm + ratio * ratio * mm) / (n - 1)
    return math.sqrt(max(residual, 0.0) / n) / (m / n)


def with_position_prior(summary: ConfusionSummary, metric: PositionCounts | None) -> ConfusionSummary:
    """``summary`` with the position prior ``metric`` counted this epoch (and ``metric`` reset for the next)."""
    prior = position_prior(metric) if metric is not None else None
    if prior is None:
        return summary
    return dataclasses.replace(
        summary, position_entropy=prior.entropy, position_noise=prior.noise, position_accuracy=prior.accuracy
    )


def position_evidence(summary: ConfusionSummary, eval_loss: float | None, unit: str) -> tuple[str, dict[str, float]]:
    """What a verdict adds when the position prior is the bar the validation loss did not beat: a sentence naming it
    (``unit`` is ``"pixel"`` or ``"token"``) and its numbers; nothing when the class prior is the bar."""
    if not summary.position_is_the_prior or summary.position_entropy is None:
        return "", {}
    numbers = {
        "position_prior_entropy": round(summary.position_entropy, 4),
        "position_prior_noise": round(summary.position_noise, 4),
        "position_accuracy": round(summary.position_accuracy or 0.0, 4),
    }
    loss = "" if eval_loss is None else f" {eval_loss:.3f}"
    sentence = (
        f" The validation cross-entropy{loss} is no better than predicting each {unit}'s class from its position "
        f"alone ({summary.position_entropy:.3f}; the class frequencies alone give {summary.prior_entropy:.3f}): "
        "what the model learned is where the classes tend to be, not anything from its input."
    )
    return sentence, numbers
