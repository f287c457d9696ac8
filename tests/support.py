"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl

from lightning_sanity import Finding, SanityWarning, Severity, collect_findings


def codes(trainer: pl.Trainer, minimum: Severity = Severity.INFO) -> set[str]:
    """The finding codes at or above ``minimum`` on ``trainer``."""
    return {f.code for f in collect_findings(trainer) if f.severity >= minimum}


def problems(trainer: pl.Trainer) -> list[Finding]:
    """WARNING and ERROR findings: a healthy program must have none."""
    return [f for f in collect_findings(trainer) if f.severity >= Severity.WARNING]


def only(findings: list[Finding], code: str) -> Finding:
    """The one finding with ``code``, made at step 0 of training (a step-zero check's finding)."""
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, [f.code for f in findings]
    assert matching[0].step == 0 and matching[0].stage == "train"
    return matching[0]


def quiet(findings: list[Finding]) -> None:
    """No WARNING or ERROR among ``findings``, listed in the assertion message otherwise."""
    assert [f"{f.code}: {f.message}" for f in findings if f.severity >= Severity.WARNING] == []


@contextmanager
def sanity_warnings() -> Iterator[list[str]]:
    """Collect the text of every SanityWarning emitted inside the block."""
    texts: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield texts
    texts.extend(str(w.message) for w in caught if issubclass(w.category, SanityWarning))
