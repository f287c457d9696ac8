"""The run report: one summary of every finding of one run, printed once and written next to the logs.

File format (``sanity_report_<run>.json``), schema ``lightning-sanity/report`` version 2::

    {
      "schema": "lightning-sanity/report", "version": 2,
      "run": "fit" | "validate" | "test" | "predict",
      "status": "finished" | "interrupted",          # as Lightning's trainer.state.status: interrupted when an
      "exception": null | "SanityError: [error] ...", # exception (the user's, strict mode, Ctrl+C) ended the run
      "exception_type": null | "SanityError",        # its class name (absent from older version 2 files)
      "summary": {"error": int, "warning": int, "info": int},
      "findings": [Finding.to_dict(), ...],          # most severe first
      "sections": [{"title": str, "text": str}, ...],
      "figures": [str, ...],                         # PNG paths relative to the report, or artifact names
      "triage": [{"check": str, "status": "fine" | "wrong" | "not checkable", "code": str | null}, ...],
      "task": null | {"kind": str, "description": str, "loss": str | null, "num_classes": int | null, ...}
    }

Version 1 documents (no ``status`` / ``exception`` / ``triage``) and version 2 documents without
``exception_type`` or ``task`` still load. Readers must ignore keys they do not know.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lightning_sanity.findings import Finding, Severity
from lightning_sanity.triage import TriageRow, format_triage

SCHEMA = "lightning-sanity/report"
SCHEMA_VERSION = 2
FINISHED, INTERRUPTED = "finished", "interrupted"


def report_stem(run: str, ordinal: int = 1) -> str:
    """``sanity_report_fit`` for a trainer's first fit, ``sanity_report_fit_2`` for its second, and so on."""
    return f"sanity_report_{run}" if ordinal == 1 else f"sanity_report_{run}_{ordinal}"


TRIAGE_TITLE = "Triage: the run does not learn; causes checked"


