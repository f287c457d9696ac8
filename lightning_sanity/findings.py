"""The findings model: what a sanity check reports, and how severe it is."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    """How bad a finding is. Orderable: ``Severity.INFO < Severity.WARNING < Severity.ERROR``."""

    INFO = 10
    WARNING = 20
    ERROR = 30

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        """Accept ``"error"``, ``"ERROR"``, ``30`` or a ``Severity``."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"unknown severity {value!r}; expected one of info, warning, error") from None
        return cls(value)


@dataclass(frozen=True)
class Finding:
    """One diagnosis made by a sanity callback.

    Attributes:
        code: Stable dotted identifier, e.g. ``"input.collapsed"``. Codes are API: see ``docs/findings.md``.
        severity: :class:`Severity` of the finding.
        message: One line naming the culprit (layer, transform, dataloader, key).
        hint: One line saying how to fix it.
        callback: Name of the callback class that made the finding.
        stage: Where it was first seen: ``"setup"``, ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
        epoch: Epoch when first seen.
        step: Global step when first seen.
        count: How many times it was seen; repeats only increment this.
        evidence: JSON-serialisable numbers that prove the finding.
        subject: What the finding is about (a layer, a dataloader); ``code`` + ``subject`` identify a finding.
        resolved_epoch: For a verdict about learning that later stopped holding (the run broke out of a plateau),
            the epoch from which it no longer held; ``None`` while it stands.

    Example::

        for finding in lightning_sanity.collect_findings(trainer):
            if finding.severity >= Severity.WARNING:
                print(finding.code, finding.message, finding.evidence)
    """

    code: str
    severity: Severity
    message: str
    hint: str
    callback: str
    stage: str
    epoch: int
    step: int
    count: int = 1
    evidence: dict[str, Any] = field(default_factory=dict)
    subject: str = ""
    resolved_epoch: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.code, self.subject)

    def recurred(self, times: int = 1) -> Finding:
        """The same finding, seen ``times`` more often."""
        return dataclasses.replace(self, count=self.count + times)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["severity"] = str(self.severity)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """The inverse of :meth:`to_dict`; keys this version does not know (written by a newer one) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)} - {"severity"}
        fields = {key: value for key, value in data.items() if key in known}
        return cls(**fields, severity=Severity.parse(data["severity"]))

    @property
    def standing(self) -> bool:
        """Whether the finding still holds (not resolved later in the run)."""
        return self.resolved_epoch is None

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message} Hint: {self.hint}"


class SanityWarning(UserWarning):
    """Emitted once, on rank zero, for the first occurrence of each WARNING or ERROR finding.

    Standard ``warnings`` filters apply, e.g. ``warnings.simplefilter("error", SanityWarning)``.
    """


class SanityError(RuntimeError):
    """Raised by a callback created with ``strict=True`` when it makes an ERROR finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding
