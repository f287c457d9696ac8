"""Batch extraction on the structures users write."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch

from lightning_sanity.batch import UnsupportedBatch, split_batch

X, Y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])


@dataclass
class Sample:
    image: torch.Tensor
    label: torch.Tensor


Pair = namedtuple("Pair", ["inputs", "targets"])
Anonymous = namedtuple("Anonymous", ["a", "b"])


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
    ],
)
def test_finds_inputs_and_targets(batch: object) -> None:
    parts = split_batch(batch)
    assert parts.inputs is X and parts.targets is Y


def test_bare_tensor_has_no_targets() -> None:
    assert split_batch(X) == (X, None)


def test_tuple_with_non_tensor_target() -> None:
    assert split_batch((X, ["a", "b"])) == (X, None)


@pytest.mark.parametrize("batch", [None, "text", 3, {"foo": X}, [], ("a", X), {"image": "not a tensor"}])
def test_unknown_structures_raise_unsupported(batch: object) -> None:
    with pytest.raises(UnsupportedBatch):
        split_batch(batch)


def test_adapter_overrides() -> None:
    parts = split_batch({"weird": (X, Y)}, adapter=lambda b: b["weird"])
    assert parts == (X, Y)
