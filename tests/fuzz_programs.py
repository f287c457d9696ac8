"""Generated Lightning programs for the fuzz suite (``tests/test_fuzz.py``).

A :class:`Program` is a plain, hashable description of one training program: the batch structure, the input kind,
the model's output type, its loss, the optimisation loop and the Trainer flags. :func:`violations` fits it twice
(with and without ``default_callbacks()``, same seed, same data) and names every broken promise of the pack.

Example::

    >>> sorted(violations(Program(batch="dict", inputs="tokens", output="hf")))  # doctest: +SKIP
    []
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import lightning_sanity as ls

FEATURES, TOKENS, SEQUENCE, CLASSES, HIDDEN = 8, 20, 5, 3, 16
IMAGE = (3, 6, 6)
TRAIN_BATCHES, VAL_BATCHES = 3, 2

BATCHES = ("tuple", "dict", "namedtuple", "dataclass", "tensor")
INPUTS = ("float", "tokens", "bool", "image", "uint8")
HEADS = ("classes", "binary", "regression")
OUTPUTS = ("tensor", "dict", "tuple", "hf")
LOSSES = ("functional", "module", "none_attributes", "reduction", "raising_property")
LAYERS = ("none", "batchnorm", "dropout", "counter", "noise")
OPTIMISATIONS = ("automatic", "manual", "gan", "alternating")
VALIDATIONS = ("loader", "empty", "none", "two")
KEYS = (("x", "y"), ("image", "label"), ("input_ids", "labels"), ("features", "target"), ("src", "tgt"))

# Module level so that Lightning's collection helpers and pickling see ordinary classes.
Pair = namedtuple("Pair", ["inputs", "targets"])
OpaquePair = namedtuple("OpaquePair", ["src", "tgt"])


@dataclass
class Example:
    """A dataclass batch with a field that is not a tensor."""

    inputs: Tensor
    targets: Tensor
    source: str = "generated"


@dataclass
class ModelOutput(OrderedDict):
    """Hugging Face's output shape: a dataclass that is also an ordered dict of its non-``None`` fields."""

    loss: Tensor | None = None
    logits: Tensor | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value


@dataclass(frozen=True)
class Program:
    """One generated training program; every field is one axis of the fuzz suite (see the tuples above)."""

    batch: str = "tuple"
    keys: tuple[str, str] = ("x", "y")
    inputs: str = "float"
    channels_last: bool = False  # image and uint8 inputs only
    non_finite: str = "none"  # "none", "nan" or "inf" in every third sample's first value
    batch_size: int = 4
    shuffle: bool = False
    val: str = "loader"
    val_returns: bool = True  # False: validation_step only logs
    head: str = "classes"
    output: str = "tensor"
    loss: str = "functional"
    layer: str = "none"
    inplace: bool = False  # ReLU(inplace=True), and the step clamps float inputs in place
    skip_non_finite: bool = False  # automatic optimisation: the step returns None on a non-finite loss
    optimisation: str = "automatic"
    optimizer: str = "sgd"
    accumulate: int = 1
    scheduler: bool = False
    clip: float | None = None
    precision: str = "32-true"
    logger: bool = False
    seed: int = 0


class OddLoss(nn.modules.loss._Loss):
    """A user's loss module with attributes a reader may not expect: ``ignore_index``/``weight`` set to ``None``, a
    ``reduction`` string of its own, or a ``label_smoothing`` property that raises."""

    def __init__(self, head: str, odd: str) -> None:
        super().__init__()
        self.head, self.odd = head, odd
        self.ignore_index: int | None = None if odd == "none_attributes" else -100
        self.weight: Tensor | None = None
        if odd == "reduction":
            self.reduction = "mean_over_valid"

    @property
    def label_smoothing(self) -> float:
        if self.odd == "raising_property":
            raise RuntimeError("label smoothing follows a schedule; read it from the scheduler")
        return 0.0

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return plain_loss(self.head, scores, target, ignore)


