"""Finding ``(inputs, targets)`` in the batches users actually write.

:func:`split_batch` tries a table of recognisers in order, each a small function that either claims the batch's
structure (and returns its parts, or raises :class:`UnsupportedBatch` when the structure is known but holds no input)
or returns ``None`` to pass it on: a bare tensor; a graph (PyG ``Data`` / ``DataBatch`` / ``HeteroData``, recognised
by its attributes); a mapping (dicts, Hugging Face ``BatchEncoding``); a namedtuple or dataclass with input fields;
an ``(inputs dict, targets)`` pair (pytorch-forecasting's ``(x, (target, weight))``); an ``(x, y, ...)`` sequence;
any object with input attributes (``batch.x``, ``batch.y``). When none claims it, :func:`adapter_example` writes the
``batch_adapter`` that would read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

INPUT_KEYS = ("image", "images", "input", "inputs", "x", "features", "pixel_values", "input_ids")
TARGET_KEYS = ("label", "labels", "target", "targets", "y", "mask", "masks")
SERIES_INPUT_KEYS = ("encoder_cont", "encoder_target")
"""Inputs of a forecasting model's input dict (pytorch-forecasting): the encoder's continuous variables."""
SPLIT_MASKS = {"train": "train_mask", "val": "val_mask", "test": "test_mask"}
"""The node mask attribute of a graph that selects each split's nodes (the nodes its loss is computed on)."""

BatchAdapter = Callable[[Any], "tuple[Tensor | None, Tensor | None]"]
"""A user function mapping a batch to ``(inputs, targets)``; either may be ``None``."""


class BatchParts(NamedTuple):
    """The model inputs and targets of a batch, one row per sample of the split.

    Attributes:
        inputs: The input tensor (``None`` only from an adapter).
        targets: The target tensor, or ``None``.
        rows: For a graph whose split is a node mask (full-batch node classification), that mask: ``inputs`` and
            ``targets`` hold the selected nodes only, while the model's outputs cover every node. :meth:`select`
            cuts them alike. ``None`` when every row is a sample.
    """

    inputs: Tensor | None
    targets: Tensor | None
    rows: Tensor | None = None

    def select(self, tensor: Tensor) -> Tensor:
        """``tensor`` cut to the split's rows when it has one row per node of the graph; otherwise as it is.

        Example::

            >>> import torch
            >>> parts = BatchParts(None, None, rows=torch.tensor([True, False, True]))
            >>> parts.select(torch.arange(3)).tolist(), parts.select(torch.arange(2)).tolist()
            ([0, 2], [0, 1])
        """
        rows = self.rows
        if rows is None or tensor.ndim == 0 or tensor.shape[0] != rows.shape[0]:
            return tensor
        return tensor[rows.to(tensor.device)]


class UnsupportedBatch(ValueError):
    """The batch structure is not one we can find inputs and targets in."""


Recogniser = Callable[[Any, "str | None"], "BatchParts | None"]
"""``(batch, split) -> parts``; ``None`` when the batch is not of the recogniser's structure."""


def _attribute(value: Any, name: str) -> Any:
    """``value.name``, or ``None`` when it is missing or its property raises (we only read, never fail)."""
    try:
        return getattr(value, name, None)
    except Exception:
        return None


def _by_key(fields: Mapping[str, Any], keys: Sequence[str]) -> Tensor | None:
    for key in keys:
        value = fields.get(key)
        if isinstance(value, Tensor) and value.numel() > 0:
            return value
    return None


def _from_fields(fields: Mapping[str, Any]) -> BatchParts:
    parts = BatchParts(_by_key(fields, INPUT_KEYS), _by_key(fields, TARGET_KEYS))
    if parts.inputs is None:
        raise UnsupportedBatch(f"no tensor under any of the input keys {list(INPUT_KEYS)}; keys are {sorted(fields)}")
    return parts


def _is_namedtuple(batch: Any) -> bool:
    return isinstance(batch, tuple) and hasattr(batch, "_fields")


def _is_dataclass_instance(batch: Any) -> bool:
    return dataclasses.is_dataclass(batch) and not isinstance(batch, type)


def _tensor(batch: Any, split: str | None) -> BatchParts | None:
    return BatchParts(batch, None) if isinstance(batch, Tensor) else None


