"""Pure rules on dense (per-pixel) class targets: masks that went through interpolation.

A segmentation mask resized or rotated with bilinear/bicubic interpolation blends the ids of neighbouring regions: at
the border between regions 0 and 2 the pixels become 1 (or a fraction, if the mask is still float). Nearest-neighbour
resampling never creates a value that is not one of its neighbours'. The evidence is local: a pixel whose id lies
strictly between a lower and a higher id in its 3x3 neighbourhood is a *band* pixel. Healthy masks have band pixels
only where three regions meet or where a class is drawn thin on purpose between a lower and a higher one (a cell
boundary class), so one id seen only as bands is not enough: the rules want what a drawn class never shows.

Example::

    evidence = MaskEvidence()
    evidence.update(mask)  # [N, H, W] class ids of a batch, any device
    verdict = evidence.verdict()  # a MaskVerdict, or None
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset

from lightning_sanity.pipelines import flatten_transform, torchvision_name

# Thresholds; the calibration behind each number is in docs/findings.md (BatchStatsCallback section).
MIN_SIDE = 8
"""Masks smaller than this (height or width) are not judged: every pixel of a 4x4 mask is next to a border."""
MAX_IDS = 1024
"""Targets with more distinct values than this are not class ids (a depth map, a regression target)."""
BAND_SHARE = 0.8
"""An id is *band-only* in an image when at least this share of its pixels there are band pixels..."""
MIN_IMAGE_BAND = 3
"""... and at least this many."""
REGION_SHARE = 0.3
"""An id forms a *region* in an image when at least this share of its pixels there (and 9) are interior (3x3 equal)."""
MIN_BAND_PIXELS = 24
"""Band pixels an id needs over the judged images (in the images where it is band-only) to be reported."""
MIN_INTEGER_SHARE = 0.75
"""A float target is read as class ids when at least this share of its pixels are whole numbers ..."""
MIN_FRACTION_BAND = 0.5
"""... and its fractional pixels are interpolation bands when at least this share of them lie between a lower and a
higher value of their 3x3 neighbourhood (a depth map or an image has fractional plateaus and extrema)."""
MIN_FRACTIONAL_PIXELS = 16
MIN_FLOAT_IDS = 3
"""Whole-number ids a float mask needs to be judged: a binary float target with soft edges is also an alpha matte or
a deliberately soft label, and a 0/1 mask blended at its edges only moves its boundary by a fraction of a pixel."""
MIN_INTERIOR_SHARE = 0.5
"""Share of pixels a mask has inside constant 3x3 neighbourhoods: class-id masks are piecewise constant, an integer
depth or disparity map (every pixel between its neighbours) is not and is never judged."""
_SHOWN = 8  # ids listed in a message
MIN_BAND_IMAGES = 2
"""Images in which an id must be band-only ..."""
BAND_RATE = 0.5
"""... with at least this many band pixels per judged image (and :data:`MIN_BAND_PIXELS`): a small object of a real
class that happens to sit on a border once in a large batch is not a blend."""


def dense_class_targets(inputs: Tensor | None, targets: Tensor | None) -> Tensor | None:
    """``targets`` as an ``[N, H, W]`` view when they are per-pixel class ids of ``[N, C, H, W]`` inputs, else ``None``.

    The targets must be ``[N, H, W]`` or ``[N, 1, H, W]`` integers or floats with the inputs' batch size and spatial
    size: what a segmentation batch holds (a regression target, a label per sample, a token sequence never match).
    """
    if inputs is None or targets is None or inputs.ndim != 4:
        return None
    if not (targets.is_floating_point() or _is_integer(targets)):
        return None
    if targets.ndim == 4 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.ndim != 3 or targets.shape[0] != inputs.shape[0] or targets.shape[1:] != inputs.shape[2:]:
        return None
    return targets if min(targets.shape[1:]) >= MIN_SIDE and targets.numel() else None


def _is_integer(tensor: Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


class Neighbourhood:
    """Per-pixel 3x3 facts of one ``[N, H, W]`` batch of masks, computed with two max-pools (any device)."""

    def __init__(self, mask: Tensor) -> None:
        values = mask.double()[:, None] if mask.dtype == torch.float64 else mask.float()[:, None]
        high = F.max_pool2d(values, 3, 1, 1)[:, 0]
        low = -F.max_pool2d(-values, 3, 1, 1)[:, 0]
        self.values = values[:, 0]
        self.band = (low < self.values) & (self.values < high)
        """Pixels strictly between a lower and a higher neighbour."""
        self.interior = (low == self.values) & (high == self.values)
        """Pixels whose 3x3 neighbourhood holds their value only."""


def _between_whole_values(values: Tensor, whole: Tensor) -> Tensor:
    """Pixels with a lower and a higher whole-number pixel within 2 pixels: a ramp between two integer plateaus (an
    upsampled mask's band is several pixels wide; a heatmap's or an image's fractional values are not bracketed)."""
    high = F.max_pool2d(torch.where(whole, values, -torch.inf)[:, None], 5, 1, 2)[:, 0]
    low = -F.max_pool2d(torch.where(whole, -values, -torch.inf)[:, None], 5, 1, 2)[:, 0]
    return (low < values) & (values < high)


@dataclass
class IdTally:
    """What the judged images showed of one class id."""

    pixels: int = 0
    band_only_images: int = 0
    band_pixels: int = 0
    """Band pixels of the images where the id is band-only."""
    region_images: int = 0
    images: int = 0


@dataclass(frozen=True)
class MaskVerdict:
    """Interpolated masks: the blended ids, or the fractional values of a float mask.

    Attributes:
        blended: ``{id: tally}`` of the ids seen only as bands in some masks.
        fractional_share: Share of the pixels of a float mask that are not whole numbers (0 for integer masks).
        band_share: Share of those fractional pixels on ramps between a lower and a higher whole id.
        reason: Why the bands cannot be a class drawn thin on purpose.
        images: Masks judged.
    """

    blended: dict[int, IdTally]
    fractional_share: float
    band_share: float
    reason: str
    images: int

    def describe(self) -> str:
        """What was seen, for a finding's message."""
        if not self.blended:
            return (
                f"{self.fractional_share:.1%} of their pixels hold fractional values, {self.band_share:.0%} of them on "
                "ramps between a lower and a higher whole id (the blend of two regions, which a cast to int turns into "
                f"a third id), over {self.images} masks"
            )
        ids = list(self.blended)
        masks = sum(tally.band_only_images for tally in self.blended.values())
        share = sum(tally.band_pixels for tally in self.blended.values()) / sum(t.pixels for t in self.blended.values())
        return (
            f"ids {ids[:_SHOWN]}{' ...' if len(ids) > _SHOWN else ''} appear only as 1-2 px bands between a lower and "
            f"a higher id ({masks} times in {self.images} masks; {share:.0%} of all their pixels are such band pixels; "
            f"{self.reason})"
        )

    def evidence(self) -> dict[str, dict[str, float]]:
        """Per blended id: the masks where it is only bands, the masks holding it, the share of its pixels on bands."""
        return {
            str(value): {
                "band_only_masks": tally.band_only_images,
                "masks_with_id": tally.images,
                "band_pixel_share": round(tally.band_pixels / max(1, tally.pixels), 3),
            }
            for value, tally in list(self.blended.items())[:_SHOWN]
        }


@dataclass
class MaskEvidence:
    """Accumulates :class:`Neighbourhood` facts of the masks of the first batches of one dataloader.

    Example::

        evidence = MaskEvidence()
        evidence.update(torch.zeros(4, 16, 16, dtype=torch.long))
        evidence.verdict() is None  # True: one region, no bands
    """

    tallies: dict[int, IdTally] = field(default_factory=dict)
    images: int = 0
    pixels: int = 0
    fractional: int = 0
    fractional_band: int = 0
    interior: int = 0
    float_masks: bool = False
    skipped: bool = False
    """A batch's targets were not class ids (too many distinct values): nothing is concluded."""

    def update(self, mask: Tensor) -> None:
        """Add one ``[N, H, W]`` batch of masks (see :func:`dense_class_targets`)."""
        if self.skipped:
            return
        near = Neighbourhood(mask)
        whole = near.values == near.values.round()
        if mask.is_floating_point():
            self.float_masks = True
            fractional = ~whole & torch.isfinite(near.values)
            self.fractional += int(fractional.sum())
            self.fractional_band += int((fractional & _between_whole_values(near.values, whole)).sum())
        ids, inverse = torch.unique(torch.where(whole, near.values, -(2.0**40)), return_inverse=True)
        if ids.numel() > MAX_IDS:
            self.skipped = True
            return
        images = mask.shape[0]
        keys = (torch.arange(images, device=mask.device)[:, None, None] * ids.numel() + inverse).reshape(-1)
        counts = torch.stack(
            [
                torch.bincount(keys, weights=weights, minlength=images * ids.numel())
                for weights in (None, near.band.reshape(-1).double(), near.interior.reshape(-1).double())
            ]
        )
        table = counts.reshape(3, images, ids.numel()).double().cpu()
        for column, value in enumerate(ids.tolist()):
            if value == -(2.0**40):  # the fractional pixels of a float mask
                continue
            self._tally(int(value), table[:, :, column])
        self.images += images
        self.pixels += mask.numel()
        self.interior += int(near.interior.sum())

    def _tally(self, value: int, table: Tensor) -> None:
        pixels, band, interior = table
        present = pixels > 0
        band_only = (band >= MIN_IMAGE_BAND) & (band >= BAND_SHARE * pixels)
        region = (pixels >= 9) & (interior >= REGION_SHARE * pixels)
        tally = self.tallies.setdefault(value, IdTally())
        tally.pixels += int(pixels.sum())
        tally.images += int(present.sum())
        tally.band_only_images += int(band_only.sum())
        tally.band_pixels += int(band[band_only].sum())
        tally.region_images += int(region.sum())

    @property
    def interior_share(self) -> float:
        """Share of the judged pixels whose 3x3 neighbourhood holds one value: most of a mask, little of a depth map."""
        return self.interior / max(1, self.pixels)

    def blended_ids(self) -> dict[int, IdTally]:
        """The ids seen only as bands in enough images, with their tallies."""
        return {
            value: tally
            for value, tally in sorted(self.tallies.items())
            if tally.band_pixels >= max(MIN_BAND_PIXELS, BAND_RATE * self.images)
            and tally.band_only_images >= MIN_BAND_IMAGES
        }

    def verdict(self) -> MaskVerdict | None:
        """The interpolation verdict of what was seen, or ``None``."""
        if self.skipped or not self.images or self.interior_share < MIN_INTERIOR_SHARE:
            return None
        if self.float_masks and self.fractional >= MIN_FRACTIONAL_PIXELS:
            return self._float_verdict()
        blended = self.blended_ids()
        real = [value for value in blended if self.tallies[value].region_images]
        if len(blended) >= 2:
            reason = f"{len(blended)} different ids do"
        elif real:
            reason = f"id {real[0]} also forms regions of its own in other masks"
        else:  # one id, never a region: a class drawn thin on purpose (a cell boundary) looks the same
            return None
        return MaskVerdict(blended, 0.0, 1.0, reason, self.images)

    def _float_verdict(self) -> MaskVerdict | None:
        share = self.fractional / max(1, self.pixels)
        band_share = self.fractional_band / self.fractional
        if 1 - share < MIN_INTEGER_SHARE or band_share < MIN_FRACTION_BAND or len(self.tallies) < MIN_FLOAT_IDS:
            return None
        return MaskVerdict({}, share, band_share, "a float mask holds fractional values between its ids", self.images)


_MASK_ATTRIBUTES = ("target_transform", "mask_transform", "label_transform", "target_transforms", "transforms")
_NEAREST = frozenset({"nearest", "nearest-exact", "0"})


def interpolating_steps(dataloader: Any) -> list[str]:
    """The transforms a dataloader's masks may go through that resample without ``NEAREST`` (``Resize``,
    ``RandomRotation``, ``RandomResizedCrop`` ... with a bilinear or bicubic ``interpolation``), described as
    ``"Resize(interpolation=bilinear) at position 0 of target_transform"``.

    Read from the attributes datasets keep a mask's (or a joint) transform in; a v2 joint transform is left out when
    it is the dataset's ``transforms``, since v2 resamples a ``tv_tensors.Mask`` with nearest by itself.
    """
    found = []
    for dataset in _datasets(getattr(dataloader, "dataset", None), 0):
        for attribute in _MASK_ATTRIBUTES:
            transform: Any = getattr(dataset, attribute, None)
            if type(transform).__name__ == "StandardTransform":  # torchvision's pair of transform + target_transform
                transform, attribute = transform.target_transform, "target_transform"
            if transform is None or (
                attribute == "transforms" and type(transform).__module__.startswith("torchvision.transforms.v2")
            ):
                continue
            for position, step in enumerate(flatten_transform(transform)):
                mode = getattr(step, "interpolation", None)
                name = torchvision_name(step)
                if name is not None and mode is not None and str(getattr(mode, "value", mode)) not in _NEAREST:
                    found.append(
                        f"{name}(interpolation={getattr(mode, 'value', mode)}) at position {position} of {attribute}"
                    )
    return found


def _datasets(dataset: Any, depth: int) -> Iterator[Any]:
    """``dataset`` and the datasets it wraps (``Subset``, ``ConcatDataset``, anything with a ``dataset``)."""
    if dataset is None or depth > 16:
        return
    yield dataset
    inner = dataset.datasets if isinstance(dataset, ConcatDataset) else [getattr(dataset, "dataset", None)]
    for child in inner:
        if child is not dataset:
            yield from _datasets(child, depth + 1)
