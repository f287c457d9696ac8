"""What every sanity callback shares: recording findings, isolation from the user's run, state, the run lifecycle."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import logging
import math
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import Self, override

from lightning_sanity import run as sanity_run
from lightning_sanity.batch import (
    BatchAdapter,
    BatchParts,
    UnsupportedBatch,
    adapter_example,
    describe_structure,
    split_batch,
)
from lightning_sanity.catalogue import declared, validate_ignore, validate_severity
from lightning_sanity.findings import Finding, SanityError, SanityWarning, Severity
from lightning_sanity.loggers import (
    has_figure_destination,
    png_directories,
    save_png,
    scalar_key,
    send_to_image_loggers,
    takes_images,
)

log = logging.getLogger("lightning_sanity")

_STAGE_NAMES = {
    RunningStage.TRAINING: "train",
    RunningStage.SANITY_CHECKING: "val",
    RunningStage.VALIDATING: "val",
    RunningStage.TESTING: "test",
    RunningStage.PREDICTING: "predict",
}

EvalSplit = Literal["val", "test", "predict"]
_EVAL_BATCH_HOOKS = frozenset({"on_eval_batch_start", "on_eval_batch_end"})  # SanityCallback's own, see there
_HOOK_NAMES = (
    frozenset(name for name in dir(Callback) if name.startswith("on_")) | {"setup", "teardown"} | _EVAL_BATCH_HOOKS
)
_LIFECYCLE_HOOKS = frozenset({"setup", "teardown", "on_exception"})
_NOT_USER_CODE = ("lightning_sanity", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities",
                  "torch", "torchmetrics", "contextlib", "functools", "typing_extensions")  # fmt: skip


def stage_of(trainer: pl.Trainer) -> str:
    """``"train"``, ``"val"``, ``"test"``, ``"predict"`` for the running loop, ``"setup"`` outside any loop."""
    return _STAGE_NAMES.get(trainer.state.stage, "setup") if trainer.state.stage is not None else "setup"


def require(ok: bool, name: str, allowed: str, value: Any) -> None:
    """Fail fast on a bad constructor argument, naming it and what it may be."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an ``int`` to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _guarded(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Lightning hook of a sanity callback.

    An exception escaping ``hook`` becomes a ``sanity.internal_error`` finding: never kill the user's run. Around
    the outermost ``setup`` / ``teardown`` / ``on_exception`` call the base class's run bookkeeping runs, whether or
    not the subclass's hook calls ``super()``: joining the trainer's run, and ending it (:mod:`lightning_sanity.run`).
    A duplicate (see :attr:`SanityCallback.duplicate_of`) keeps the bookkeeping and runs none of its hooks.
    """
    lifecycle = hook.__name__ in _LIFECYCLE_HOOKS

    @functools.wraps(hook)
    def run_guarded(self: SanityCallback, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
        if not lifecycle or self._in_lifecycle_hook:
            return None if self.duplicate_of is not None else _run_isolated(self, hook, trainer, args, kwargs)
        self._in_lifecycle_hook = True
        try:
            if hook.__name__ == "setup":
                _keep_books("joining the run", lambda: self._join_run(trainer))
            result = None if self.duplicate_of is not None else _run_isolated(self, hook, trainer, args, kwargs)
        finally:
            self._in_lifecycle_hook = False
            if hook.__name__ == "on_exception":  # release hooks and write the report even if the hook raised
                exception = kwargs.get("exception", args[-1] if args else RuntimeError("unknown"))
                _keep_books("ending the run", lambda: self._end_run(trainer, exception))
        if hook.__name__ == "teardown":  # not when teardown raised: Lightning then calls on_exception
            _keep_books("ending the run", lambda: sanity_run.leave(trainer, self))
        return result

    run_guarded.__wrapped_hook__ = True  # type: ignore[attr-defined]
    return run_guarded


def _keep_books(what: str, step: Callable[[], None]) -> None:
    """Run the run's own bookkeeping (joining, ending, the report). A bug there is ours: it must neither fail the
    user's run nor, on the exception path, replace the user's exception with ours. It is said as a visible
    warning (no finding can be recorded once the run is over)."""
    try:
        step()
    except (SanityError, Warning):
        raise  # deliberate: strict mode, or the user's warnings filter set to "error"
    except Exception as error:
        log.debug("lightning-sanity failed while %s", what, exc_info=True)
        warnings.warn(
            SanityWarning(
                f"lightning-sanity: internal error while {what} ({type(error).__name__}: {error}); the run is not "
                "affected, but its sanity report may be incomplete. Please report this at the lightning-sanity issue "
                "tracker with the traceback (logger 'lightning_sanity' at DEBUG level)."
            ),
            stacklevel=_user_stacklevel(),
        )


def _run_isolated(
    callback: SanityCallback, hook: Callable[..., Any], trainer: pl.Trainer, args: tuple[Any, ...], kwargs: dict
) -> Any:
    try:
        return hook(callback, trainer, *args, **kwargs)
    except (SanityError, Warning):
        raise  # deliberate: strict mode, or the user's warnings filter set to "error"
    except Exception as error:
        log.debug("%s.%s failed", type(callback).__name__, hook.__name__, exc_info=True)
        where = _users_code(trainer, error)
        if where is not None:  # the user's bug, met first by a check: theirs to see when their own code meets it
            callback.record(
                trainer,
                "sanity.skipped",
                Severity.INFO,
                f"{type(callback).__name__}.{hook.__name__} called your code ({where}), which raised "
                f"{type(error).__name__}: {error}; that check did not run.",
                "Nothing to do if your own training never runs that code; otherwise the error is in your code, "
                "not in the check: fix it there.",
                subject=f"{hook.__name__}:{type(error).__name__}",
                evidence={"hook": hook.__name__, "error": repr(error)[:500], "where": where},
            )
            return None
        callback.record(
            trainer,
            "sanity.internal_error",
            None,
            f"{type(callback).__name__}.{hook.__name__} failed with {type(error).__name__}: {error}; "
            "that check did not run and training continued.",
            "Please report this at the lightning-sanity issue tracker with the traceback "
            "(logger 'lightning_sanity' at DEBUG level).",
            subject=f"{hook.__name__}:{type(error).__name__}",
            evidence={"hook": hook.__name__, "error": repr(error)[:500]},
        )
        return None


def _users_code(trainer: pl.Trainer, error: BaseException) -> str | None:
    """Where ``error`` left the user's code, if a check called it (a Dataset's ``__getitem__``, the LightningModule
    or one of its layers, the datamodule): ``"Class.method (file:line)"`` of the outermost such frame."""
    module = trainer.lightning_module
    layers = list(module.modules()) if module is not None else []
    for frame, line in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, (Dataset, pl.LightningDataModule)) or any(owner is layer for layer in layers):
            return f"{type(owner).__name__}.{frame.f_code.co_name} ({frame.f_code.co_filename}:{line})"
    return None


class SanityCallback(Callback):
    """Base class of the sanity callbacks.

    Subclasses override Lightning hooks as usual; every hook they define is guarded so that an internal error
    becomes a ``sanity.internal_error`` WARNING (raised under ``strict``) instead of an exception in the user's run.
    They report problems with :meth:`record`, read batches with :meth:`split_batch`, add text to the run report
    through :meth:`report_sections`, and drop every hook and reference into the user's module in :meth:`release`,
    which runs on every exit (normal end or exception). The run lifecycle (findings reset per run, one report per
    run) runs around ``setup`` / ``teardown`` / ``on_exception`` whether or not an override calls ``super()``.
    A subclass that overrides ``state_dict`` or ``load_state_dict`` must call ``super()``.

    Args:
        strict: Raise :class:`SanityError` on the first ERROR finding or internal error (for CI pipelines).
        batch_adapter: A function ``batch -> (inputs, targets)`` for batch structures we do not understand.
        figure_every_n_epochs: Send this callback's figures to loggers with an image API at the first epoch, then
            every N epochs; 0 turns figures off. PNG files are written once per run, at its end, showing its final
            state.
        save_dir: Also save figures as PNG files here (the only place they go when there is no logger).
        ignore: Finding codes to silence, e.g. ``["input.unscaled"]``.
        severity: Finding codes to re-grade, e.g. ``{"eval.chance_level": "error"}``.

    Example::

        callback = ConfusionCallback(ignore=["output.activated"], severity={"eval.chance_level": "error"})
    """

    name: ClassVar[str] = "sanity"
    """Short name used in scalar keys: ``sanity/<name>/<split>/<metric>``."""

    batch_checks: ClassVar[str] = ""
    """What this callback checks in the ``(inputs, targets)`` it reads with :meth:`split_batch`: named in the one
    ``sanity.skipped`` INFO of a run whose batches are not understood."""

    duplicate_of: SanityCallback | None
    """In a run where an earlier callback of the Trainer has this one's class and options, that callback: this one
    then runs no check (each would run twice, each finding be reported twice) and its public attributes (e.g.
    ``layer_grad_norms``, ``confusion_matrix``) read that callback's. ``None`` otherwise."""

    _init_options: dict[str, Any]
    _state_key: str | None = None
    _key_base: str | None = None
    _own_attributes: dict[str, Any]
    _in_lifecycle_hook: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        instance = super().__new__(cls)
        instance._init_options = dict(kwargs)  # what the user passed: the instance's state_key derives from it
        instance.duplicate_of = None
        instance._own_attributes = {}
        _CREATED[instance] = next(_SERIALS)
        return instance

    def __init__(
        self,
        *,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        figure_every_n_epochs: int = 5,
        save_dir: str | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        require(isinstance(strict, bool), "strict", "a bool", strict)
        require(batch_adapter is None or callable(batch_adapter), "batch_adapter", "None or a callable", batch_adapter)
        require(
            isinstance(figure_every_n_epochs, int) and figure_every_n_epochs >= 0,
            "figure_every_n_epochs",
            "an int >= 0 (0 turns figures off)",
            figure_every_n_epochs,
        )
        require(save_dir is None or isinstance(save_dir, str), "save_dir", "None or a directory path", save_dir)
        self.strict = strict
        self.batch_adapter = batch_adapter
        self.figure_every_n_epochs = figure_every_n_epochs
        self.save_dir = save_dir
        self.configure_findings(ignore, severity)
        self.figure_paths: list[str] = []
        self._findings: dict[tuple[str, str], Finding] = {}
        self._pending_pngs: dict[str, tuple[Figure | Callable[[], Figure], int]] = {}
        self._run_name = "fit"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook_name in _HOOK_NAMES & cls.__dict__.keys():
            hook = cls.__dict__[hook_name]
            if not getattr(hook, "__wrapped_hook__", False):
                setattr(cls, hook_name, _guarded(hook))

    def configure_findings(
        self, ignore: Sequence[str] | None = None, severity: Mapping[str, str] | None = None
    ) -> None:
        """Silence the codes in ``ignore`` and re-grade codes with ``severity``; unknown codes raise ValueError."""
        self.ignore = validate_ignore(ignore)
        self.severity_overrides = validate_severity(severity)

    @property
    @override
    def state_key(self) -> str:
        """``ClassName`` for default options, ``ClassName{'num_classes': 3}`` otherwise: instances of one class
        with different options checkpoint and resume side by side. The n-th callback of the Trainer with the same
        class and key gets ``#n`` appended (``GradientFlowCallback#2``): its position in the callback list, stable
        across processes and from a checkpoint to its resume as long as the list is built the same way.

        The position is fixed when the run starts (``setup``, before Lightning restores a checkpoint). Before that
        (when the Trainer checks the keys are unique) ``n`` counts the live instances with this key created before
        this one, so the keys of a new callback list are unique even next to callbacks of earlier Trainers.
        """
        # Lightning reads state_key around every hook call (to name profiler actions): fixed once a run starts.
        if self._state_key is not None:
            return self._state_key
        base = self._key()
        earlier = sum(
            1
            for other, serial in list(_CREATED.items())
            if serial < _CREATED[self] and type(other) is type(self) and other._key() == base
        )
        return _numbered(base, earlier + 1)

    def _key(self) -> str:
        """The state key without its position: class name and the options given with a value other than their
        default."""
        if self._key_base is None:
            options = _explicit_options(type(self), self._init_options)
            self._key_base = f"{type(self).__qualname__}{options!r}" if options else type(self).__qualname__
        return self._key_base

    def _same_check(self, other: SanityCallback) -> bool:
        """Whether ``other`` is the same check: same class, options equal to this one's (not just alike when
        printed, as two different lambdas are)."""
        if type(other) is not type(self) or other._key() != self._key():
            return False
        try:
            mine, theirs = (
                _explicit_options(type(self), self._init_options, stable=False),
                _explicit_options(type(other), other._init_options, stable=False),
            )
            return bool(mine == theirs)
        except Exception:  # options whose == raises (arrays, tensors) or is ambiguous: not provably the same
            return False

    @property
    def findings(self) -> list[Finding]:
        """Every finding of this callback in the current (or last) run, in the order first seen."""
        return list(self._findings.values())

    def record(
        self,
        trainer: pl.Trainer,
        code: str,
        severity: Severity | None,
        message: str,
        hint: str,
        *,
        subject: str = "",
        evidence: Mapping[str, Any] | None = None,
        stage: str | None = None,
    ) -> Finding:
        """Record a finding. The first occurrence of ``(code, subject)`` warns; repeats only count.

        ``severity=None`` takes the catalogue's default for ``code``; the user's ``severity={code: ...}`` option
        overrides either, and codes in ``ignore`` are returned but neither kept nor shown.

        Raises:
            SanityError: if this callback is ``strict`` and the finding is an ERROR or an internal error.
        """
        key = (code, subject)
        if key in self._findings:
            self._findings[key] = self._findings[key].recurred()
            return self._findings[key]
        finding = Finding(
            code=code,
            severity=self._severity_of(code, severity),
            message=message,
            hint=hint,
            callback=type(self).__name__,
            stage=stage or stage_of(trainer),
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            evidence=jsonable(evidence or {}),
            subject=subject,
        )
        if code in self.ignore:
            return finding
        self._findings[key] = finding
        self._announce(trainer, finding)
        if self.strict and (finding.severity >= Severity.ERROR or code == "sanity.internal_error"):
            raise SanityError(finding)
        return finding

    def record_verdict(
        self,
        trainer: pl.Trainer,
        code: str,
        severity: Severity | None,
        message: str,
        hint: str,
        *,
        subject: str,
        evidence: Mapping[str, Any],
    ) -> Finding:
        """Record a verdict about learning, judged again at every validation: a repeat keeps the first epoch and its
        count but shows the latest message and evidence (the class a collapsed model now predicts, today's R²), and
        one resolved earlier (:meth:`resolve`) stands again.

        Example::

            self.record_verdict(trainer, "eval.chance_level", None, message, hint, subject="val", evidence=evidence)
        """
        finding = self.record(trainer, code, severity, message, hint, subject=subject, evidence=evidence)
        if finding.key in self._findings and finding.count > 1:
            latest = dataclasses.replace(finding, message=message, evidence=jsonable(evidence), resolved_epoch=None)
            self._findings[finding.key] = latest
        return self._findings.get(finding.key, finding)

    def resolve(self, code: str, subject: str, epoch: int) -> bool:
        """Mark the standing finding ``(code, subject)`` resolved at ``epoch``: the run overcame what it said (a
        verdict about learning the run broke out of, a risk that training proved harmless). Whether it did.

        Example::

            callback.resolve("eval.chance_level", "val", trainer.current_epoch)
        """
        finding = self._findings.get((code, subject))
        if finding is None or not finding.standing:
            return False
        self._findings[finding.key] = dataclasses.replace(finding, resolved_epoch=epoch)
        return True

    def _severity_of(self, code: str, given: Severity | None) -> Severity:
        if code in self.severity_overrides:
            return self.severity_overrides[code]
        if given is not None:
            return given
        entry = declared(code)
        if entry is None:
            raise ValueError(f"finding code {code!r} is not in the catalogue: pass its severity to record()")
        return entry.severity

    def _announce(self, trainer: pl.Trainer, finding: Finding) -> None:
        if trainer.global_rank != 0:
            return
        if finding.severity >= Severity.WARNING:
            warnings.warn(SanityWarning(str(finding)), stacklevel=_user_stacklevel())
        else:
            log.info("%s", finding)

    def adopt_findings(self, trainer: pl.Trainer, findings: list[Finding]) -> None:
        """Replace this callback's findings by ``findings`` (the merge of every rank), announcing the new ones."""
        new = [finding for finding in findings if finding.key not in self._findings]
        self._findings = {finding.key: finding for finding in findings}
        for finding in new:
            self._announce(trainer, finding)

    # One hook per batch event for every evaluation split ------------------------------------------------------
    # Lightning has one batch hook per split and event; checks that treat validation, test and predict batches
    # alike override these two instead, and name the dataloader with ``dataloader_label(split, dataloader_idx)``.

    def on_eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: EvalSplit,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        """Before every validation, test and predict batch (``split`` is ``"val"``, ``"test"`` or ``"predict"``)."""

    def on_eval_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        split: EvalSplit, dataloader_idx: int,
    ) -> None:  # fmt: skip
        """After every validation, test and predict batch, with the step's ``outputs``."""

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.on_eval_batch_start(trainer, pl_module, batch, batch_idx, "val", dataloader_idx)

    @override
    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.on_eval_batch_start(trainer, pl_module, batch, batch_idx, "test", dataloader_idx)

    @override
    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.on_eval_batch_start(trainer, pl_module, batch, batch_idx, "predict", dataloader_idx)

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self.on_eval_batch_end(trainer, pl_module, outputs, batch, batch_idx, "val", dataloader_idx)

    @override
    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self.on_eval_batch_end(trainer, pl_module, outputs, batch, batch_idx, "test", dataloader_idx)

    @override
    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self.on_eval_batch_end(trainer, pl_module, outputs, batch, batch_idx, "predict", dataloader_idx)

    def split_batch(self, trainer: pl.Trainer, batch: Any) -> BatchParts | None:
        """The batch's ``(inputs, targets)`` for the running split, or ``None`` if not understood (see
        :meth:`skip_unread_batch`)."""
        try:
            return split_batch(batch, self.batch_adapter, stage_of(trainer))
        except UnsupportedBatch as reason:
            self.skip_unread_batch(trainer, batch, reason)
            return None

    def skip_unread_batch(self, trainer: pl.Trainer, batch: Any, reason: UnsupportedBatch) -> None:
        """Say once per run, for every callback of the run that reads batches, which checks a batch that is not
        understood turns off, and the ``batch_adapter`` that would read it (written for the structure seen)."""
        run = sanity_run.current_run(trainer)
        members = run.members if run is not None else [self]
        others = (member for member in members if member is not self)
        if any(finding.key == ("sanity.skipped", "batch") for member in others for finding in member.findings):
            return
        readers = [
            member
            for member in members
            if isinstance(member, SanityCallback) and member.batch_checks and member.duplicate_of is None
        ]
        blind = [member for member in readers if member.batch_adapter is None] or [self]
        skipped = "; ".join(f"{type(member).__name__}: {member.batch_checks}" for member in blind)
        structure, example = describe_structure(batch), adapter_example(batch)
        self.record(
            trainer,
            "sanity.skipped",
            Severity.INFO,
            f"The {stage_of(trainer)} batches are not understood ({reason}; the batch is {structure}), so the checks "
            f"that read their inputs and targets are skipped for this run: {skipped}.",
            f"Tell the pack where the model inputs and the targets are: default_callbacks(batch_adapter={example}) "
            "(or batch_adapter= on each callback); the adapter returns (inputs, targets), either may be None.",
            subject="batch",
            evidence={
                "batch_type": type(batch).__name__,
                "structure": structure,
                "skipped": [type(member).__name__ for member in blind],
                "adapter_example": example,
            },
        )

    def figures_wanted(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch's figures go anywhere: figures are on (``figure_every_n_epochs > 0``), this is rank
        zero with a logger or a ``save_dir``, and not the sanity check. Cheap to answer every epoch: pass
        :meth:`log_figure` a function and nothing is drawn until a destination needs it."""
        return (
            self.figure_every_n_epochs > 0
            and not trainer.sanity_checking
            and has_figure_destination(trainer, self.save_dir)
        )

    def log_figure(self, trainer: pl.Trainer, split: str, name: str, figure: Figure | Callable[[], Figure]) -> None:
        """Log ``figure`` (or what ``figure()`` draws) as ``sanity/<callback>/<split>/<name>``; call it every epoch
        (when :meth:`figures_wanted`).

        Loggers with an image API (TensorBoard, W&B, MLflow, Comet, Neptune) get it at the first epoch of a fit, then
        every ``figure_every_n_epochs``, and always in ``validate`` / ``test`` / ``predict`` runs. PNG files (other
        loggers' directories, ``save_dir``) show the run's final state: the figure of each tag logged last is drawn
        and rendered once, at the run's end (drawing costs tens of milliseconds a figure). Pass a function (e.g.
        ``functools.partial(confusion_figure, matrix)``) so that a figure no destination wants is never drawn.
        """
        every = self.figure_every_n_epochs
        if trainer.global_rank != 0 or every == 0:
            return
        tag = scalar_key(self.name, split, name)
        image_epoch = trainer.state.fn != TrainerFn.FITTING or trainer.current_epoch % every == 0
        if image_epoch and any(takes_images(logger) for logger in trainer.loggers):
            figure = figure if isinstance(figure, Figure) else figure()
            self.figure_paths.extend(send_to_image_loggers(trainer, tag, figure))
        self._pending_pngs[tag] = (figure, trainer.current_epoch)

    def flush_figures(self, trainer: pl.Trainer) -> None:
        """Write the pending PNG files (rank zero, at the end of the run; called by the run coordinator)."""
        pending, self._pending_pngs = self._pending_pngs, {}
        directories = png_directories(trainer, self.save_dir) if pending else []
        for tag, (figure, epoch) in pending.items() if directories else ():
            try:
                drawn = figure if isinstance(figure, Figure) else figure()
                self.figure_paths.extend(save_png(drawn, directory, tag, epoch) for directory in directories)
            except Exception:
                log.warning("lightning-sanity could not save the figure %s", tag, exc_info=True)

    def report_sections(self) -> list[tuple[str, str]]:
        """Extra ``(title, text)`` blocks for the run report (e.g. a confusion matrix)."""
        return []

    def release(self) -> None:
        """Remove every hook and drop every reference into the user's module or data (weight snapshots, captured
        outputs). Called by the run coordinator at the end of every run, normal or not; must be idempotent."""

    def _join_run(self, trainer: pl.Trainer) -> None:
        """A new run starts: this callback's findings and figures are the run's own; its state key and whether it
        duplicates an earlier callback follow from its position among the Trainer's callbacks."""
        self._findings = {}
        self.figure_paths = []
        self._pending_pngs = {}
        same_key = [cb for cb in sanity_callbacks(trainer) if type(cb) is type(self) and cb._key() == self._key()]
        position = next((i for i, cb in enumerate(same_key) if cb is self), len(same_key))
        self._state_key = _numbered(self._key(), position + 1)
        self._duplicate(next((cb for cb in same_key[:position] if cb._same_check(self)), None))
        self._run_name = sanity_run.join(trainer, self).name
        if self.duplicate_of is not None:
            self.record(
                trainer,
                "sanity.duplicate",
                Severity.INFO,
                f"{self.state_key} has the same options as {self.duplicate_of.state_key}, earlier in the Trainer's "
                "callbacks: it runs none of its checks, and its attributes read that callback's.",
                "Nothing to do if you keep it to read its attributes; remove it otherwise, or give it other options "
                "to run a second, different check.",
                subject=self.state_key,
                evidence={"duplicate_of": self.duplicate_of.state_key},
                stage="setup",
            )

    def _duplicate(self, original: SanityCallback | None) -> None:
        """Become a duplicate of ``original`` (its public attributes replace this one's) or, with ``None``, a
        callback in its own right again (its own attributes back)."""
        if original is not None and self.duplicate_of is None:
            public = [name for name in vars(self) if not name.startswith("_") and name not in _OWN_ATTRIBUTES]
            self._own_attributes = {name: vars(self).pop(name) for name in public}
        elif original is None and self.duplicate_of is not None:
            vars(self).update(self._own_attributes)
            self._own_attributes = {}
        self.duplicate_of = original

    if not TYPE_CHECKING:  # would make every attribute of every sanity callback type-check

        def __getattr__(self, name: str) -> Any:
            """Called only for attributes this instance lacks: a duplicate's public ones are its original's."""
            original = vars(self).get("duplicate_of")
            if original is None or name.startswith("_"):
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return getattr(original, name)

    def _end_run(self, trainer: pl.Trainer, exception: BaseException) -> None:
        """``on_exception``: end the run with ``exception``. Lightning tells every callback in turn; the first one
        ends the run for all. An exception before any sanity callback's ``setup`` (in ``prepare_data``,
        ``configure_callbacks``) still gets its report: every sanity callback of the Trainer joins a run that ends
        at once."""
        if sanity_run.told(trainer, self):
            return
        if sanity_run.current_run(trainer) is None and not sanity_run.amend(trainer, self, exception):
            for callback in sanity_callbacks(trainer):
                callback._join_run(trainer)
        sanity_run.abort(trainer, self, exception)

    @override
    @_guarded
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Join the trainer's run (done around every subclass's ``setup`` too)."""

    @override
    @_guarded
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Leave the run; the last sanity callback to leave ends it (done around every subclass's ``teardown``)."""

    @override
    @_guarded
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """End the run with what is known (done around every subclass's ``on_exception``)."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self._findings.values()], "run": self._run_name}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("run", "fit") != self._run_name:
            return  # a checkpoint's fit findings are not the findings of a test or predict run
        restored = (Finding.from_dict(data) for data in state_dict.get("findings", []))
        self._findings = {f.key: f for f in restored}


def sanity_callbacks(trainer: pl.Trainer) -> Iterable[SanityCallback]:
    return (cb for cb in trainer.callbacks if isinstance(cb, SanityCallback))  # type: ignore[attr-defined]


def collect_findings(trainer: pl.Trainer) -> list[Finding]:
    """All findings of every sanity callback attached to ``trainer`` in its current or last run, most severe first.

    Example::

        trainer = Trainer(callbacks=lightning_sanity.default_callbacks())
        trainer.fit(model, datamodule)
        errors = [f for f in collect_findings(trainer) if f.severity is Severity.ERROR]
    """
    findings = [finding for cb in sanity_callbacks(trainer) for finding in cb.findings]
    return sorted(findings, key=lambda f: -f.severity)


def resolve_findings(trainer: pl.Trainer, code: str, epoch: int) -> list[Finding]:
    """Mark every standing ``code`` finding of any sanity callback on ``trainer`` resolved at ``epoch`` (one callback
    learning that another's warning did not come true, e.g. unscaled targets the model fitted anyway); the findings
    resolved.

    Example::

        resolve_findings(trainer, "target.unscaled", trainer.current_epoch)
    """
    resolved = []
    for callback in sanity_callbacks(trainer):
        for finding in callback.findings:
            if finding.code == code and callback.resolve(code, finding.subject, epoch):
                resolved.append(callback._findings[finding.key])
    return resolved


_CREATED: weakref.WeakKeyDictionary[SanityCallback, int] = weakref.WeakKeyDictionary()
"""Every live sanity callback, with its serial number: the order in which they were created."""
_SERIALS = itertools.count()
_OWN_ATTRIBUTES = frozenset({"duplicate_of", "figure_paths"})
"""Public attributes a duplicate keeps as its own: it drew no figure."""


def _numbered(key: str, position: int) -> str:
    return key if position == 1 else f"{key}#{position}"


def _explicit_options(cls: type, passed: Mapping[str, Any], stable: bool = True) -> dict[str, Any]:
    """The constructor options passed with a value other than their default, in a stable printable form (or as
    passed, with ``stable=False``)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    options = {}
    for name, value in sorted(passed.items()):
        parameter = parameters.get(name)
        if parameter is not None and _same(value, parameter.default):
            continue
        options[name] = _stable(value) if stable else value
    return options


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value == default) or (isinstance(value, (list, tuple)) and tuple(value) == tuple(default or ()))
    except Exception:
        return False


def _stable(value: Any) -> Any:
    """A representation equal across processes (no memory addresses), for state keys."""
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, Mapping):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_stable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return value


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the innermost frame outside Lightning, torch and this package (the user's ``fit``
    call, or their hook), so that a warning shows the user's file and line rather than ours."""
    frame = inspect.currentframe()
    level, outermost = 0, 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if level > 0 and not module.startswith(_NOT_USER_CODE):
            return level
        frame, level, outermost = frame.f_back, level + 1, level
    return max(outermost, 1)


def jsonable(value: Any) -> Any:
    """Evidence must survive ``json.dumps``: tensors and numpy scalars become Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