def plain_loss(head: str, scores: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    if head == "classes":
        return F.cross_entropy(scores, target, ignore_index=ignore_index)
    if head == "binary":
        return F.binary_cross_entropy_with_logits(scores.squeeze(1), target)
    return F.mse_loss(scores, target)


def loss_module(program: Program) -> nn.Module | None:
    if program.loss == "functional":
        return None
    if program.loss == "module" and program.head == "classes":
        return nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    if program.loss == "module":
        return nn.BCEWithLogitsLoss() if program.head == "binary" else nn.MSELoss()
    return OddLoss(program.head, program.loss)


class MeanTokens(nn.Module):
    """Token ids -> the mean of their embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(TOKENS, HIDDEN)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids).mean(dim=1)


def encoder(program: Program) -> nn.Module:
    if program.inputs == "tokens":
        return MeanTokens()
    if program.inputs in ("image", "uint8"):
        norm: nn.Module = nn.BatchNorm2d(4) if program.layer == "batchnorm" else nn.Identity()
        return nn.Sequential(
            nn.Conv2d(IMAGE[0], 4, 3), norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, HIDDEN)
        )
    return nn.Linear(FEATURES, HIDDEN)


class CountsCalls(nn.Module):
    """Counts its calls in a buffer, in place and in every mode (a step counter, a feature queue's pointer)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, hidden: Tensor) -> Tensor:
        self.calls += 1
        return hidden


class Noise(nn.Module):
    """Gaussian noise in every mode: it draws from the global RNG at every call, evaluation included."""

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + 0.1 * torch.randn_like(hidden)


def middle_layer(program: Program) -> nn.Module:
    layers: dict[str, type[nn.Module]] = {"counter": CountsCalls, "noise": Noise, "none": nn.Identity}
    if program.layer == "batchnorm":
        return nn.BatchNorm1d(HIDDEN)
    if program.layer == "dropout":
        return nn.Dropout(0.25)
    return layers[program.layer]()


class FuzzData(Dataset):
    """``size`` deterministic samples of the program's input kind and head, from their own generator."""

    def __init__(self, program: Program, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        if program.inputs == "tokens":
            self.x = torch.randint(0, TOKENS, (size, SEQUENCE), generator=generator)
        elif program.inputs == "bool":
            self.x = torch.rand(size, FEATURES, generator=generator) > 0.5
        elif program.inputs == "image":
            self.x = torch.rand(size, *IMAGE, generator=generator)
        elif program.inputs == "uint8":
            self.x = torch.randint(0, 256, (size, *IMAGE), generator=generator, dtype=torch.uint8)
        else:
            self.x = torch.randn(size, FEATURES, generator=generator)
        if program.non_finite != "none" and size:
            self.x.view(size, -1)[::3, 0] = float(program.non_finite)
        if program.head == "classes":
            self.y = torch.randint(0, CLASSES, (size,), generator=generator)
        elif program.head == "binary":
            self.y = torch.randint(0, 2, (size,), generator=generator).float()
        else:
            self.y = torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


def collate(program: Program, items: list[tuple[Tensor, Tensor]]) -> Any:
    """Stack samples into the program's batch structure."""
    x = torch.stack([item[0] for item in items])
    y = torch.stack([item[1] for item in items])
    if program.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if program.batch == "tensor":
        return x
    if program.batch == "dict":
        return {program.keys[0]: x, program.keys[1]: y, "index": list(range(len(items)))}
    if program.batch == "namedtuple":
        return OpaquePair(x, y) if program.keys == KEYS[-1] else Pair(x, y)
    if program.batch == "dataclass":
        return Example(x, y)
    return (x, y)


def targets_of(program: Program, x: Tensor) -> Tensor:
    """The targets of a bare-tensor batch, computed from the inputs (a self-supervised task)."""
    total = x.flatten(1).float().nan_to_num(0.0, 0.0, 0.0).sum(dim=1)
    if program.head == "classes":
        return torch.remainder(total.floor().long(), CLASSES)
    if program.head == "binary":
        return (total > total.median()).float()
    return total.unsqueeze(1) / x[0].numel()


class FuzzModule(pl.LightningModule):
    """The LightningModule of a :class:`Program`: encoder -> optional BatchNorm/Dropout -> ReLU -> head."""

    def __init__(self, program: Program) -> None:
        super().__init__()
        self.program = program
        self.automatic_optimization = program.optimisation == "automatic"
        self.encoder = encoder(program)
        self.body = nn.Sequential(middle_layer(program), nn.ReLU(inplace=program.inplace))
        self.head = nn.Linear(HIDDEN, CLASSES if program.head == "classes" else 1)
        self.critic = nn.Linear(CLASSES if program.head == "classes" else 1, 1)
        self.criterion = loss_module(program)
        if program.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Any:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        logits = self.head(self.body(self.encoder(x.float() if x.dtype == torch.bool else x)))
        if self.program.output == "dict":
            return {"logits": logits}
        if self.program.output == "tuple":
            return logits, logits.detach().argmax(dim=1)
        if self.program.output == "hf":
            return ModelOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits)
        return logits

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Tensor):
            return batch, targets_of(self.program, batch)
        if isinstance(batch, dict):
            return batch[self.program.keys[0]], batch[self.program.keys[1]]
        if isinstance(batch, Example):
            return batch.inputs, batch.targets
        return batch[0], batch[1]

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if isinstance(self.criterion, nn.BCEWithLogitsLoss):
            return self.criterion(logits.squeeze(1), y)
        if self.criterion is not None:
            return self.criterion(logits, y)
        return plain_loss(self.program.head, logits, y)

    def logits_and_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = self.unpack(batch)
        if self.program.output == "hf":
            output = self(x, labels=y)
            return output.logits, output.loss, y
        output = self(x)
        logits = output["logits"] if isinstance(output, dict) else output[0] if isinstance(output, tuple) else output
        return logits, self.loss(logits, y), y

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.program.optimisation == "manual":
            return self.manual_step(batch, batch_idx)
        if self.program.optimisation in ("gan", "alternating"):
            return self.adversarial_step(batch, batch_idx)
        if self.program.inplace:
            self.clamp_inputs(batch)
        logits, loss, y = self.logits_and_loss(batch)
        if self.program.skip_non_finite and not torch.isfinite(loss):
            return None
        self.log("train_loss", loss, batch_size=len(y))
        return {"loss": loss, "logits": logits.detach()} if self.program.output == "dict" else loss

    def clamp_inputs(self, batch: Any) -> None:
        """Edit the batch in place, as a user clipping outliers does."""
        x, _ = self.unpack(batch)
        if x.is_floating_point():
            x.clamp_(-3.0, 3.0)

    def manual_step(self, batch: Any, batch_idx: int) -> None:
        """Manual optimisation with its own gradient accumulation over ``program.accumulate`` batches."""
        optimizer = self.optimizers()
        _, loss, y = self.logits_and_loss(batch)
        self.manual_backward(loss / self.program.accumulate)
        if (batch_idx + 1) % self.program.accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
        self.log("train_loss", loss, batch_size=len(y))

    def adversarial_step(self, batch: Any, batch_idx: int) -> None:
        """A GAN-style pair of optimizers: the model against a critic of its outputs, both on every batch
        (``gan``) or in turn (``alternating``)."""
        model_optimizer, critic_optimizer = self.optimizers()
        logits, loss, y = self.logits_and_loss(batch)
        real = F.one_hot(y, CLASSES).to(logits.dtype) if self.program.head == "classes" else y.view(-1, 1)
        both = self.program.optimisation == "gan"
        if both or batch_idx % 2 == 0:
            self.toggle_optimizer(model_optimizer)
            self.manual_backward(loss + 0.1 * F.softplus(-self.critic(logits)).mean())
            model_optimizer.step()
            model_optimizer.zero_grad()
            self.untoggle_optimizer(model_optimizer)
        if both or batch_idx % 2 == 1:
            self.toggle_optimizer(critic_optimizer)
            fake = self.critic(logits.detach())
            critic_loss = F.softplus(fake).mean() + F.softplus(-self.critic(real.to(fake.dtype))).mean()
            self.manual_backward(critic_loss)
            critic_optimizer.step()
            critic_optimizer.zero_grad()
            self.untoggle_optimizer(critic_optimizer)
        self.log("train_loss", loss, batch_size=len(y))

    def on_train_epoch_end(self) -> None:
        if self.program.scheduler and not self.automatic_optimization:
            scheduler = self.lr_schedulers()
            (scheduler[0] if isinstance(scheduler, list) else scheduler).step()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        logits, loss, y = self.logits_and_loss(batch)
        self.log("val_loss", loss, batch_size=len(y))
        if not self.program.val_returns:
            return None
        if self.program.output == "dict":
            return {"loss": loss, "logits": logits}
        if self.program.output == "tuple":
            return logits, loss
        if self.program.output == "hf":
            return ModelOutput(loss=loss, logits=logits)
        return logits

    def configure_optimizers(self) -> Any:
        def make(parameters: Any) -> torch.optim.Optimizer:
            if self.program.optimizer == "adam":
                return torch.optim.Adam(parameters, lr=1e-2)
            return torch.optim.SGD(parameters, lr=0.1, momentum=0.9)

        model_parameters = [p for name, p in self.named_parameters() if not name.startswith("critic.")]
        optimizer = make(model_parameters)
        schedulers = (
            [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)] if self.program.scheduler else []
        )
        if self.program.optimisation in ("gan", "alternating"):
            return [optimizer, make(self.critic.parameters())], schedulers
        if schedulers:
            return {"optimizer": optimizer, "lr_scheduler": schedulers[0]}
        return optimizer


