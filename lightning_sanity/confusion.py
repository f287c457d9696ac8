"""Evaluation logic: a correctly accumulated confusion matrix, and what it reveals."""

from __future__ import annotations

from typing import ClassVar

from lightning_sanity.base import SanityCallback


class ConfusionCallback(SanityCallback):
    """Evaluation logic: a correctly accumulated confusion matrix, and what it reveals."""

    name: ClassVar[str] = "confusion"