def _graph(batch: Any, split: str | None) -> BatchParts | None:
    """A PyG-style graph: node features ``x``, targets ``y``, and ``edge_index`` (``HeteroData``: ``node_types``).

    Without importing torch_geometric. In full-batch node classification the step computes each split's loss on
    the nodes of its mask (``loss(out[batch.train_mask], batch.y[batch.train_mask])``): those nodes are the
    split's samples, and ``rows`` keeps the mask to cut the model's per-node outputs alike.
    """
    node_types = _attribute(batch, "node_types")
    if isinstance(_attribute(batch, "edge_index"), Tensor):
        store = batch
    elif isinstance(node_types, (list, tuple)) and node_types and not isinstance(batch, (Mapping, Tensor)):
        stores = [batch[node_type] for node_type in node_types]
        # the node type the model is trained to label carries y (one node type in node-level heterogeneous tasks)
        store = next((s for s in stores if isinstance(_attribute(s, "y"), Tensor)), stores[0])
    else:
        return None
    x, y = _attribute(store, "x"), _attribute(store, "y")
    if not isinstance(x, Tensor):
        raise UnsupportedBatch(f"a graph of type {type(batch).__name__} without node features `x`")
    y = y if isinstance(y, Tensor) else None
    mask = _attribute(store, SPLIT_MASKS.get(split or "", ""))
    node_level = y is not None and y.shape[:1] == x.shape[:1]
    if not (isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.shape == x.shape[:1] and node_level):
        return BatchParts(x, y)  # every node (graph-level targets, or a split without its own mask)
    assert y is not None
    return BatchParts(x[mask], y[mask], mask)


def _mapping(batch: Any, split: str | None) -> BatchParts | None:
    return _from_fields(batch) if isinstance(batch, Mapping) else None


def _namedtuple(batch: Any, split: str | None) -> BatchParts | None:
    if not _is_namedtuple(batch):
        return None
    fields = batch._asdict()
    return _from_fields(fields) if any(isinstance(fields.get(k), Tensor) for k in INPUT_KEYS) else None


def _dataclass(batch: Any, split: str | None) -> BatchParts | None:
    if not _is_dataclass_instance(batch):
        return None
    return _from_fields({f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)})


def _targets_of(value: Any) -> Tensor | None:
    """The targets of an ``(inputs, targets)`` pair: a tensor, the first of ``(target, weight)``, and a list of
    equally shaped targets (multi-target forecasting) stacked along a new last dim."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, Tensor) for t in value):
        same = all(t.shape == value[0].shape for t in value)
        return torch.stack(list(value), dim=-1) if same else value[0]  # a new tensor: nothing is written in place
    return value if isinstance(value, Tensor) else None


def _inputs_dict_pair(batch: Any, split: str | None) -> BatchParts | None:
    """``(inputs dict, targets)``, e.g. pytorch-forecasting's ``(x, (target, weight))``: the dict holds only inputs,
    so without a known input key its first non-empty float tensor is the input."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Mapping)):
        return None
    fields = batch[0]
    inputs = _by_key(fields, INPUT_KEYS + SERIES_INPUT_KEYS)
    floats = (v for v in fields.values() if isinstance(v, Tensor) and v.is_floating_point() and v.numel() > 0)
    inputs = inputs if inputs is not None else next(floats, None)
    if inputs is None:
        raise UnsupportedBatch(f"no float tensor in the inputs dict; keys are {sorted(map(str, fields))}")
    return BatchParts(inputs, _targets_of(batch[1]))


def _sequence(batch: Any, split: str | None) -> BatchParts | None:
    if not (isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor)):
        return None
    return BatchParts(batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None)


def _attributes(batch: Any, split: str | None) -> BatchParts | None:
    """Any other object with an input attribute (``batch.x``, ``batch.inputs``, ...), e.g. a custom batch class."""
    if isinstance(batch, (str, bytes, int, float, Sequence, Mapping)) or batch is None:
        return None
    fields = {key: _attribute(batch, key) for key in INPUT_KEYS + TARGET_KEYS}
    return _from_fields(fields) if _by_key(fields, INPUT_KEYS) is not None else None


RECOGNISERS: tuple[Recogniser, ...] = (
    _tensor,
    _graph,
    _mapping,
    _namedtuple,
    _dataclass,
    _inputs_dict_pair,
    _sequence,
    _attributes,
)
"""Tried in order; the first that claims a batch's structure reads it."""


