"""The fault suite: whatever the user's program raises, and wherever, the pack stays out of the way.

An exception is raised from every Lightning hook of the user's LightningModule in turn (at its first call, and for
per-batch hooks also in the middle of an epoch), from a Dataset mid-epoch, and a ``KeyboardInterrupt``. For each:

- the user's exception reaches the caller of ``fit`` unchanged (the very object), as it does without the pack;
- ``sanity_report_fit.json`` is written by a real ``CSVLogger`` and says the run was ``interrupted``, and by what;
- no forward, forward-pre, backward or tensor hook, no global module hook and no patched attribute is left behind,
  and every module is in the mode the same fault leaves it in without the pack;
- a second ``fit`` on the same Trainer, with the fault gone, finishes and writes its own report.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.core.hooks import CheckpointHooks, DataHooks, ModelHooks
from lightning.pytorch.loggers import CSVLogger
from support import sanity_warnings
from torch import Tensor, nn
from torch.nn.modules import module as torch_module
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_sanity as ls
from lightning_sanity.demos import Classifier, wine_tensors

# Hooks that a fit calls once (or once per epoch), and hooks it calls once per batch (or optimizer step). Each fails
# at its first call; each per-batch hook also from the third training step on, mid-epoch: after the step-zero checks
# and the sanity check, by the step rather than by a count of calls (the pack calls ``forward`` itself).
ONCE = [
    "prepare_data", "configure_callbacks", "setup", "configure_model", "configure_optimizers", "on_fit_start",
    "train_dataloader", "val_dataloader", "on_train_start", "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_start", "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_end",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad", "on_save_checkpoint",
    "on_load_checkpoint", "on_train_end", "on_fit_end", "teardown",
]  # fmt: skip
PER_BATCH = [
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer", "on_train_batch_start",
    "forward", "training_step", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
    "configure_gradient_clipping", "optimizer_step", "on_before_zero_grad", "optimizer_zero_grad", "lr_scheduler_step",
    "on_train_batch_end", "on_validation_batch_start", "validation_step", "on_validation_batch_end",
]  # fmt: skip
# Hooks no fit calls, and configure_sharded_model: the deprecated name of configure_model.
NOT_IN_A_FIT = {"configure_sharded_model", "test_dataloader", "predict_dataloader"}
FIRST, MID_EPOCH = "first", "mid-epoch"
CASES = [(hook, FIRST) for hook in ONCE + PER_BATCH] + [(hook, MID_EPOCH) for hook in PER_BATCH]


class UserFault(Exception):
    """The user's own bug."""


class Net(Classifier):
    """A small wine classifier that uses every kind of hook Lightning offers: BatchNorm and dropout (modes), a
    per-step LR schedule, checkpointing, its own dataloaders."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(
            nn.Sequential(nn.Linear(13, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
        )
        self.armed = True
        self.raised: BaseException | None = None

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*wine_tensors("val")), batch_size=16)


def failing(hook: str, when: str, error: Callable[[str], BaseException] = UserFault) -> Net:
    """A :class:`Net` whose ``hook`` raises while ``armed`` (a bug stays a bug) from its first call on, or from the
    third training step on (``MID_EPOCH``)."""
    inherited = getattr(Net, hook)

    def fails(self: Net, *args: Any, **kwargs: Any) -> Any:
        if self.armed and (when == FIRST or (not self.trainer.sanity_checking and self.trainer.global_step >= 2)):
            self.raised = error(f"user fault in {hook}")
            raise self.raised
        return inherited(self, *args, **kwargs)

    return type(f"FailsIn_{hook}", (Net,), {hook: fails})()


# ---------------------------------------------------------------- what a run may leave behind

_GLOBAL_HOOKS = [name for name in dir(torch_module) if name.startswith("_global_") and name.endswith("hooks")]


def leftovers(model: nn.Module) -> dict[str, Any]:
    """Every hook on ``model``, its submodules, parameters and buffers, every global module hook, the attributes of
    every submodule (a patched ``forward`` is an instance attribute) and every module's mode."""
    state: dict[str, Any] = {f"torch.{name}": len(getattr(torch_module, name)) for name in _GLOBAL_HOOKS}
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if "hooks" in attribute and isinstance(value, dict):
                state[f"{name}.{attribute}"] = len(value)
        # The LightningModule's own attributes legitimately change during a fit: compared with the fit without
        # the pack instead (see ``attributes``).
        if module is not model:
            state[f"{name}.attributes"] = {key: id(value) for key, value in vars(module).items() if callable(value)}
            state[f"{name}.keys"] = sorted(vars(module))
        state[f"{name}.training"] = module.training
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        state[f"{name}.tensor_hooks"] = len(tensor._backward_hooks or {})
        state[f"{name}.accumulate_hooks"] = len(getattr(tensor, "_post_accumulate_grad_hooks", None) or {})
    state["grad_enabled"] = torch.is_grad_enabled()
    return state


