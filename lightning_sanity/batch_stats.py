"""What enters the model: per-split input statistics and target distribution."""

from __future__ import annotations

from typing import ClassVar

from lightning_sanity.base import SanityCallback


class BatchStatsCallback(SanityCallback):
    """What enters the model: per-split input statistics and target distribution."""

    name: ClassVar[str] = "batch_stats"
