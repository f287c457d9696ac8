"""Property-based: no batch structure, however odd, makes a callback raise out of the user's fit."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

import lightning_sanity as ls

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.bool, torch.int64,
          torch.uint8]  # fmt: skip
KEYS = ["x", "y", "image", "images", "label", "labels", "input", "target", "features", "mask", "other"]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    if draw(st.booleans()) and values.numel():
        values.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 255.0, 0.0]))
    return values.to(dtype) if not dtype.is_complex else torch.complex(values, values).to(dtype)


leaves = st.one_of(st.none(), st.text(max_size=3), st.integers(-3, 3), st.floats(allow_nan=True), tensors())
batches = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    ),
    max_leaves=6,
).filter(lambda batch: batch is not None)  # Lightning's own loops spin forever on a None batch


class IgnoresItsBatch(pl.LightningModule):
    """Trains on a constant, so only the callbacks ever look at the odd batches."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.layer(torch.ones(1, 2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self().sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self().sum(), batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=batches)
@example(batch=torch.zeros(4, 0))  # found by this test: samples without elements
def test_arbitrary_batches_never_raise_out_of_a_callback(batch: Any) -> None:
    loader = DataLoader([batch, batch], batch_size=None)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=1, num_sanity_val_steps=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=ls.default_callbacks(),
    )  # fmt: skip
    trainer.fit(IgnoresItsBatch(), loader, loader)
    assert trainer.state.finished
    internal = [f.message for f in ls.collect_findings(trainer) if f.code == "sanity.internal_error"]
    assert internal == []
