"""The run coordinator: what belongs to one ``fit`` / ``validate`` / ``test`` / ``predict`` run, not to a callback.

Every sanity callback joins the trainer's current run in its ``setup``. When the last one that joined reaches
``teardown``, the coordinator makes **one** collective (on every rank) to merge every callback's findings across
ranks, releases every hook and snapshot the callbacks hold, and publishes one report (rank zero prints it and
writes ``sanity_report_<run>.json`` / ``.md`` next to the logs). When the run ends with an exception (``strict``
mode, an error in the user's code, Ctrl+C) Lightning calls ``on_exception`` instead of ``teardown``: the first
callback to receive it makes the coordinator release everything and publish each rank's own findings, without any
collective (another rank may never reach it). An exception after the report was published (in the
LightningModule's own ``teardown``, which Lightning calls after the callbacks') rewrites the report as
interrupted.
"""

from __future__ import annotations

import inspect
import logging
import traceback
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_sanity.findings import Finding
from lightning_sanity.loggers import log_scalars
from lightning_sanity.report import FINISHED, INTERRUPTED, SanityReport, report_stem, write_report
from lightning_sanity.task import Task
from lightning_sanity.triage import triage_rows

log = logging.getLogger("lightning_sanity")


class RunMember(Protocol):
    """What the coordinator needs from a sanity callback (implemented by :class:`~lightning_sanity.SanityCallback`)."""

    @property
    def state_key(self) -> str: ...

    @property
    def duplicate_of(self) -> Any: ...

    @property
    def findings(self) -> list[Finding]: ...

    @property
    def figure_paths(self) -> list[str]: ...

    def adopt_findings(self, trainer: pl.Trainer, findings: list[Finding]) -> None: ...

    def report_sections(self) -> list[tuple[str, str]]: ...

    def flush_figures(self, trainer: pl.Trainer) -> None: ...

    def release(self) -> None: ...


@dataclass
class SanityRun:
    """One run of a trainer: its name, its members (the sanity callbacks), and which of them have torn down."""

    name: str
    ordinal: int
    members: list[RunMember] = field(default_factory=list)
    torn_down: list[RunMember] = field(default_factory=list)
    report: SanityReport | None = None
    task: Task | None = None
    """What the run's model predicts and against which targets, once a callback decided it (:func:`publish_task`)."""

    @property
    def stem(self) -> str:
        """The report file name without extension, e.g. ``sanity_report_fit``."""
        return report_stem(self.name, self.ordinal)


@dataclass
class _TrainerRuns:
    current: SanityRun | None = None
    last: SanityRun | None = None
    started: Counter[str] = field(default_factory=Counter)
    untold: list[RunMember] = field(default_factory=list)
    """Members yet to receive ``on_exception`` for the exception that ended the last run (Lightning tells every
    callback in turn; the first one ends the run). Kept rather than the exception: its traceback holds the
    trainer, which must not outlive its last reference here."""


_RUNS: weakref.WeakKeyDictionary[pl.Trainer, _TrainerRuns] = weakref.WeakKeyDictionary()


def current_run(trainer: pl.Trainer) -> SanityRun | None:
    """The run of ``trainer`` in progress (or ``None`` between runs)."""
    runs = _RUNS.get(trainer)
    return runs.current if runs is not None else None


def last_report(trainer: pl.Trainer) -> SanityReport | None:
    """The report of the trainer's last finished (or interrupted) run; ``None`` before any run ended.

    Example::

        trainer.fit(model, datamodule)
        report = lightning_sanity.last_report(trainer)
        print(report.to_text())
    """
    runs = _RUNS.get(trainer)
    return runs.last.report if runs is not None and runs.last is not None else None


def task_of(trainer: pl.Trainer) -> Task | None:
    """The task published for the trainer's current run; ``None`` before a callback decided it (or between runs).

    Example::

        task = task_of(trainer)
        if task is not None and task.kind == "regression": ...
    """
    run = current_run(trainer)
    return run.task if run is not None else None


def publish_task(trainer: pl.Trainer, task: Task) -> Task:
    """Publish ``task`` for the trainer's current run; the first publication wins (each rank decides the same from its
    own first batch, so no collective is needed). Returns the run's task: the earlier one, if any."""
    run = current_run(trainer)
    if run is None:
        return task
    if run.task is None:
        run.task = task
    return run.task


def join(trainer: pl.Trainer, member: RunMember) -> SanityRun:
    """Add ``member`` to the trainer's current run, starting a new run if none is in progress (from ``setup``)."""
    runs = _RUNS.setdefault(trainer, _TrainerRuns())
    runs.untold = []
    if runs.current is None:
        name = trainer.state.fn.value if trainer.state.fn is not None else "run"
        runs.started[name] += 1
        runs.current = SanityRun(name, runs.started[name])
    if member not in runs.current.members:
        runs.current.members.append(member)
    return runs.current


def leave(trainer: pl.Trainer, member: RunMember) -> None:
    """``member`` reached ``teardown``; the last member to do so ends the run: gather, release, publish."""
    run = current_run(trainer)
    if run is None or member not in run.members:
        return
    if member not in run.torn_down:
        run.torn_down.append(member)
    if len(run.torn_down) < len(run.members):
        return
    _end(trainer, run)
    _gather_across_ranks(trainer, run.members)
    run.report = _publish(trainer, run, None)


