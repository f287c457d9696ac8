"""Batch extraction on the structures users write."""

from __future__ import annotations

from collections import UserDict, namedtuple
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_sanity.batch import UnsupportedBatch, adapter_example, describe_structure, split_batch

X, Y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])


@dataclass
class Sample:
    image: torch.Tensor
    label: torch.Tensor


Pair = namedtuple("Pair", ["inputs", "targets"])
Anonymous = namedtuple("Anonymous", ["a", "b"])


class Encoding(UserDict):
    """A Mapping that is not a dict, as Hugging Face's ``BatchEncoding`` is."""


class Batch:
    """A user's own batch class with attribute access."""

    def __init__(self, inputs: Tensor, labels: Tensor) -> None:
        self.inputs, self.labels = inputs, labels


@pytest.mark.parametrize(
    "batch",
    [
        (X, Y),
        [X, Y],
        (X, Y, "extra", {"meta": 1}),
        {"image": X, "label": Y},
        {"images": X, "labels": Y, "ids": ["a"]},
        {"x": X, "y": Y},
        {"features": X, "target": Y},
        Pair(X, Y),
        Anonymous(X, Y),
        Sample(X, Y),
        Encoding(input_ids=X, labels=Y),
        SimpleNamespace(x=X, y=Y),
        Batch(X, Y),
        ({"input_ids": X, "attention_mask": torch.ones(4, 3)}, Y),
        ({"numeric": X, "category": torch.zeros(4, dtype=torch.long)}, Y),
    ],
    ids=lambda batch: type(batch).__name__,
)
def test_finds_inputs_and_targets(batch: object) -> None:
    parts = split_batch(batch)
    assert parts.inputs is X and parts.targets is Y and parts.rows is None


def test_bare_tensor_has_no_targets() -> None:
    parts = split_batch(X)
    assert parts.inputs is X and parts.targets is None


def test_tuple_with_non_tensor_target() -> None:
    parts = split_batch((X, ["a", "b"]))
    assert parts.inputs is X and parts.targets is None


def series_batch(target: Any) -> tuple[dict[str, Tensor], Any]:
    """A pytorch-forecasting batch: ``(x, (target, weight))`` with the library's input keys."""
    x = {
        "encoder_cat": torch.zeros(4, 24, 0, dtype=torch.long),
        "encoder_cont": torch.randn(4, 24, 1),
        "encoder_target": torch.randn(4, 24),
        "encoder_lengths": torch.full((4,), 24),
        "decoder_cont": torch.randn(4, 6, 1),
        "target_scale": torch.randn(4, 2),
    }
    return x, target


def test_forecasting_batch_reads_the_encoder_inputs_and_the_target() -> None:
    target = torch.randn(4, 6)
    batch = series_batch((target, None))
    parts = split_batch(batch)
    assert parts.inputs is batch[0]["encoder_cont"] and parts.targets is target


def test_forecasting_batch_with_a_weight_and_several_targets() -> None:
    first, second, weight = torch.randn(4, 6), torch.randn(4, 6), torch.ones(4, 6)
    parts = split_batch(series_batch(([first, second], weight)))
    assert parts.targets is not None and parts.targets.shape == (4, 6, 2)
    assert torch.equal(parts.targets[..., 0], first) and torch.equal(parts.targets[..., 1], second)


def test_forecasting_batch_without_continuous_encoder_inputs_uses_the_encoder_target() -> None:
    x, target = series_batch((torch.randn(4, 6), None))
    x["encoder_cont"] = torch.zeros(4, 24, 0)
    assert split_batch((x, target)).inputs is x["encoder_target"]


class Graph:
    """A PyG ``Data``-like graph (duck typing, no torch_geometric): 6 nodes, 2 of them training nodes."""

    def __init__(self, y: Tensor | None = None) -> None:
        self.x = torch.randn(6, 3)
        self.y = torch.tensor([0, 1, 2, 0, 1, 2]) if y is None else y
        self.edge_index = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
        self.train_mask = torch.tensor([True, True, False, False, False, False])
        self.val_mask = ~self.train_mask


@pytest.mark.parametrize("split, mask", [("train", "train_mask"), ("val", "val_mask")])
def test_graph_node_masks_select_the_split_nodes(split: str, mask: str) -> None:
    graph = Graph()
    parts = split_batch(graph, split=split)
    selected = getattr(graph, mask)
    assert parts.rows is selected
    assert torch.equal(parts.inputs, graph.x[selected]) and torch.equal(parts.targets, graph.y[selected])
    outputs = torch.randn(6, 3)
    assert torch.equal(parts.select(outputs), outputs[selected])


