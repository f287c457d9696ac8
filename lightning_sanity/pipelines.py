"""A model of preprocessing pipelines: where a dataloader's transform is, what its steps do to pixel scale.

Pure functions, no Lightning: find the transform behind a dataloader (through ``Subset``,
``ConcatDataset`` and wrappers exposing ``.dataset``), flatten torchvision v1/v2 ``Compose``,
``nn.Sequential`` and lists into numbered steps, and follow the scale of the image through them
(PIL → ``ToTensor`` → [0, 1]; ``PILToTensor`` / ``ToImage`` → 0-255 integers; ``ToDtype(float,
scale=True)`` → [0, 1]; ...). Also: which steps are random, where the underlying raw samples are
(for overlap checks), and measuring the range of a few drawn samples when a step is opaque.

Example::

    from lightning_sanity.pipelines import describe_loader, find_normalize

    mean_std = find_normalize(val_dataloader)  # ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) or None
    for pipeline in describe_loader(train_dataloader).pipelines:
        print(pipeline.summary())  # RandomResizedCrop → RandomHorizontalFlip → ToTensor → Normalize
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, IterableDataset, Subset

from lightning_sanity.batch import UnsupportedBatch, split_batch
from lightning_sanity.observe import dataloader_label
from lightning_sanity.rng import forked_rng


class Scale(str, enum.Enum):
    """What a pipeline step receives or produces, as far as pixel scale goes."""

    RAW = "raw"  # whatever the dataset stores (usually a PIL image or uint8 array)
    PIL = "PIL image"
    UNIT = "[0, 1]"
    BYTE = "0-255"
    NORMALIZED = "normalized"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


_CONTAINERS = ("Compose",)
_RANDOM_CONTAINERS = ("RandomApply", "RandomChoice", "RandomOrder")
_RANDOM_NAMES = frozenset(
    {
        "ColorJitter",
        "AutoAugment",
        "RandAugment",
        "TrivialAugmentWide",
        "AugMix",
        "GaussianBlur",
        "GaussianNoise",
        "ElasticTransform",
        "ScaleJitter",
        "MixUp",
        "CutMix",
        "JPEG",
    }
)
_OPAQUE_NAMES = frozenset({"Lambda", "LinearTransformation"})


def torchvision_name(transform: Any) -> str | None:
    """The name of the torchvision transform class ``transform`` is (or subclasses), else ``None``."""
    for cls in type(transform).__mro__:
        if cls.__module__.startswith("torchvision.transforms") and cls.__name__ not in ("Transform", "Module"):
            return cls.__name__
    return None


def _is_container(transform: Any) -> bool:
    return torchvision_name(transform) in _CONTAINERS or type(transform) is nn.Sequential


def flatten_transform(transform: Any) -> list[Any]:
    """The leaf steps of a ``Compose`` (v1 or v2), ``nn.Sequential``, list or tuple, in application order."""
    if transform is None:
        return []
    if isinstance(transform, (list, tuple)):
        return [leaf for item in transform for leaf in flatten_transform(item)]
    if _is_container(transform):
        inner = transform.transforms if hasattr(transform, "transforms") else list(transform.children())
        return flatten_transform(list(inner))
    return [transform]


def _float_dtype(dtype: Any) -> bool | None:
    """``True`` for a float dtype, ``False`` for an integer one, ``None`` if not known (v2 dicts without images)."""
    if isinstance(dtype, Mapping):
        from torchvision import tv_tensors

        dtype = next((dtype[key] for key in (tv_tensors.Image, Tensor, "others") if key in dtype), None)
    if not isinstance(dtype, torch.dtype):
        return None
    return dtype.is_floating_point


def _convert_dtype(receives: Scale, to_float: bool | None, scale: bool) -> Scale:
    if to_float is None or receives in (Scale.PIL, Scale.RAW):
        return receives if receives is Scale.PIL else Scale.UNKNOWN
    if to_float and scale and receives is Scale.BYTE:
        return Scale.UNIT
    if not to_float and scale and receives is Scale.UNIT:
        return Scale.BYTE
    return receives


def step_output_scale(transform: Any, receives: Scale) -> Scale:
    """The scale of what ``transform`` (one leaf step) produces from input on scale ``receives``."""
    name = torchvision_name(transform)
    if name is None:
        return receives if isinstance(transform, nn.Identity) else Scale.UNKNOWN
    if name == "Normalize":
        return Scale.NORMALIZED
    if name == "ToTensor":
        return Scale.UNIT if receives in (Scale.RAW, Scale.PIL, Scale.BYTE, Scale.UNKNOWN) else receives
    if name == "PILToTensor":
        return Scale.BYTE if receives in (Scale.RAW, Scale.PIL) else Scale.UNKNOWN
    if name == "ToImage":
        return Scale.BYTE if receives in (Scale.RAW, Scale.PIL) else receives
    if name == "ToDtype":
        return _convert_dtype(receives, _float_dtype(transform.dtype), bool(transform.scale))
    if name == "ConvertImageDtype":
        return _convert_dtype(receives, _float_dtype(transform.dtype), True)
    if name == "ToPILImage":
        return Scale.PIL if receives in (Scale.UNIT, Scale.BYTE, Scale.PIL) else Scale.UNKNOWN
    if name in _OPAQUE_NAMES:
        return Scale.UNKNOWN
    if name in _RANDOM_CONTAINERS:
        inner = flatten_transform(list(transform.transforms))
        return receives if all(step_output_scale(t, receives) is receives for t in inner) else Scale.UNKNOWN
    return receives  # every other torchvision transform (geometry, colour, augmentation) keeps the value range


def is_random(transform: Any) -> bool:
    """Whether a torchvision step draws random numbers on each call (a ``p=0`` or zero-strength one does not)."""
    name = torchvision_name(transform)
    if name is None or not (name.startswith("Random") or name in _RANDOM_NAMES):
        return False
    if getattr(transform, "p", None) == 0:
        return False
    if name == "ColorJitter":
        return any(getattr(transform, k, None) is not None for k in ("brightness", "contrast", "saturation", "hue"))
    if name == "GaussianBlur":
        low, high = transform.sigma
        return bool(low != high)
    return True


def describe(transform: Any, *, short: bool = False) -> str:
    """``Normalize(mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4])``; just the class name if ``short``."""
    name = torchvision_name(transform) or str(getattr(type(transform), "__name__", repr(transform)))
    if short:
        return name
    if name == "Normalize":
        return f"Normalize(mean={_fmt(transform.mean)}, std={_fmt(transform.std)})"
    if name in ("ToDtype", "ConvertImageDtype"):
        scale = f", scale={transform.scale}" if hasattr(transform, "scale") else ""
        return f"{name}({transform.dtype}{scale})"
    return name


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in _floats(values)) + "]"


def _floats(values: Any) -> tuple[float, ...]:
    if isinstance(values, Tensor):
        return tuple(float(v) for v in values.flatten().tolist())
    if isinstance(values, (int, float)):
        return (float(values),)
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Step:
    """One leaf transform at ``position`` (0-based, after flattening) of a pipeline."""

    position: int
    transform: Any
    receives: Scale
    produces: Scale
    scaled_by: str
    """The step that last set the scale this step receives (e.g. ``"ToTensor at position 2"``)."""

    @property
    def name(self) -> str:
        return describe(self.transform, short=True)

    def __str__(self) -> str:
        return f"{describe(self.transform)} at position {self.position}"


@dataclass(frozen=True)
class Normalization:
    """A ``Normalize`` step and what it receives."""

    step: Step
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def constants_scale(self) -> Scale:
        """The scale the constants are written for: ``BYTE`` (ImageNet's 123.7/58.4), ``UNIT`` (0.485/0.229)."""
        return constants_scale(self.mean, self.std)

    def on_unit_scale(self, receives: Scale) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``mean``/``std`` expressed for [0, 1] pixels, so a 0-1 and a 0-255 pipeline can be compared."""
        factor = 255.0 if receives is Scale.BYTE else 1.0
        return tuple(m / factor for m in self.mean), tuple(s / factor for s in self.std)


def constants_scale(mean: Sequence[float], std: Sequence[float]) -> Scale:
    """``BYTE`` if the constants only make sense for 0-255 pixels, ``UNIT`` if only for [0, 1] ones, else ``UNKNOWN``.

    Pixels in [0, 1] have a mean in [0, 1] and a std of at most 0.5, so a mean or std above 2 is
    written for 0-255 data; constants all within [-1, 1] would leave 0-255 data in the hundreds.
    """
    if max(mean) > 2.0 or max(std) > 2.0:
        return Scale.BYTE
    if max(abs(m) for m in mean) <= 1.0 and max(std) <= 1.0:
        return Scale.UNIT
    return Scale.UNKNOWN


@dataclass(frozen=True)
class Pipeline:
    """The flattened steps of one transform, with the scale each receives and produces."""

    steps: tuple[Step, ...]

    @classmethod
    def of(cls, transforms: Sequence[Any]) -> Pipeline:
        """Model ``transforms`` (applied in order to a raw sample) step by step."""
        steps: list[Step] = []
        scale, scaled_by = Scale.RAW, "the dataset"
        for position, transform in enumerate(flatten_transform(list(transforms))):
            produces = step_output_scale(transform, scale)
            steps.append(Step(position, transform, scale, produces, scaled_by))
            if produces is not scale:
                scaled_by = f"{describe(transform, short=True)} at position {position}"
            scale = produces
        return cls(tuple(steps))

    @property
    def output_scale(self) -> Scale:
        return self.steps[-1].produces if self.steps else Scale.RAW

    @property
    def output_scaled_by(self) -> str:
        if not self.steps:
            return "the dataset"
        last = self.steps[-1]
        return last.scaled_by if last.produces is last.receives else f"{last.name} at position {last.position}"

    @property
    def normalizations(self) -> list[Normalization]:
        return [
            Normalization(step, _floats(step.transform.mean), _floats(step.transform.std))
            for step in self.steps
            if step.name == "Normalize"
        ]

    @property
    def random_steps(self) -> list[Step]:
        return [step for step in self.steps if is_random(step.transform)]

    def range_preserved_after(self, step: Step) -> bool:
        """Whether every step after ``step`` keeps the value range, so outputs can be traced back through it."""
        return all(s.produces is s.receives for s in self.steps[step.position + 1 :])

    def summary(self) -> str:
        return " → ".join(step.name for step in self.steps) or "(empty)"


def own_transform(dataset: Any) -> Any:
    """The ``transform`` (or joint ``transforms``) a dataset applies itself, or ``None``."""
    for attribute in ("transform", "transforms"):
        try:
            value = getattr(dataset, attribute, None)
        except Exception:  # a property that fails must not stop the search
            value = None
        if type(value).__name__ == "StandardTransform":  # torchvision's wrapper of transform + target_transform
            value = getattr(value, "transform", None)
        if value is not None and (callable(value) or isinstance(value, (list, tuple))):
            return value
    return None


def _inner_datasets(dataset: Any) -> list[Any]:
    if isinstance(dataset, ConcatDataset):
        return list(dataset.datasets)
    inner = getattr(dataset, "dataset", None)
    return [inner] if inner is not None and inner is not dataset else []


def find_pipelines(dataset: Any, _depth: int = 0) -> list[Pipeline]:
    """The pipelines a dataset's samples go through, one per leaf dataset (several for a ``ConcatDataset``).

    Transforms found along a chain of wrappers are composed innermost first, since a wrapper
    transforms what the dataset it wraps returns.
    """
    chains = _transform_chains(dataset, _depth)
    return [Pipeline.of(chain) for chain in chains if chain]


def _transform_chains(dataset: Any, depth: int) -> list[list[Any]]:
    if depth > 16:
        return [[]]
    own = own_transform(dataset)
    inner = _inner_datasets(dataset)
    chains = [chain for child in inner for chain in _transform_chains(child, depth + 1)] if inner else [[]]
    return [[*chain, own] if own is not None else chain for chain in chains]


@dataclass(frozen=True)
class LoaderView:
    """A dataloader as the checks see it: its label (``"val/dataloader_idx_1"``, see
    :func:`~lightning_sanity.observe.dataloader_label`), dataset and pipelines."""

    label: str
    dataset: Any
    pipelines: tuple[Pipeline, ...] = field(default=())

    @property
    def pipeline(self) -> Pipeline | None:
        """The first pipeline (the only one unless the dataset is a ``ConcatDataset`` of differing ones)."""
        return self.pipelines[0] if self.pipelines else None


def describe_loader(dataloader: Any, label: str = "") -> LoaderView:
    """A :class:`LoaderView` of any object with a ``dataset`` attribute (a ``DataLoader``)."""
    dataset = getattr(dataloader, "dataset", None)
    return LoaderView(label, dataset, tuple(find_pipelines(dataset)) if dataset is not None else ())


def iter_loaders(loaders: Any, split: str) -> Iterator[tuple[str, Any]]:
    """``(label, dataloader)`` for each dataloader of ``split`` (one, or a list / dict of them), named by
    :func:`~lightning_sanity.observe.dataloader_label` as every callback names them: evaluation dataloaders by
    their ``dataloader_idx`` (``val``, ``val/dataloader_idx_1``), a dict of training dataloaders by key
    (``train/images``)."""
    if loaders is None:
        return
    items: list[tuple[int | str, Any]]
    if isinstance(loaders, Mapping):
        items = list(loaders.items()) if split == "train" else list(enumerate(loaders.values()))
    elif isinstance(loaders, (list, tuple)):
        items = list(enumerate(loaders))
    else:
        items = [(0, loaders)]
    for key, loader in items:
        # Lightning numbers evaluation dataloaders (``dataloader_idx``); several training dataloaders have only keys.
        name = str(key) if split.startswith("train") and len(items) > 1 else key
        label = dataloader_label(split, name)
        if isinstance(loader, (Mapping, list, tuple)):
            yield from iter_loaders(loader, label)
        else:
            yield label, loader


def find_normalize(dataloader: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the last ``Normalize`` in the dataloader's pipeline, or ``None``.

    Example::

        mean_std = find_normalize(trainer.val_dataloaders)
        if mean_std is not None:
            mean, std = (torch.tensor(v).view(-1, 1, 1) for v in mean_std)
            image = batch_images * std + mean
    """
    for _, loader in iter_loaders(dataloader, ""):
        view = describe_loader(loader)
        found = [n for pipeline in view.pipelines for n in pipeline.normalizations]
        if found:
            return found[-1].mean, found[-1].std
    return None


# ---------------------------------------------------------------- samples and measurement


def sample_indices(length: int, count: int) -> list[int]:
    """``count`` deterministic, evenly spread indices into a dataset of ``length`` items."""
    if length <= 0 or count <= 0:
        return []
    count = min(count, length)
    if count == 1:
        return [0]
    return sorted({round(i * (length - 1) / (count - 1)) for i in range(count)})


def draw_inputs(dataset: Any, count: int) -> list[Tensor]:
    """The input tensors of ``count`` items of ``dataset``, read in this process with the RNG forked.

    Items whose input is not a tensor or array (a PIL image, a string) are left out.
    """
    if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return []
    try:
        length = len(dataset)
    except TypeError:
        return []
    inputs: list[Tensor] = []
    with forked_rng():
        for index in sample_indices(length, count):
            tensor = _input_of(dataset[index])
            if tensor is not None:
                inputs.append(tensor)
    return inputs


def _input_of(item: Any) -> Tensor | None:
    if isinstance(item, np.ndarray):
        return torch.from_numpy(item) if item.dtype.kind in "biuf" else None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], np.ndarray):
        return _input_of(item[0])
    try:
        return split_batch(item).inputs
    except UnsupportedBatch:
        return None


