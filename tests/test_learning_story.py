"""The verdicts about learning tell the truth about the training trajectory (issue #22 section 2).

A training loss that starts far above ln(C) (huge initial logits) and falls only to the class-prior entropy learned
the class frequencies and nothing else: the verdict says so, never that the model "did train" or "memorises". A model
whose training loss goes clearly below the prior while the validation stays at chance does memorise, and is told so.
"""

from __future__ import annotations

from typing import Any

import torch
from test_learnability import fit, labels_without_signal, loader
from torch import Tensor, nn

from lightning_sanity import Severity, collect_findings
from lightning_sanity.demos import Classifier, mlp
from lightning_sanity.learnability import ConfusionSummary, EpochEvidence, learning_evidence, training_evidence
from lightning_sanity.verdicts import learning_story

WRONG_ROWS = "labels on the wrong rows"


class HugeLogits(nn.Module):
    """Logits that ignore the input and start far from uniform (std 6: an initial loss around 8 nats)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(classes, generator=torch.Generator().manual_seed(3)) * 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(len(x), -1) + 0 * x[:, :1]


def random_label_loaders() -> tuple[Any, Any]:
    return (
        loader(*labels_without_signal(WRONG_ROWS, "train")),
        loader(*labels_without_signal(WRONG_ROWS, "val"), 128, False),
    )


def verdicts(trainer: Any) -> list[Any]:
    return [f for f in collect_findings(trainer) if f.code.startswith("eval.") and f.severity >= Severity.WARNING]


def test_a_loss_falling_from_huge_logits_to_the_prior_is_told_it_sits_at_the_prior(make_trainer: Any) -> None:
    """Trigger: the loss falls from ~8 nats to ln 10 and stays: the verdict says it fell to the prior, not that the
    model trained or memorises (``eval.chance_level`` / ``eval.prediction_collapse`` carry the story)."""
    trainer = fit(make_trainer, Classifier(HugeLogits(), lr=0.05), *random_label_loaders(), epochs=9)
    found = [f for f in verdicts(trainer) if f.code in ("eval.chance_level", "eval.prediction_collapse")]
    assert found, [f.code for f in collect_findings(trainer)]
    for finding in found:
        losses = finding.evidence["epoch_train_losses"]
        assert finding.evidence["training"] in ("stuck", "never below the prior")
        assert "memorises" not in finding.message and "did train" not in finding.message
        assert "class-prior entropy" in finding.message and "learned the class frequencies" in finding.message
        assert losses[-1] >= 0.97 * finding.evidence["prior_entropy"]


def test_labels_without_signal_fitted_below_the_prior_are_still_memorised(make_trainer: Any) -> None:
    """Healthy twin of the story: the training loss goes clearly below the prior, the validation stays at chance."""
    trainer = fit(make_trainer, Classifier(mlp(64, 10, hidden=128), lr=3e-3), *random_label_loaders(), epochs=6)
    [finding] = [f for f in verdicts(trainer) if f.code == "eval.chance_level"]
    assert finding.evidence["training"] == "memorising" and "memorises" in finding.message
    assert finding.evidence["epoch_train_losses"][-1] < finding.evidence["prior_entropy"] - 0.05


def summary(counts: list[int]) -> ConfusionSummary:
    actual = torch.tensor(counts)
    return ConfusionSummary.from_counts(torch.zeros_like(actual), torch.zeros_like(actual), actual)


def test_falling_to_the_prior_is_not_learning_nor_memorising() -> None:
    balanced = summary([45] * 10)  # ln 10 = 2.303
    history = [EpochEvidence(e, 45 * (e + 1), None, 2.31, balanced) for e in range(5)]
    losses = [7.9, 3.1, 2.31, 2.306, 2.304]
    assert training_evidence(losses, balanced.prior_entropy, 180) == "learned"  # without the prior's floor
    assert learning_evidence(losses, history, balanced.prior_entropy, 180, remaining_epochs=0) == "stuck"
    story = learning_story("stuck", losses, history)
    assert story.startswith("the training loss fell from 7.900 (its first epoch's mean) to the class-prior entropy")
    assert "stayed there" in story


def test_a_loss_that_starts_at_the_prior_keeps_the_plain_story() -> None:
    history = [EpochEvidence(e, 45 * (e + 1), None, 2.31, summary([45] * 10)) for e in range(3)]
    assert learning_story("stuck", [2.31, 2.305, 2.304], history).startswith("the training loss sits at")