@dataclass(frozen=True)
class SanityReport:
    """Every finding of a run, with extra sections (e.g. the confusion matrix) contributed by callbacks.

    Example::

        report = SanityReport.from_json(Path(trainer.log_dir, "sanity_report_fit.json").read_text())
        print(report.to_text())
        Path("report.json").write_text(report.to_json())
    """

    findings: list[Finding]
    sections: list[tuple[str, str]] = field(default_factory=list)
    run: str = "fit"
    figures: list[str] = field(default_factory=list)
    status: str = FINISHED
    exception: str | None = None
    triage: list[TriageRow] = field(default_factory=list)
    """The differential diagnosis, when a finding says the run is stuck, collapsed or at chance."""
    exception_type: str | None = None
    """The class name of the exception that ended the run (``"KeyboardInterrupt"``, ``"SanityError"``, ...)."""
    task: dict[str, Any] | None = None
    """What the run's model predicts and against which targets (:meth:`lightning_sanity.task.Task.to_dict`)."""

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(str(f.severity) for f in self.findings if f.standing)  # resolved verdicts no longer count
        return {str(severity): counted[str(severity)] for severity in reversed(Severity)}

    def headline(self) -> str:
        counts = ", ".join(f"{severity}: {n}" for severity, n in self.counts.items())
        status = "" if self.status == FINISHED else f", {self.status}"
        resolved = sum(not f.standing for f in self.findings)
        resolved_note = f", resolved: {resolved}" if resolved else ""
        return f"lightning-sanity report ({self.run}{status}): {counts}{resolved_note}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": SCHEMA,
                "version": SCHEMA_VERSION,
                "run": self.run,
                "status": self.status,
                "exception": self.exception,
                "exception_type": self.exception_type,
                "summary": self.counts,
                "findings": [f.to_dict() for f in self.findings],
                "sections": [{"title": title, "text": text} for title, text in self.sections],
                "figures": self.figures,
                "triage": [row.to_dict() for row in self.triage],
                "task": self.task,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SanityReport:
        data = json.loads(text)
        if data.get("schema") != SCHEMA or data.get("version", 0) > SCHEMA_VERSION:
            raise ValueError(f"not a {SCHEMA} document of version <= {SCHEMA_VERSION}")
        return cls(
            findings=[Finding.from_dict(f) for f in data["findings"]],
            sections=[(s["title"], s["text"]) for s in data["sections"]],
            run=data["run"],
            figures=data.get("figures", []),
            status=data.get("status", FINISHED),
            exception=data.get("exception"),
            triage=[TriageRow(**row) for row in data.get("triage", [])],
            exception_type=data.get("exception_type"),
            task=data.get("task"),
        )

    def task_line(self) -> str | None:
        """The run's task in one line, if known: ``Task: multiclass classification (10 classes), loss cross_entropy
        on the model's output vs batch[1]``."""
        return f"Task: {self.task['description']}" if self.task and self.task.get("description") else None

    def to_markdown(self) -> str:
        lines = [f"# {self.headline()}", ""]
        if self.task_line():
            lines += [str(self.task_line()), ""]
        if self.exception:
            lines += [f"The run ended with `{_cell(self.exception)}`.", ""]
        if self.findings:
            lines += ["| severity | code | where | count | message | hint |", "|---|---|---|---|---|---|"]
            lines += [
                f"| {f.severity} | `{f.code}` | {_where(f)} | {f.count} | {_cell(f.message)} | {_cell(f.hint)} |"
                for f in self.findings
            ]
        else:
            lines.append("No findings.")
        if self.triage:
            lines += ["", f"## {TRIAGE_TITLE}", "", "| check | status | code |", "|---|---|---|"]
            lines += [f"| {row.check} | {row.status} | {f'`{row.code}`' if row.code else ''} |" for row in self.triage]
        for title, text in self.sections:
            lines += ["", f"## {title}", "", "```", text, "```"]
        if self.figures:
            lines += ["", "## Figures", ""]
            lines += [f"- [{os.path.basename(path)}]({path})" for path in self.figures]
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        lines = [self.headline()]
        if self.task_line():
            lines.append(f"  {self.task_line()}")
        if self.exception:
            lines.append(f"  ended with {self.exception}")
        for f in self.findings:
            lines.append(f"  {str(f.severity).upper():<7} {f.code}  ({_where(f)}, x{f.count})")
            lines.append(f"          {f.message}")
            lines.append(f"          hint: {f.hint}")
        if self.triage:
            lines += [f"  {TRIAGE_TITLE}:", *(f"    {line}" for line in format_triage(self.triage).splitlines())]
        for title, text in self.sections:
            lines += [f"  {title}:", *(f"    {line}" for line in text.splitlines())]
        return "\n".join(lines)

    def print(self) -> None:
        """Print the report, as a rich table when ``rich`` is installed."""
        try:
            from rich.console import Console
        except ImportError:
            print(self.to_text())
            return
        console = Console(width=max(Console().width, 140))
        if self.findings:
            console.print(self._rich_table(), highlight=False)
        else:
            console.print(f"{self.headline()}: no findings.", highlight=False)
        if self.task_line():
            console.print(self.task_line(), highlight=False, markup=False)
        if self.exception:
            console.print(f"The run ended with {self.exception}", highlight=False, markup=False)
        if self.triage:
            console.print(f"[bold]{TRIAGE_TITLE}[/bold]\n{format_triage(self.triage)}", highlight=False)
        for title, text in self.sections:
            console.print(f"[bold]{title}[/bold]\n{text}", highlight=False)

    def _rich_table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.headline(), show_lines=True, expand=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("where", no_wrap=True)
        table.add_column("count", justify="right")
        table.add_column("message / hint", ratio=1, overflow="fold")
        style = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}
        for f in self.findings:
            where = f"{f.stage} epoch {f.epoch}\nstep {f.step}" + _resolved(f, "\n")
            table.add_row(
                str(f.severity).upper(), f.code, where, str(f.count), f"{f.message}\nhint: {f.hint}",
                style=style[f.severity],
            )  # fmt: skip
        return table


def _where(finding: Finding) -> str:
    subject = f" {finding.subject}" if finding.subject else ""
    return f"{finding.stage} epoch {finding.epoch} step {finding.step}{subject}{_resolved(finding, ', ')}"


def _resolved(finding: Finding, separator: str) -> str:
    return "" if finding.standing else f"{separator}resolved at epoch {finding.resolved_epoch}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(report: SanityReport, directory: str, stem: str) -> list[str]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``directory`` (figure paths made relative to it)."""
    os.makedirs(directory, exist_ok=True)
    linked = dataclasses.replace(report, figures=[_relative(path, directory) for path in report.figures])
    written = []
    for path, text in ((f"{stem}.json", linked.to_json()), (f"{stem}.md", linked.to_markdown())):
        written.append(os.path.join(directory, path))
        with open(written[-1], "w") as handle:
            handle.write(text)
    return written


def _relative(path: str, directory: str) -> str:
    return os.path.relpath(path, directory) if os.path.isabs(path) else path