def value_range(inputs: Sequence[Tensor]) -> tuple[float, float] | None:
    """Smallest and largest finite value over float or integer ``inputs``."""
    values = [
        t.detach().float().flatten() for t in inputs if t.numel() and not t.is_complex() and t.dtype != torch.bool
    ]
    if not values:
        return None
    flat = torch.cat(values)
    flat = flat[torch.isfinite(flat)]
    if not flat.numel():
        return None
    return float(flat.min()), float(flat.max())


def scale_of_range(low: float, high: float, *, integer: bool = False) -> Scale:
    """``UNIT`` for values within [0, 1], ``BYTE`` for non-negative values reaching above 10 (pixels in 0-255).

    Anything else (negative values, a 0-5 range) is ``UNKNOWN``: it may be normalised data.
    """
    tolerance = 1e-3
    if low < -tolerance:
        return Scale.UNKNOWN
    if high <= 1.0 + tolerance and not integer:
        return Scale.UNIT
    if 10.0 < high <= 255.0 + tolerance:
        return Scale.BYTE
    return Scale.UNKNOWN


def measured_scale(inputs: Sequence[Tensor]) -> tuple[Scale, tuple[float, float] | None]:
    """The :func:`scale_of_range` of drawn inputs, and the range itself."""
    span = value_range(inputs)
    if span is None:
        return Scale.UNKNOWN, None
    integer = all(not t.is_floating_point() for t in inputs)
    return scale_of_range(*span, integer=integer), span


