"""No check writes in place to a tensor the user's graph, batch, module or optimizer can hold (issue #23, item 1).

Each program is fitted twice with the same seed, without the pack and with ``default_callbacks()``. The user's own
hooks record the ``_version`` counter of every batch tensor its step saw and of every parameter and buffer, where the
user's code reads them; an in-place write by any check moves a counter (and breaks the backward of a graph that saved
the tensor). The fit must succeed whenever it succeeds without the pack, see the same counters and end with the same
weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_sanity as ls
from lightning_sanity.demos import SmallCNN, digits_tensors, wine_tensors

Record = tuple[str, str, int]


def batch_tensors(batch: Any, where: str = "batch") -> list[tuple[str, Tensor]]:
    if isinstance(batch, Tensor):
        return [(where, batch)]
    if isinstance(batch, Mapping):
        return [found for key, item in batch.items() for found in batch_tensors(item, f"{where}.{key}")]
    if isinstance(batch, (tuple, list)):
        return [found for index, item in enumerate(batch) for found in batch_tensors(item, f"{where}[{index}]")]
    return []


class Program(pl.LightningModule):
    """A user's module that records version counters at every point its own code runs; subclasses give ``net`` and
    ``loss_of(batch)``."""

    batch_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.versions: list[Record] = []
        self._step_batch: Any = None

    def loss_of(self, batch: Any) -> Tensor:
        raise NotImplementedError

    def record(self, point: str, batch: Any = None) -> None:
        seen = [*batch_tensors(batch), *self.named_parameters(), *self.named_buffers()]
        kept = getattr(self, "kept_input", None)
        if isinstance(kept, Tensor):
            seen.append(("kept_input", kept))
        self.versions += [(point, name, tensor._version) for name, tensor in seen]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.record("training_step", batch)
        self._step_batch = batch
        loss = self.loss_of(batch)
        self.record("training_step returns", batch)
        return loss

    def on_before_backward(self, loss: Tensor) -> None:
        self.record("on_before_backward", self._step_batch)

    def on_after_backward(self) -> None:
        self.record("on_after_backward", self._step_batch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.record("on_train_batch_end", batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.record("validation_step", batch)
        self.log("val_loss", self.loss_of(batch))
        self.record("validation_step returns", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class NanImages(Program):
    """Issue #23's program: a digits CNN on per-image standardised scans, 5 % blank (all NaN)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(10, in_channels=1, width=16)

    def loss_of(self, batch: Any) -> Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    @staticmethod
    def data(split: str) -> Dataset:
        pixels, labels = digits_tensors(split, standardize=False)  # type: ignore[arg-type]
        images = pixels.reshape(-1, 1, 8, 8).clone()
        images[::20] = 0.0
        return TensorDataset((images - images.mean((1, 2, 3), True)) / images.std((1, 2, 3), keepdim=True), labels)


class Tokens(Program):
    """Integer inputs: each digit pixel's ink level (0-16) is a token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(17, 16)
        self.head = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 10))

    def loss_of(self, batch: Any) -> Tensor:
        return F.cross_entropy(self.head(self.embed(batch[0]).mean(1)), batch[1])

    @staticmethod
    def data(split: str) -> Dataset:
        pixels, labels = digits_tensors(split, standardize=False)  # type: ignore[arg-type]
        return TensorDataset(pixels.long(), labels)


class DictSamples(Dataset):
    def __init__(self, split: str) -> None:
        self.pixels, self.labels = digits_tensors(split)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.pixels[index].reshape(1, 8, 8), "label": self.labels[index], "id": index}


class DictBatches(Program):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.net(batch["image"]))

    def loss_of(self, batch: Any) -> Tensor:
        return F.cross_entropy(self(batch), batch["label"])

    @staticmethod
    def data(split: str) -> Dataset:
        return DictSamples(split)


class KeepsItsInput(Program):
    """A forward that keeps its input (for a later regulariser) and a running count in a buffer, eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.kept_input = x
        self.calls += 1
        return self.net(x)

    def loss_of(self, batch: Any) -> Tensor:
        logits = self(batch[0])
        return F.cross_entropy(logits, batch[1]) + 1e-3 * self.kept_input.square().mean()

    def on_before_backward(self, loss: Tensor) -> None:
        super().on_before_backward(loss)
        assert self.kept_input is self._step_batch[0], "the step's own input was replaced"

    @staticmethod
    def data(split: str) -> Dataset:
        return TensorDataset(*digits_tensors(split))  # type: ignore[arg-type]