def abort(trainer: pl.Trainer, member: RunMember, exception: BaseException) -> None:
    """The run ended with ``exception`` (``member`` was told first): release everything and publish each rank's
    findings, with no collective."""
    run = current_run(trainer)
    if run is None:
        return
    _end(trainer, run)
    _RUNS[trainer].untold = [other for other in run.members if other is not member]
    run.report = _publish(trainer, run, exception)


def told(trainer: pl.Trainer, member: RunMember) -> bool:
    """Whether ``member`` is being told about an exception that already ended its run (from ``on_exception``)."""
    runs = _RUNS.get(trainer)
    if runs is None or member not in runs.untold:
        return False
    runs.untold.remove(member)
    return True


def amend(trainer: pl.Trainer, member: RunMember, exception: BaseException) -> bool:
    """If ``exception`` left the LightningModule's ``teardown``, which Lightning calls after the callbacks' (so after
    the report was published), rewrite the last run's report as interrupted and say so.

    Returns:
        Whether it did; otherwise the exception came before the run started (``prepare_data``,
        ``configure_callbacks``, ...).
    """
    runs = _RUNS.get(trainer)
    run = runs.last if runs is not None else None
    if run is None or run.report is None or member not in run.members or not _left_teardown(trainer, exception):
        return False
    runs.untold = [other for other in run.members if other is not member]  # type: ignore[union-attr]
    run.report = _publish(trainer, run, exception, amended=True)
    return True


def _left_teardown(trainer: pl.Trainer, exception: BaseException) -> bool:
    """Whether ``exception`` was raised inside ``teardown`` of the trainer's LightningModule: read from the
    exception's own traceback (a frame running that method's code on that module), not from Lightning's private
    state."""
    module = trainer.lightning_module
    hook = getattr(type(module), "teardown", None)
    code = getattr(inspect.unwrap(hook), "__code__", None) if callable(hook) else None
    return code is not None and any(
        frame.f_code is code and frame.f_locals.get("self") is module
        for frame, _ in traceback.walk_tb(exception.__traceback__)
    )


def _end(trainer: pl.Trainer, run: SanityRun) -> None:
    runs = _RUNS[trainer]
    runs.current, runs.last = None, run
    for member in run.members:
        if member.duplicate_of is not None:
            continue  # it ran nothing, and its attributes are its original's
        try:
            member.release()
        except Exception:  # releasing is best effort: never hide the run's own outcome
            log.warning("lightning-sanity: %s could not release its hooks", type(member).__name__, exc_info=True)


def _gather_across_ranks(trainer: pl.Trainer, members: Iterable[RunMember]) -> None:
    """One ``all_gather_object`` of every member's findings, made on every rank; each member adopts the merge."""
    if trainer.world_size < 2 or not dist.is_available() or not dist.is_initialized():
        return
    members = list(members)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {m.state_key: [f.to_dict() for f in m.findings] for m in members})
    for member in members:
        per_rank = [[Finding.from_dict(data) for data in rank.get(member.state_key, [])] for rank in gathered]
        member.adopt_findings(trainer, merge_findings(per_rank))


def merge_findings(per_rank: list[list[Finding]]) -> list[Finding]:
    """Findings of every rank, identical whichever rank merges: first seen in rank order, the highest count kept."""
    merged: dict[tuple[str, str], Finding] = {}
    for findings in per_rank:
        for finding in findings:
            kept = merged.setdefault(finding.key, finding)
            if finding.count > kept.count:
                merged[finding.key] = kept.recurred(finding.count - kept.count)
    return list(merged.values())


def _publish(
    trainer: pl.Trainer, run: SanityRun, exception: BaseException | None, amended: bool = False
) -> SanityReport:
    """Build the run's report (``interrupted`` by ``exception``, if any); on rank zero print it, log its counts and
    write it next to the logs. An ``amended`` report (an exception after the run's report) is written again and
    announced in one line; it was printed and logged already."""
    findings = sorted((f for m in run.members for f in m.findings), key=lambda f: -f.severity)
    sections = [section for m in run.members if m.duplicate_of is None for section in m.report_sections()]
    if trainer.global_rank == 0:
        for member in run.members:
            member.flush_figures(trainer)
    figures = [path for m in run.members for path in m.figure_paths]
    triage = triage_rows(findings, {type(m).__name__ for m in run.members})
    report = SanityReport(
        findings,
        sections,
        run.name,
        figures,
        FINISHED if exception is None else INTERRUPTED,
        None if exception is None else f"{type(exception).__name__}: {exception}"[:2000],
        triage,
        None if exception is None else type(exception).__name__,
        None if run.task is None else run.task.to_dict(),
    )
    if trainer.global_rank != 0:
        return report
    try:
        if amended:
            log.warning("lightning-sanity: the %s run ended with %s after its report; the report says so", run.name,
                        report.exception)  # fmt: skip
        else:
            report.print()
            counts = report.counts
            log_scalars(trainer, {"sanity/errors": counts["error"], "sanity/warnings": counts["warning"]})
        directory = report_dir(trainer)
        if directory is not None:
            write_report(report, directory, run.stem)
    except Exception:  # a full disk or a closed logger must not turn a finished run into a failed one
        log.warning("lightning-sanity could not publish its report", exc_info=True)
    return report


def report_dir(trainer: pl.Trainer) -> str | None:
    """Rank zero's log directory of the first logger, computed locally.

    ``Trainer.log_dir`` broadcasts from rank zero, a collective every rank must join: called on rank zero only (as
    publishing is) it hangs a DDP run, and on the exception path no collective may be made at all. Its value is
    rank zero's own, which is what this reads.
    """
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return logger.log_dir
    return logger.save_dir
