"""Triage: when a run does not learn, which of the usual causes are ruled out, found, or could not be checked.

A pure function of the run's findings and of which sanity callbacks ran: the findings it reads are made by the
callbacks themselves; this ties them to the symptom (stuck, collapsed or at chance) as the differential diagnosis
a careful engineer goes through.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from lightning_sanity.findings import Finding, Severity

Status = Literal["fine", "wrong", "not checkable"]

SYMPTOMS = frozenset(
    {
        "eval.chance_level",
        "eval.loss_at_chance",
        "eval.prediction_collapse",
        "eval.imbalance_masked",
        "eval.below_chance",
        "eval.regression_at_mean",
        "eval.multilabel_collapse",
        "eval.multilabel_chance_level",
        "eval.loss_at_prior",
    }
)
"""Standing findings that say the run is stuck, collapsed or at chance (a regression at the mean, a language model at
its targets' frequencies): they open the triage section."""


@dataclass(frozen=True)
class Cause:
    """One question of the differential diagnosis: the finding codes that answer "wrong" and who checks them."""

    check: str
    codes: tuple[str, ...]
    checkers: tuple[str, ...]
    blind_codes: tuple[str, ...] = ()
    """INFO codes saying the checker that made them could not look (e.g. a pipeline it cannot reach)."""


INPUT_CHECKS = frozenset({"inputs scaled and normalised?", "train/val pipelines equal?"})
"""Checks whose findings explain validation failing while training fits (the model sees other inputs there)."""
LABELS_CHECK = "labels shaped, shuffled, aligned?"


CAUSES: tuple[Cause, ...] = (
    Cause(
        "inputs scaled and normalised?",
        (
            "input.non_finite",
            "input.unscaled",
            "input.collapsed",
            "transform.normalize_scale",
        ),
        ("BatchStatsCallback", "TransformParityCallback"),
    ),
    Cause(
        "train/val pipelines equal?",
        (
            "transform.normalize_missing",
            "transform.normalize_mismatch",
            "transform.scaling_mismatch",
            "transform.output_mismatch",
            "transform.random_in_eval",
            "input.split_shift",
        ),
        ("TransformParityCallback", "BatchStatsCallback"),
        blind_codes=("transform.unreachable",),
    ),
    Cause(
        LABELS_CHECK,
        ("target.shape", "target.single_class_batches", "eval.below_chance", "data.target_in_input"),
        ("BatchStatsCallback", "ConfusionCallback"),
    ),
    Cause(
        "targets and loss fit the task?",
        ("target.unscaled", "loss.softmax_multilabel", "target.mask_interpolated"),
        ("ModelChecksCallback", "BatchStatsCallback"),
    ),
    Cause(
        "gradients reach every layer?",
        ("grad.missing", "grad.zero", "grad.vanishing", "grad.exploding", "grad.non_finite", "param.not_updated"),
        ("GradientFlowCallback",),
    ),
    Cause(
        "update size sane?", ("update.too_small", "update.too_large", "update.lr_collapsed"), ("GradientFlowCallback",)
    ),
    Cause("outputs activated before the loss?", ("output.activated",), ("ConfusionCallback",)),
    Cause("model in train mode?", ("mode.eval_in_train",), ("ModeGuardCallback",)),
    Cause("inputs used?", ("model.input_independent",), ("ModelChecksCallback",)),
)


def input_cause(findings: Iterable[Finding]) -> str | None:
    """The code of a standing WARNING/ERROR saying the model sees other inputs in evaluation than in training (input
    scaling or a train/val pipeline difference), ``None`` if there is none."""
    codes = {code for cause in CAUSES if cause.check in INPUT_CHECKS for code in cause.codes}
    return next((f.code for f in findings if f.code in codes and f.standing and f.severity >= Severity.WARNING), None)


@dataclass(frozen=True)
class TriageRow:
    """One line of the triage: the question, its answer, and the finding code that answers "wrong"."""

    check: str
    status: Status
    code: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"check": self.check, "status": self.status, "code": self.code}


def is_stuck(findings: Iterable[Finding]) -> bool:
    """Whether a standing finding says the run is stuck, collapsed or at chance."""
    return any(f.code in SYMPTOMS and f.standing and f.severity >= Severity.WARNING for f in findings)


def triage_rows(findings: Sequence[Finding], callbacks_ran: Collection[str]) -> list[TriageRow]:
    """The differential diagnosis of a run that does not learn; empty when nothing says it is stuck.

    Args:
        findings: Every finding of the run.
        callbacks_ran: Class names of the sanity callbacks attached to the run.

    Example::

        >>> from lightning_sanity.findings import Finding, Severity
        >>> stuck = Finding("eval.chance_level", Severity.WARNING, "", "", "ConfusionCallback", "val", 2, 90)
        >>> relu = Finding("output.activated", Severity.WARNING, "", "", "ConfusionCallback", "val", 0, 0)
        >>> rows = triage_rows([stuck, relu], {"ConfusionCallback"})
        >>> [(row.status, row.code) for row in rows if row.check.startswith("outputs")]
        [('wrong', 'output.activated')]
        >>> next(row.status for row in rows if row.check.startswith("inputs used"))
        'not checkable'
    """
    if not is_stuck(findings):
        return []
    serious = [f for f in findings if f.severity >= Severity.WARNING and f.standing]
    found = {cause.check: next((f.code for f in serious if f.code in cause.codes), None) for cause in CAUSES}
    inputs_explain = any(found[cause.check] for cause in CAUSES if cause.check in INPUT_CHECKS)
    explained = any(found.values())
    rows = []
    for cause in CAUSES:
        code = found[cause.check]
        labels = cause.check == LABELS_CHECK
        if code is None and labels and not inputs_explain:
            # a model that memorises its training data while nothing transfers: labels without signal, unless
            # validation inputs unlike the training inputs explain it
            code = next((f.code for f in serious if f.evidence.get("training") == "memorising"), None)
        blind = {f.callback for f in findings if f.code in cause.blind_codes}
        checked = any(name in callbacks_ran and name not in blind for name in cause.checkers)
        if code is not None:
            rows.append(TriageRow(cause.check, "wrong", code))
        elif labels and not explained:
            # shape and shuffling are checked, alignment with the inputs is not: with no other cause found it is
            # the open suspect, not ruled out
            rows.append(TriageRow(cause.check, "not checkable"))
        else:
            rows.append(TriageRow(cause.check, "fine" if checked else "not checkable"))
    return rows


def format_triage(rows: Sequence[TriageRow]) -> str:
    """The triage as aligned text, one question per line.

    Example::

        >>> print(format_triage([TriageRow("model in train mode?", "wrong", "mode.eval_in_train")]))
        model in train mode?  wrong (mode.eval_in_train)
    """
    width = max((len(row.check) for row in rows), default=0)
    return "\n".join(f"{row.check.ljust(width)}  {row.status}" + (f" ({row.code})" if row.code else "") for row in rows)