def received_range(inputs: Sequence[Tensor], normalization: Normalization) -> tuple[float, float] | None:
    """The range a ``Normalize`` received, recovered from its outputs as ``output * std + mean`` per channel."""
    mean, std = normalization.mean, normalization.std
    restored = []
    for tensor in inputs:
        if not tensor.is_floating_point() or tensor.dim() < 3:
            return None
        channels = tensor.shape[-3]
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            return None
        shape = (-1, 1, 1)
        restored.append(tensor * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape))
    return value_range(restored)


# ---------------------------------------------------------------- raw samples and overlap


Segments = list[tuple[Any, np.ndarray]]
"""Where a dataset's items come from: ``(base dataset, its indices)`` in order."""


def index_segments(dataset: Any, _depth: int = 0) -> Segments | None:
    """The base datasets and indices behind a dataset, through ``Subset``, ``ConcatDataset`` and wrappers.

    ``None`` when the mapping is not known (a wrapper that changes the length, an iterable dataset).
    """
    if _depth > 16 or isinstance(dataset, IterableDataset):
        return None
    try:
        length = len(dataset)
    except TypeError:
        return None
    if isinstance(dataset, Subset):
        parent = index_segments(dataset.dataset, _depth + 1)
        return None if parent is None else _select(parent, np.asarray(dataset.indices, dtype=np.int64))
    if isinstance(dataset, ConcatDataset):
        segments: Segments = []
        for child in dataset.datasets:
            child_segments = index_segments(child, _depth + 1)
            if child_segments is None:
                return None
            segments.extend(child_segments)
        return segments
    inner = _inner_datasets(dataset)
    if inner:
        try:
            same_length = len(inner[0]) == length
        except TypeError:
            same_length = False
        return index_segments(inner[0], _depth + 1) if same_length else None
    return [(dataset, np.arange(length, dtype=np.int64))]