def loaders(program: Program) -> tuple[DataLoader, DataLoader | list[DataLoader] | None]:
    batching = functools.partial(collate, program)
    size = TRAIN_BATCHES * program.batch_size + 1
    train = DataLoader(
        FuzzData(program, size, program.seed), batch_size=program.batch_size, shuffle=program.shuffle,
        collate_fn=batching,
    )  # fmt: skip
    if program.val == "none":
        return train, None
    val_size = 0 if program.val == "empty" else VAL_BATCHES * program.batch_size
    val = [
        DataLoader(FuzzData(program, val_size, seed), batch_size=program.batch_size, collate_fn=batching)
        for seed in range(program.seed + 1, program.seed + (3 if program.val == "two" else 2))
    ]
    return train, val if program.val == "two" else val[0]


@dataclass
class Outcome:
    """How one fit ended: the exception it raised, every parameter and buffer, the pack's findings."""

    error: BaseException | None
    weights: dict[str, Tensor]
    findings: list[ls.Finding]


def fit(program: Program, callbacks: list[pl.Callback], root: str) -> Outcome:
    """Fit ``program`` from its seed with ``callbacks``."""
    pl.seed_everything(program.seed, workers=True, verbose=False)
    model = FuzzModule(program)
    train, val = loaders(program)
    automatic = program.optimisation == "automatic"
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=TRAIN_BATCHES, limit_val_batches=VAL_BATCHES,
        precision=program.precision, accumulate_grad_batches=program.accumulate if automatic else 1,
        gradient_clip_val=program.clip if automatic else None,
        logger=CSVLogger(root, name="packed" if callbacks else "plain") if program.logger else False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        callbacks=callbacks,
    )  # fmt: skip
    error: BaseException | None = None
    try:
        trainer.fit(model, train, val)
    except Exception as raised:
        error = raised
    weights = {name: tensor.detach().clone() for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    return Outcome(error, weights, ls.collect_findings(trainer))


_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}  # fmt: skip


