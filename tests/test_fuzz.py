"""Property-based fuzz suite: generated Lightning programs fitted with and without ``default_callbacks()``.

For every generated program (batch structure, input kind, output type, loss, optimisation loop, Trainer flags; see
``tests/fuzz_programs.py``): (1) the pack raises no exception that the plain fit does not, and the same one when the
plain fit raises; (2) no ``sanity.internal_error``; (3) every parameter and buffer ends bit-identical to the plain
fit's. CI runs a fixed, derandomised budget; ``LS_FUZZ_EXAMPLES=500`` runs a deeper local search.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from fuzz_programs import (
    BATCHES,
    HEADS,
    INPUTS,
    KEYS,
    LAYERS,
    LOSSES,
    OPTIMISATIONS,
    OUTPUTS,
    VALIDATIONS,
    Program,
    violations,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

import lightning_sanity as ls
from lightning_sanity import SanityCallback

EXAMPLES = int(os.environ.get("LS_FUZZ_EXAMPLES", "300"))
"""Generated programs per CI run (0.3 s each, two fits, on a loaded 2-core machine); raise it for a deep local run."""


@st.composite
def programs(draw: st.DrawFn) -> Program:
    """A program with every axis drawn; axes that only make sense together (channels-last images, NaN in float
    inputs, Lightning's accumulation and clipping under automatic optimisation) are drawn together."""
    inputs = draw(st.sampled_from(INPUTS))
    batch = draw(st.sampled_from(BATCHES))
    optimisation = draw(st.sampled_from(OPTIMISATIONS))
    adversarial = optimisation in ("gan", "alternating")
    return Program(
        batch=batch,
        keys=draw(st.sampled_from(KEYS)) if batch in ("dict", "namedtuple") else KEYS[0],
        inputs=inputs,
        channels_last=inputs in ("image", "uint8") and draw(st.booleans()),
        non_finite=draw(st.sampled_from(("none", "nan", "inf"))) if inputs in ("float", "image") else "none",
        batch_size=draw(st.sampled_from((4, 1, 2))),
        shuffle=draw(st.booleans()),
        val=draw(st.sampled_from(VALIDATIONS)),
        val_returns=draw(st.booleans()),
        head=draw(st.sampled_from(HEADS)),
        output=draw(st.sampled_from(OUTPUTS)),
        loss=draw(st.sampled_from(LOSSES)),
        layer=draw(st.sampled_from(LAYERS)),
        inplace=draw(st.booleans()),
        skip_non_finite=optimisation == "automatic" and draw(st.booleans()),
        optimisation=optimisation,
        optimizer=draw(st.sampled_from(("sgd", "adam"))),
        accumulate=1 if adversarial else draw(st.sampled_from((1, 2))),
        scheduler=draw(st.booleans()),
        clip=draw(st.sampled_from((None, 0.5))) if optimisation == "automatic" else None,
        precision=draw(st.sampled_from(("32-true", "bf16-mixed"))),
        logger=draw(st.sampled_from((False, False, False, True))),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.slow
@pytest.mark.timeout(max(600, 10 * EXAMPLES))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(program=programs())
# Every axis named in issue 23 once, whatever the generator draws.
@example(program=Program(batch="dict", keys=("input_ids", "labels"), inputs="tokens", output="hf", loss="module"))
@example(program=Program(batch="namedtuple", inputs="bool", head="binary", output="dict", val="empty"))
@example(program=Program(batch="dataclass", inputs="image", channels_last=True, precision="bf16-mixed",
                         layer="batchnorm"))  # fmt: skip
@example(program=Program(batch="tensor", head="regression", output="tuple", val="none", logger=True))
@example(program=Program(non_finite="nan", layer="dropout", shuffle=True, loss="none_attributes"))
@example(program=Program(inputs="image", non_finite="inf", batch_size=1, loss="raising_property"))
@example(program=Program(optimisation="manual", accumulate=2, scheduler=True, optimizer="adam", loss="reduction"))
@example(program=Program(optimisation="gan", precision="bf16-mixed", head="binary", scheduler=True))
@example(program=Program(optimisation="alternating", batch="dict", keys=("src", "tgt"), layer="dropout"))
@example(program=Program(accumulate=2, clip=0.5, scheduler=True, output="hf", head="regression", logger=True))
@example(program=Program(batch_size=1, layer="batchnorm"))  # both fits raise: BatchNorm on one sample
@example(program=Program(inputs="uint8", channels_last=True, batch="dict", keys=("image", "label"), inplace=True))
@example(program=Program(non_finite="nan", skip_non_finite=True, inplace=True, output="dict"))
@example(program=Program(layer="counter", val="two", val_returns=False, inputs="image"))
@example(program=Program(layer="noise", batch="namedtuple", output="tuple", optimisation="manual"))
# Issue 23, case 1: a check restored NaN BatchNorm statistics in place, and the user's backward failed.
@example(program=Program(layer="batchnorm", non_finite="nan"))
@example(program=Program(layer="batchnorm", non_finite="nan", inputs="image", channels_last=True))
# Issue 23, case 3: a loss with ignore_index=None, or a property that raises, was an internal error.
@example(program=Program(loss="none_attributes", output="hf"))
@example(program=Program(loss="raising_property", head="regression", batch_size=1))
# Found by this suite: ModeGuard's stochastic-eval replay ran forward on the live module, and a buffer that forward
# writes in every mode (a call counter) ended different.
@example(program=Program(layer="counter"))
def test_generated_programs_keep_the_packs_promises(program: Program) -> None:
    assert violations(program) == []


class ConsumesRng(pl.Callback):
    def on_train_batch_start(self, *args: Any) -> None:
        torch.rand(1)


class RaisesInside(SanityCallback):
    name = "raises_inside"

    def on_train_batch_start(self, *args: Any) -> None:
        raise RuntimeError("a check that breaks")


class RaisesOutside(pl.Callback):
    def on_train_start(self, *args: Any) -> None:
        raise RuntimeError("a callback that kills the run")


@pytest.mark.parametrize(
    ("pack", "broken"),
    [
        (ConsumesRng, "weights differ from the plain fit"),
        (RaisesInside, "sanity.internal_error"),
        (RaisesOutside, "the packed fit raised"),
    ],
)
def test_each_property_catches_a_pack_that_breaks_it(pack: type[pl.Callback], broken: str) -> None:
    found = violations(Program(layer="dropout"), pack=lambda: [pack()])
    assert any(broken in violation for violation in found), found


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.bool, torch.int64,
          torch.uint8]  # fmt: skip
BATCH_KEYS = ["x", "y", "image", "images", "label", "labels", "input", "target", "features", "mask", "other"]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    if draw(st.booleans()) and values.numel():
        values.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 255.0, 0.0]))
    return values.to(dtype) if not dtype.is_complex else torch.complex(values, values).to(dtype)


leaves = st.one_of(st.none(), st.text(max_size=3), st.integers(-3, 3), st.floats(allow_nan=True), tensors())
odd_batches = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.sampled_from(BATCH_KEYS), children, max_size=3),
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


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(batch=odd_batches)
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