def test_graph_without_the_split_mask_is_every_node() -> None:
    graph = Graph()
    for split in ("test", None):
        parts = split_batch(graph, split=split)
        assert parts.inputs is graph.x and parts.targets is graph.y and parts.rows is None


def test_graph_level_targets_keep_every_node() -> None:
    graph = Graph(y=torch.tensor([1]))  # one label per graph (graph classification)
    parts = split_batch(graph, split="train")
    assert parts.inputs is graph.x and parts.targets is graph.y and parts.rows is None


class HeteroGraph:
    """A PyG ``HeteroData``-like graph: node stores by type, only the papers are labelled."""

    node_types = ["author", "paper"]

    def __init__(self) -> None:
        self.stores = {"author": SimpleNamespace(x=torch.randn(2, 5)), "paper": Graph()}

    def __getitem__(self, node_type: str) -> Any:
        return self.stores[node_type]


def test_heterogeneous_graph_reads_the_labelled_node_type() -> None:
    graph = HeteroGraph()
    papers = graph["paper"]
    parts = split_batch(graph, split="train")
    assert torch.equal(parts.targets, papers.y[papers.train_mask]) and parts.inputs.shape == (2, 3)


def test_pyg_data_and_hetero_data() -> None:
    pyg = pytest.importorskip("torch_geometric")
    graph = Graph()
    data = pyg.data.Data(x=graph.x, y=graph.y, edge_index=graph.edge_index, train_mask=graph.train_mask)
    batch = next(iter(pyg.loader.DataLoader([data], batch_size=1)))  # a DataBatch, as a Trainer receives it
    parts = split_batch(batch, split="train")
    assert torch.equal(parts.inputs, graph.x[:2]) and torch.equal(parts.targets, graph.y[:2])
    hetero = pyg.data.HeteroData()
    hetero["author"].x = torch.randn(2, 5)
    hetero["paper"].x, hetero["paper"].y, hetero["paper"].val_mask = graph.x, graph.y, graph.val_mask
    hetero["author", "writes", "paper"].edge_index = torch.tensor([[0, 1], [2, 3]])
    parts = split_batch(hetero, split="val")
    assert torch.equal(parts.inputs, graph.x[2:]) and torch.equal(parts.targets, graph.y[2:])


def test_hugging_face_batch_encoding() -> None:
    transformers = pytest.importorskip("transformers")
    ids = torch.randint(0, 100, (4, 8))
    encoding = transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": Y})
    parts = split_batch(encoding)
    assert parts.inputs is ids and parts.targets is Y


@pytest.mark.parametrize(
    "batch",
    [None, "text", 3, {"foo": X}, [], ("a", X), {"image": "not a tensor"}, SimpleNamespace(foo=X), ({"a": "b"}, Y)],
)
def test_unknown_structures_raise_unsupported(batch: object) -> None:
    with pytest.raises(UnsupportedBatch):
        split_batch(batch)


def test_adapter_overrides() -> None:
    parts = split_batch({"weird": (X, Y)}, adapter=lambda b: b["weird"])
    assert parts.inputs is X and parts.targets is Y


@pytest.mark.parametrize(
    "batch, example",
    [
        ({"weird": (X, Y)}, "lambda batch: (batch['weird'][0], batch['weird'][1])"),
        (SimpleNamespace(feats=X, label=Y), "lambda batch: (batch.feats, batch.label)"),
        ((Y, {"pixels": X}), "lambda batch: (batch[1]['pixels'], batch[0])"),
        ({"a": "text"}, "lambda batch: (inputs, targets)"),
    ],
)
def test_adapter_example_reads_the_structure_seen(batch: Any, example: str) -> None:
    assert adapter_example(batch) == example
    adapter = eval(example) if "inputs" not in example else None  # the example must be valid Python
    if adapter is not None:
        inputs, targets = adapter(batch)
        assert inputs is X and targets is Y


def test_structure_sketch() -> None:
    sketch = describe_structure(SimpleNamespace(feats=X, label=Y, name="a"))
    assert sketch == "SimpleNamespace(feats: Tensor[4, 3] float32, label: Tensor[4] int64, name: str)"