def same_bits(a: Tensor, b: Tensor) -> bool:
    """``torch.equal`` on the raw bits: NaN weights (a run on NaN inputs) are equal to themselves, and -0.0 is not
    0.0."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in _SAME_WIDTH_INT:
        return torch.equal(a.view(_SAME_WIDTH_INT[a.dtype]), b.view(_SAME_WIDTH_INT[b.dtype]))
    return torch.equal(a, b)


def violations(program: Program, pack: Callable[[], list[pl.Callback]] = ls.default_callbacks) -> list[str]:
    """Every promise of the pack that fitting ``program`` with ``pack()`` (the default callbacks) breaks.

    (1) an exception that the plain fit does not raise, or a different one; (2) a ``sanity.internal_error`` finding;
    (3) any parameter or buffer not bit-identical to the plain fit's.
    """
    with tempfile.TemporaryDirectory() as root:
        plain = fit(program, [], root)
        packed = fit(program, pack(), root)
    found: list[str] = []
    if plain.error is None and packed.error is not None:
        found.append(f"the packed fit raised {packed.error!r}; the plain fit did not")
    elif plain.error is not None and (
        type(packed.error) is not type(plain.error) or str(packed.error) != str(plain.error)
    ):
        found.append(f"the plain fit raised {plain.error!r}, the packed fit {packed.error!r}")
    found += [f"sanity.internal_error: {f.message}" for f in packed.findings if f.code == "sanity.internal_error"]
    if plain.weights.keys() != packed.weights.keys():
        found.append(f"different tensors: {sorted(plain.weights.keys() ^ packed.weights.keys())}")
    shared = plain.weights.keys() & packed.weights.keys()
    different = sorted(name for name in shared if not same_bits(plain.weights[name], packed.weights[name]))
    if different:
        found.append(f"weights differ from the plain fit: {different}")
    return found