def attributes(model: nn.Module) -> set[str]:
    return {key for key, value in vars(model).items() if not key.startswith("_") or callable(value)}


@pytest.fixture
def sigint_restored() -> Iterator[None]:
    """Lightning ignores SIGINT after a KeyboardInterrupt (against a second Ctrl+C during shutdown): undo that."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint of a healthy fit without the pack, for the faults raised while resuming."""
    directory = tmp_path_factory.mktemp("checkpoint")
    trainer = trainer_for(directory, callbacks=[])
    trainer.fit(Net())
    path = str(directory / "healthy.ckpt")
    trainer.save_checkpoint(path)
    return path


def trainer_for(directory: Path, callbacks: list[pl.Callback], max_epochs: int = 1) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=CSVLogger(directory, name="run"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(directory),
    )


def fit(trainer: pl.Trainer, model: Net, ckpt_path: str | None) -> BaseException | None:
    """``trainer.fit``; what it raised, if anything (``SystemExit`` included: Lightning exits on Ctrl+C)."""
    try:
        trainer.fit(model, ckpt_path=ckpt_path)
    except BaseException as error:  # SystemExit too: the very object is what the tests compare
        return error
    return None


def report(trainer: pl.Trainer, stem: str = "sanity_report_fit") -> dict[str, Any]:
    return json.loads(Path(trainer.log_dir or "", f"{stem}.json").read_text())


def assert_fault_handled(
    make: Callable[[], Net],
    tmp_path: Path,
    ckpt_path: str | None = None,
    reaches_caller: type | None = None,
    figures: bool = False,
    strict: bool = False,
) -> tuple[pl.Trainer, Net, BaseException]:
    """Fit ``make()`` without and with the pack; check everything the module docstring promises. The user's
    exception reaches the caller of ``fit`` unless Lightning turns it into ``reaches_caller``. Figures (drawn at
    the end of each run, half a second of the second fit) are off unless asked for."""
    plain = make()
    without = fit(trainer_for(tmp_path / "without", callbacks=[]), plain, ckpt_path)
    assert plain.raised is not None, "the fault never fired: the test would prove nothing"

    model = make()
    before = leftovers(model)
    callbacks = ls.default_callbacks(figure_every_n_epochs=5 if figures else 0, strict=strict)
    trainer = trainer_for(tmp_path / "with", callbacks=callbacks)
    with sanity_warnings():
        raised = fit(trainer, model, ckpt_path)
    assert raised is not None and type(raised) is type(without)
    if reaches_caller is None:
        assert raised is model.raised  # the user's own object, neither wrapped nor replaced
    else:
        assert isinstance(raised, reaches_caller) and model.raised is not None

    data = report(trainer)
    assert data["status"] == "interrupted" == trainer.state.status.value
    assert "sanity.internal_error" not in {finding["code"] for finding in data["findings"]}
    assert data["exception_type"] == type(model.raised).__name__
    assert str(model.raised) in data["exception"]

    after = leftovers(model)
    assert {k: v for k, v in after.items() if not k.endswith(".training")} == {
        k: v for k, v in before.items() if not k.endswith(".training")
    }
    plain_modes = {k: v for k, v in leftovers(plain).items() if k.endswith(".training")}
    assert {k: v for k, v in after.items() if k.endswith(".training")} == plain_modes  # modes as without the pack
    assert attributes(model) == attributes(plain)
    return trainer, model, raised


def assert_second_fit_works(trainer: pl.Trainer, model: Net) -> None:
    """The same Trainer fits again, the fault gone: Lightning supports it, and the pack must not get in the way."""
    model.armed = False
    trainer.fit_loop.max_epochs = trainer.current_epoch + 1
    with sanity_warnings():
        trainer.fit(model)
    assert trainer.state.status.value == "finished"
    second = report(trainer, "sanity_report_fit_2")
    assert second["status"] == "finished" and second["exception"] is None
    assert trainer.global_step > 0


# ---------------------------------------------------------------- the faults