def split_batch(batch: Any, adapter: BatchAdapter | None = None, split: str | None = None) -> BatchParts:
    """Return the model inputs and targets of ``batch``.

    Understands a bare tensor, ``(x, y, ...)`` tuples and lists, dicts with common keys (``image(s)``,
    ``input(s)``, ``x``, ``features`` / ``label(s)``, ``target(s)``, ``y``; Hugging Face ``BatchEncoding``),
    namedtuples, dataclasses and objects with such attributes, ``(inputs dict, targets)`` pairs
    (pytorch-forecasting's ``(x, (target, weight))``), and PyG graphs, whose ``split`` (``"train"``, ``"val"``,
    ``"test"``) node mask selects the samples. ``adapter`` overrides all of that.

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
    for recognise in RECOGNISERS:
        parts = recognise(batch, split)
        if parts is not None:
            return parts
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
    elif _is_dataclass_instance(batch):
        items = [(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)]
    elif isinstance(batch, (tuple, list)):
        items = list(enumerate(batch))
    else:
        return []
    return [(where, value) for where, value in items if isinstance(value, Tensor)]


def tensor_at(batch: Any, where: int | str) -> Tensor | None:
    """The top-level tensor of ``batch`` at the position or key ``where`` (see :func:`batch_tensors`)."""
    return next((tensor for key, tensor in batch_tensors(batch) if key == where), None)


# ---- what to tell a user whose batch is not understood ------------------------------------------------------------

_DEPTH = 3
_SHOWN = 8


def _children(value: Any) -> list[tuple[str, str, Any]]:
    """The parts of a container as ``(name, access suffix, value)``, e.g. ``("a", "['a']", ...)``, ``("x", ".x", ...)``,
    ``("0", "[0]", ...)``."""
    if isinstance(value, Mapping):
        return [(str(key), f"[{key!r}]", item) for key, item in value.items()]
    if _is_namedtuple(value):
        return [(name, f".{name}", item) for name, item in value._asdict().items()]
    if _is_dataclass_instance(value):
        return [(f.name, f".{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [(str(index), f"[{index}]", item) for index, item in enumerate(value)]
    if hasattr(value, "__dict__") and not isinstance(value, (Tensor, type)):
        return [(name, f".{name}", item) for name, item in vars(value).items() if not name.startswith("_")]
    return []


def _tensor_paths(value: Any, path: str = "batch", name: str = "", depth: int = 0) -> Iterator[tuple[str, str, Tensor]]:
    """Every tensor of a batch (a few levels deep) as ``(access path, name, tensor)``."""
    if isinstance(value, Tensor):
        yield path, name, value
    elif depth < _DEPTH:
        for child, suffix, item in _children(value):
            yield from _tensor_paths(item, path + suffix, child, depth + 1)


def describe_structure(value: Any, depth: int = 0) -> str:
    """A short type sketch of a batch, e.g. ``tuple(dict(a: Tensor[4, 3] float32), Tensor[4] int64)``.

    Example::

        >>> import torch
        >>> describe_structure(({"a": torch.zeros(4, 3)}, [torch.zeros(4, dtype=torch.long), None]))
        'tuple(dict(a: Tensor[4, 3] float32), list(Tensor[4] int64, None))'
    """
    if isinstance(value, Tensor):
        return f"Tensor[{', '.join(map(str, value.shape))}] {str(value.dtype).removeprefix('torch.')}"
    children = _children(value)
    if depth >= _DEPTH or not children:
        return type(value).__name__ if value is not None else "None"
    positional = isinstance(value, (tuple, list)) and not _is_namedtuple(value)
    shown = [
        ("" if positional else f"{name}: ") + describe_structure(item, depth + 1) for name, _, item in children[:_SHOWN]
    ]
    more = [f"... {len(children) - _SHOWN} more"] if len(children) > _SHOWN else []
    return f"{type(value).__name__}({', '.join(shown + more)})"


def adapter_example(batch: Any) -> str:
    """A ``batch_adapter`` for a batch that :func:`split_batch` does not understand, written for its structure: the
    first float tensor as inputs, and as targets the first tensor under a target name (``label``, ``y``, ...), else
    the next tensor.

    Example::

        >>> import torch
        >>> adapter_example({"sample": {"pixels": torch.zeros(2, 3)}, "answer": torch.tensor([0, 1])})
        "lambda batch: (batch['sample']['pixels'], batch['answer'])"
    """
    paths = list(_tensor_paths(batch))
    inputs = next((path for path, _, t in paths if t.is_floating_point()), paths[0][0] if paths else None)
    if inputs is None:
        return "lambda batch: (inputs, targets)"
    others = [(path, name) for path, name, _ in paths if path != inputs]
    named = (path for path, name in others if name.lower() in TARGET_KEYS)
    targets = next(named, others[0][0] if others else "None")
    return f"lambda batch: ({inputs}, {targets})"
