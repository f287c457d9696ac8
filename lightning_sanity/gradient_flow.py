"""Gradient and update health, per layer."""

from __future__ import annotations

from typing import ClassVar

from lightning_sanity.base import SanityCallback


class GradientFlowCallback(SanityCallback):
    """Gradient and update health, per layer."""

    name: ClassVar[str] = "gradient_flow"