def test_the_suite_covers_every_hook_lightning_calls_in_a_fit() -> None:
    step_methods = [name for name in vars(pl.LightningModule) if name in set(PER_BATCH + ONCE)]
    hooks = {
        name
        for hooks in (ModelHooks, DataHooks, CheckpointHooks)
        for name, value in vars(hooks).items()
        if callable(value) and not name.startswith("_") and "test" not in name and "predict" not in name
    }
    assert hooks - NOT_IN_A_FIT <= set(ONCE + PER_BATCH)
    assert len(ONCE + PER_BATCH) == len(set(ONCE + PER_BATCH)) and step_methods


@pytest.mark.parametrize(("hook", "when"), CASES, ids=[f"{hook}-{when}" for hook, when in CASES])
def test_a_users_exception_in_any_hook_propagates_and_leaves_a_report_and_no_trace(
    hook: str, when: str, tmp_path: Path, checkpoint: str
) -> None:
    ckpt_path = checkpoint if hook == "on_load_checkpoint" else None
    trainer, model, _ = assert_fault_handled(lambda: failing(hook, when), tmp_path, ckpt_path)
    if hook not in {"prepare_data", "configure_callbacks", "on_load_checkpoint"}:  # those fail before any step
        assert_second_fit_works(trainer, model)


class FailsAtItem(Dataset):
    """The wine training split, whose ``__getitem__`` raises for every index from ``k`` on (e.g. a corrupt file);
    what it raised is kept on ``owner``."""

    def __init__(self, k: int, owner: Net) -> None:
        self.data = TensorDataset(*wine_tensors("train"))
        self.k = k
        self.owner = owner
        self.armed = True

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self.armed and index >= self.k:
            self.owner.raised = UserFault(f"corrupt item {index}")
            raise self.owner.raised
        return self.data[index]


class ReadsFailingData(Net):
    def __init__(self) -> None:
        super().__init__()
        self.dataset = FailsAtItem(k=40, owner=self)  # in the third batch of 16, unshuffled

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=16)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_dataset_that_raises_mid_epoch(tmp_path: Path, strict: bool) -> None:
    """The pipeline checks read a few items of the dataset before training: when they meet the broken item first,
    it is the user's bug (``sanity.skipped``), not the pack's (``sanity.internal_error``, a ``SanityError`` under
    ``strict``, which replaced the user's exception)."""
    trainer, model, raised = assert_fault_handled(ReadsFailingData, tmp_path, figures=True, strict=strict)
    assert "corrupt item 40" in str(raised)
    skipped = [f for f in ls.collect_findings(trainer) if f.code == "sanity.skipped" and "UserFault" in f.subject]
    assert [f.evidence["where"].split(" ")[0] for f in skipped] == ["FailsAtItem.__getitem__"]
    model.dataset.armed = False  # type: ignore[attr-defined]
    assert_second_fit_works(trainer, model)


def test_keyboard_interrupt_is_lightnings_graceful_shutdown(tmp_path: Path, sigint_restored: None) -> None:
    """Lightning (since 2.4, Lightning-AI/pytorch-lightning#19976) stops the run, calls ``on_exception``, tears down
    and exits with ``SystemExit(1)``: the user's Ctrl+C never reaches the caller, with or without the pack."""
    trainer, model, raised = assert_fault_handled(
        lambda: failing("training_step", MID_EPOCH, error=lambda _: KeyboardInterrupt()),
        tmp_path,
        reaches_caller=SystemExit,
    )
    assert trainer.interrupted and isinstance(model.raised, KeyboardInterrupt)
    assert_second_fit_works(trainer, model)


@pytest.mark.parametrize("bookkeeping", ["join", "leave", "abort"])
def test_a_bug_in_the_runs_own_bookkeeping_neither_fails_the_run_nor_replaces_the_users_exception(
    bookkeeping: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joining and ending the run (and publishing its report) run outside every check's isolation, on the exception
    path too: a bug of ours there is one visible warning, never the run's outcome."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"our bug in run.{bookkeeping}")

    monkeypatch.setattr(ls.run, bookkeeping, broken)
    model = failing("training_step", MID_EPOCH) if bookkeeping == "abort" else Net()
    trainer = trainer_for(tmp_path, callbacks=ls.default_callbacks(figure_every_n_epochs=0))
    with sanity_warnings() as texts:
        raised = fit(trainer, model, None)
    assert raised is model.raised  # None for a healthy fit; the user's very exception for the failing one
    assert any(f"our bug in run.{bookkeeping}" in text and "internal error" in text for text in texts), texts