def _select(segments: Segments, positions: np.ndarray) -> Segments:
    bounds = np.cumsum([0] + [len(indices) for _, indices in segments])
    selected: Segments = []
    owner = np.searchsorted(bounds, positions, side="right") - 1
    for number, (base, indices) in enumerate(segments):
        mine = positions[owner == number] - bounds[number]
        if len(mine):
            selected.append((base, indices[mine]))
    return selected


def sample_segments(segments: Segments, size: int, seed: int = 0) -> Segments:
    """At most ``size`` items of ``segments``, a fixed-seed uniform sample (all of them when there are fewer)."""
    total = sum(len(indices) for _, indices in segments)
    if total <= size:
        return segments
    positions = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    return _select(segments, positions)


def segments_size(segments: Segments) -> int:
    return sum(len(indices) for _, indices in segments)


_RAW_ATTRIBUTES = ("samples", "imgs", "data", "tensors", "images", "files", "paths", "image_paths", "filenames")


def raw_fingerprints(dataset: Any, indices: np.ndarray) -> np.ndarray | None:
    """One hash per item at ``indices`` of the raw data a dataset stores (file paths, arrays, tensors, in-memory
    images); ``None`` if no per-item raw data is found."""
    try:
        length = len(dataset)
    except TypeError:
        return None
    for attribute in _RAW_ATTRIBUTES:
        raw = getattr(dataset, attribute, None)
        if attribute == "tensors" and isinstance(raw, tuple) and raw:
            raw = raw[0]
        hashes = _hash_items(raw, length, indices)
        if hashes is not None:
            return hashes
    return None


