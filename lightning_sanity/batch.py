"""Finding ``(inputs, targets)`` in the batches users actually write."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor

INPUT_KEYS = ("image", "images", "input", "inputs", "x", "features", "pixel_values", "input_ids")
TARGET_KEYS = ("label", "labels", "target", "targets", "y", "mask", "masks")

BatchAdapter = Callable[[Any], "tuple[Tensor | None, Tensor | None]"]
"""A user function mapping a batch to ``(inputs, targets)``; either may be ``None``."""


class BatchParts(NamedTuple):
    inputs: Tensor | None
    targets: Tensor | None


class UnsupportedBatch(ValueError):
    """The batch structure is not one we can find inputs and targets in."""


def _by_key(fields: Mapping[str, Any], keys: Sequence[str]) -> Tensor | None:
    for key in keys:
        value = fields.get(key)
        if isinstance(value, Tensor):
            return value
    return None


def _from_fields(fields: Mapping[str, Any]) -> BatchParts:
    parts = BatchParts(_by_key(fields, INPUT_KEYS), _by_key(fields, TARGET_KEYS))
    if parts.inputs is None:
        raise UnsupportedBatch(f"no tensor under any of the input keys {list(INPUT_KEYS)}; keys are {sorted(fields)}")
    return parts


def _is_namedtuple(batch: Any) -> bool:
    return isinstance(batch, tuple) and hasattr(batch, "_fields")


def split_batch(batch: Any, adapter: BatchAdapter | None = None) -> BatchParts:
    """Return the model inputs and targets of ``batch``.

    Understands a bare tensor, ``(x, y, ...)`` tuples and lists, dicts with common keys
    (``image(s)``, ``input(s)``, ``x``, ``features`` / ``label(s)``, ``target(s)``, ``y``),
    namedtuples and dataclasses. ``adapter`` overrides all of that.

    Raises:
        UnsupportedBatch: when no input tensor can be found.

    Example::

        >>> import torch
        >>> parts = split_batch({"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])})
        >>> parts.inputs.shape, parts.targets.tolist()
        (torch.Size([2, 3]), [0, 1])
    """
    if adapter is not None:
        inputs, targets = adapter(batch)
        return BatchParts(inputs, targets)
    if isinstance(batch, Tensor):
        return BatchParts(batch, None)
    if isinstance(batch, Mapping):
        return _from_fields(batch)
    if _is_namedtuple(batch):
        fields = batch._asdict()
        if any(isinstance(fields.get(k), Tensor) for k in INPUT_KEYS):
            return _from_fields(fields)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return _from_fields({f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)})
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return BatchParts(batch[0], targets)
    raise UnsupportedBatch(f"unrecognised batch of type {type(batch).__name__}")


def batch_tensors(batch: Any) -> list[tuple[int | str, Tensor]]:
    """The top-level tensors of a tuple, list, mapping, namedtuple or dataclass batch, with their position or key.

    Example::

        >>> import torch
        >>> [where for where, _ in batch_tensors((torch.zeros(2), torch.ones(2), "id"))]
        [0, 1]
    """
    if isinstance(batch, Mapping):
        items: list[tuple[int | str, Any]] = list(batch.items())
    elif _is_namedtuple(batch):
        items = list(batch._asdict().items())
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        items = [(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)]
    elif isinstance(batch, (tuple, list)):
        items = list(enumerate(batch))
    else:
        return []
    return [(where, value) for where, value in items if isinstance(value, Tensor)]


def tensor_at(batch: Any, where: int | str) -> Tensor | None:
    """The top-level tensor of ``batch`` at the position or key ``where`` (see :func:`batch_tensors`)."""
    return next((tensor for key, tensor in batch_tensors(batch) if key == where), None)
