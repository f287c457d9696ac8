"""What every sanity callback shares: recording findings, isolation from the user's run, state, the run report."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import RunningStage
from matplotlib.figure import Figure
from torch import Tensor
from typing_extensions import override

from lightning_sanity.batch import BatchAdapter, BatchParts, UnsupportedBatch, split_batch
from lightning_sanity.findings import Finding, SanityError, SanityWarning, Severity
from lightning_sanity.loggers import log_figure, scalar_key

log = logging.getLogger("lightning_sanity")

_STAGE_NAMES = {
    RunningStage.TRAINING: "train",
    RunningStage.SANITY_CHECKING: "val",
    RunningStage.VALIDATING: "val",
    RunningStage.TESTING: "test",
    RunningStage.PREDICTING: "predict",
}

_HOOK_NAMES = frozenset(name for name in dir(Callback) if name.startswith("on_")) | {"setup", "teardown"}


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
    """Turn an exception escaping ``hook`` into a ``sanity.internal_error`` finding: never kill the user's run."""

    @functools.wraps(hook)
    def run_guarded(self: SanityCallback, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, trainer, *args, **kwargs)
        except (SanityError, Warning):
            raise  # deliberate: strict mode, or the user's warnings filter set to "error"
        except Exception as error:
            log.debug("%s.%s failed", type(self).__name__, hook.__name__, exc_info=True)
            self.record(
                trainer,
                "sanity.internal_error",
                Severity.INFO,
                f"{type(self).__name__}.{hook.__name__} failed with {type(error).__name__}: {error}; "
                "that check was skipped and training continued.",
                "Please report this at the lightning-sanity issue tracker with the traceback "
                "(logger 'lightning_sanity' at DEBUG level).",
                subject=f"{hook.__name__}:{type(error).__name__}",
                evidence={"hook": hook.__name__, "error": repr(error)[:500]},
            )
            return None

    run_guarded.__wrapped_hook__ = True  # type: ignore[attr-defined]
    return run_guarded