def _hash_items(raw: Any, length: int, indices: np.ndarray) -> np.ndarray | None:
    if isinstance(raw, Tensor):
        if raw.device.type != "cpu":
            return None
        raw = raw.detach().numpy()
    if isinstance(raw, np.ndarray):
        if raw.ndim == 0 or len(raw) != length:
            return None
        rows = np.ascontiguousarray(raw[indices]).reshape(len(indices), -1)
        return np.fromiter((hash(row.tobytes()) for row in rows), dtype=np.int64, count=len(indices))
    if isinstance(raw, (list, tuple)) and len(raw) == length:
        return np.fromiter((hash(_item_key(raw[i])) for i in indices), dtype=np.int64, count=len(indices))
    return None


def _item_key(item: Any) -> Any:
    if hasattr(item, "tobytes"):  # PIL images, arrays
        return item.tobytes()
    if isinstance(item, (list, tuple)):
        return tuple(_item_key(part) for part in item)
    return item if isinstance(item, (str, bytes, int, float)) else repr(item)


@dataclass(frozen=True)
class Overlap:
    """How many items of an evaluation dataset also appear in the training dataset, and how that was found."""

    shared: int
    total: int
    how: str

    @property
    def fraction(self) -> float:
        return self.shared / self.total if self.total else 0.0