class _SquaredError(torch.autograd.Function):
    """Mean squared error that saves the target for its backward: a write to the target in between raises."""

    @staticmethod
    def forward(ctx: Any, output: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(output, target)
        return (output - target).square().mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        output, target = ctx.saved_tensors
        return grad * 2 * (output - target) / output.numel(), None


class SavesItsTarget(Program):
    """Regression of wine's first (standardised) feature from the others, the loss saving the target."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 1))

    def loss_of(self, batch: Any) -> Tensor:
        return _SquaredError.apply(self.net(batch[0]).squeeze(1), batch[1])

    @staticmethod
    def data(split: str) -> Dataset:
        features, _ = wine_tensors(split)  # type: ignore[arg-type]
        return TensorDataset(features[:, 1:].clone(), features[:, 0].clone())


class OneSampleBatches(SavesItsTarget):
    """Batches of one sample: the input's memory is already channel-major, so a channel-major reading of it is a view
    of the user's batch, not a copy."""

    batch_size = 1


PROGRAMS: dict[str, Callable[[], Program]] = {
    "nan_inputs": NanImages,
    "integer_inputs": Tokens,
    "dict_batches": DictBatches,
    "keeps_its_input": KeepsItsInput,
    "loss_saves_its_target": SavesItsTarget,
    "one_sample_batches": OneSampleBatches,
}


def run(
    make_trainer: Any, name: str, pack: bool, leave_out: type | None = None
) -> tuple[Program, BaseException | None, pl.Trainer]:
    pl.seed_everything(0)
    model = PROGRAMS[name]()
    data = type(model).data  # type: ignore[attr-defined]
    train = DataLoader(data("train"), batch_size=model.batch_size, shuffle=True)
    val = DataLoader(data("val"), batch_size=model.batch_size)
    callbacks = [c for c in ls.default_callbacks() if leave_out is None or not isinstance(c, leave_out)] if pack else []
    trainer = make_trainer(callbacks=callbacks, max_epochs=2, limit_train_batches=3, limit_val_batches=2)
    try:
        trainer.fit(model, train, val)
    except Exception as error:  # compared with the fit without the pack
        return model, error, trainer
    return model, None, trainer


@pytest.mark.parametrize(
    ("name", "leave_out"),
    [*((name, None) for name in PROGRAMS), ("keeps_its_input", ls.ModeGuardCallback)],
)
def test_checks_write_nothing_the_users_step_holds(make_trainer: Any, name: str, leave_out: type | None) -> None:
    plain, plain_error, _ = run(make_trainer, name, pack=False)
    watched, error, trainer = run(make_trainer, name, pack=True, leave_out=leave_out)
    assert plain_error is None, plain_error
    assert error is None, f"the pack made the fit fail: {error!r}"
    assert watched.versions == plain.versions
    assert len(plain.versions) > 0
    for (key, value), expected in zip(watched.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(value.nan_to_num(), expected.nan_to_num()), f"{key} differs from the fit without the pack"
    assert [f.message for f in ls.collect_findings(trainer) if f.code == "sanity.internal_error"] == []


def test_the_nan_program_is_told_about_its_inputs(make_trainer: Any) -> None:
    """The finding the run exists for reaches the user, now that the run survives step 0."""
    _, error, trainer = run(make_trainer, "nan_inputs", pack=True)
    assert error is None
    assert "input.non_finite" in {f.code for f in ls.collect_findings(trainer)}