class SanityCallback(Callback):
    """Base class of the sanity callbacks.

    Subclasses override Lightning hooks as usual; every hook they define is guarded so that an
    internal error becomes an INFO finding instead of an exception in the user's run. They report
    problems with :meth:`record`, read batches with :meth:`split_batch` and may add text to the run
    report through :meth:`report_sections`. A subclass that overrides ``teardown``, ``state_dict`` or
    ``load_state_dict`` must call ``super()``.

    Args:
        strict: Raise :class:`SanityError` on the first ERROR finding (for CI pipelines).
        batch_adapter: A function ``batch -> (inputs, targets)`` for batch structures we do not understand.
        figure_every_n_epochs: Log this callback's figures at the first epoch, then every N epochs; 0 turns
            them off.
        save_dir: Also save figures as PNG files here (the only place they go when there is no logger).
    """

    name: ClassVar[str] = "sanity"
    """Short name used in scalar keys: ``sanity/<name>/<split>/<metric>``."""

    def __init__(
        self,
        *,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        figure_every_n_epochs: int = 5,
        save_dir: str | None = None,
    ) -> None:
        require(isinstance(strict, bool), "strict", "a bool", strict)
        require(batch_adapter is None or callable(batch_adapter), "batch_adapter", "None or a callable", batch_adapter)
        require(
            isinstance(figure_every_n_epochs, int) and figure_every_n_epochs >= 0,
            "figure_every_n_epochs",
            "an int >= 0 (0 turns figures off)",
            figure_every_n_epochs,
        )
        self.strict = strict
        self.batch_adapter = batch_adapter
        self.figure_every_n_epochs = figure_every_n_epochs
        self.save_dir = save_dir
        self.figure_paths: list[str] = []
        self._findings: dict[tuple[str, str], Finding] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook_name in _HOOK_NAMES & cls.__dict__.keys():
            hook = cls.__dict__[hook_name]
            if not getattr(hook, "__wrapped_hook__", False):
                setattr(cls, hook_name, _guarded(hook))

    @property
    def findings(self) -> list[Finding]:
        """Every finding of this callback, in the order first seen."""
        return list(self._findings.values())

    def record(
        self,
        trainer: pl.Trainer,
        code: str,
        severity: Severity,
        message: str,
        hint: str,
        *,
        subject: str = "",
        evidence: Mapping[str, Any] | None = None,
        stage: str | None = None,
    ) -> Finding:
        """Record a finding. The first occurrence of ``(code, subject)`` warns; repeats only count.

        Raises:
            SanityError: if this callback is ``strict`` and the finding is an ERROR.
        """
        key = (code, subject)
        if key in self._findings:
            self._findings[key] = self._findings[key].recurred()
            return self._findings[key]
        finding = Finding(
            code=code,
            severity=severity,
            message=message,
            hint=hint,
            callback=type(self).__name__,
            stage=stage or stage_of(trainer),
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            evidence=_jsonable(evidence or {}),
            subject=subject,
        )
        self._findings[key] = finding
        self._announce(trainer, finding)
        if self.strict and severity >= Severity.ERROR:
            raise SanityError(finding)
        return finding

    def _announce(self, trainer: pl.Trainer, finding: Finding) -> None:
        if trainer.global_rank != 0:
            return
        if finding.severity >= Severity.WARNING:
            warnings.warn(SanityWarning(str(finding)), stacklevel=2)
        else:
            log.info("%s", finding)

    def split_batch(self, trainer: pl.Trainer, batch: Any) -> BatchParts | None:
        """The batch's ``(inputs, targets)``, or ``None`` (with one ``sanity.skipped`` INFO) if not understood."""
        try:
            return split_batch(batch, self.batch_adapter)
        except UnsupportedBatch as reason:
            self.record(
                trainer,
                "sanity.skipped",
                Severity.INFO,
                f"{type(self).__name__} skipped batches it could not read: {reason}.",
                "Pass batch_adapter=lambda batch: (inputs, targets) to the callback to enable its checks.",
                subject="batch",
                evidence={"batch_type": type(batch).__name__},
            )
            return None

    def figure_due(self, trainer: pl.Trainer) -> bool:
        """Figures are drawn at the first epoch, then every ``figure_every_n_epochs``; never in the sanity check."""
        every = self.figure_every_n_epochs
        return every > 0 and not trainer.sanity_checking and trainer.current_epoch % every == 0

    def log_figure(self, trainer: pl.Trainer, split: str, name: str, figure: Figure) -> None:
        """Log ``figure`` as ``sanity/<callback>/<split>/<name>`` to every logger (and ``save_dir``)."""
        self.figure_paths.extend(log_figure(trainer, scalar_key(self.name, split, name), figure, self.save_dir))

    def report_sections(self) -> list[tuple[str, str]]:
        """Extra ``(title, text)`` blocks for the run report (e.g. a confusion matrix)."""
        return []

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._merge_findings_across_ranks(trainer)
        if _first_sanity_callback(trainer) is self:
            from lightning_sanity.report import publish_report

            publish_report(trainer, getattr(stage, "value", stage))

    def _merge_findings_across_ranks(self, trainer: pl.Trainer) -> None:
        """Make findings identical on every rank; called unconditionally on all ranks so none waits forever."""
        if trainer.world_size < 2 or not dist.is_available() or not dist.is_initialized():
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, [f.to_dict() for f in self._findings.values()])
        for rank_findings in gathered:
            for data in rank_findings:
                finding = Finding.from_dict(data)
                mine = self._findings.get(finding.key)
                if mine is None:
                    self._findings[finding.key] = finding
                    self._announce(trainer, finding)
                elif finding.count > mine.count:
                    self._findings[finding.key] = finding

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self._findings.values()]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restored = (Finding.from_dict(data) for data in state_dict.get("findings", []))
        self._findings = {f.key: f for f in restored}


def _first_sanity_callback(trainer: pl.Trainer) -> SanityCallback | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, SanityCallback)), None)  # type: ignore[attr-defined]


def sanity_callbacks(trainer: pl.Trainer) -> Iterable[SanityCallback]:
    return (cb for cb in trainer.callbacks if isinstance(cb, SanityCallback))  # type: ignore[attr-defined]


def collect_findings(trainer: pl.Trainer) -> list[Finding]:
    """All findings of every sanity callback attached to ``trainer``, most severe first.

    Example::

        trainer = Trainer(callbacks=lightning_sanity.default_callbacks())
        trainer.fit(model, datamodule)
        errors = [f for f in collect_findings(trainer) if f.severity is Severity.ERROR]
    """
    findings = [finding for cb in sanity_callbacks(trainer) for finding in cb.findings]
    return sorted(findings, key=lambda f: -f.severity)


def _jsonable(value: Any) -> Any:
    """Evidence must survive ``json.dumps``: tensors and numpy scalars become Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