def index_overlap(train: Segments, other: Segments) -> Overlap | None:
    """Items of ``other`` that are the same items (same base dataset object and index) as items of ``train``."""
    shared_bases = [base for base, _ in other if any(base is b for b, _ in train)]
    if not shared_bases:
        return None
    shared = 0
    for base, indices in other:
        train_indices = [idx for b, idx in train if b is base]
        if train_indices:
            shared += int(np.isin(indices, np.concatenate(train_indices)).sum())
    total = sum(len(indices) for _, indices in other)
    how = "the same dataset object" if _covers_all(train) and _covers_all(other) else "Subsets of one dataset"
    return Overlap(shared, total, how)


def _covers_all(segments: Segments) -> bool:
    return all(len(indices) == len(base) for base, indices in segments)


def content_overlap(
    train: Segments, other: Segments, fingerprints: Callable[[Any, np.ndarray], np.ndarray | None]
) -> Overlap | None:
    """Items of ``other`` whose raw data (hash) also appears in ``train``; ``None`` if either side has no raw data.

    ``fingerprints(base, indices)`` hashes the given items of a base dataset (see :func:`raw_fingerprints`).
    """
    train_hashes = _hashes(train, fingerprints)
    other_hashes = _hashes(other, fingerprints)
    if train_hashes is None or other_hashes is None or not len(other_hashes):
        return None
    shared = int(np.isin(other_hashes, train_hashes).sum())
    return Overlap(shared, len(other_hashes), "identical raw samples")


def _hashes(segments: Segments, fingerprints: Callable[[Any, np.ndarray], np.ndarray | None]) -> np.ndarray | None:
    parts = []
    for base, indices in segments:
        hashes = fingerprints(base, indices)
        if hashes is None:
            return None
        parts.append(hashes)
    return np.concatenate(parts) if parts else None
