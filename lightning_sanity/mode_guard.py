"""Train/eval mode discipline around validation."""

from __future__ import annotations

from typing import ClassVar

from lightning_sanity.base import SanityCallback


class ModeGuardCallback(SanityCallback):
    """Train/eval mode discipline around validation."""

    name: ClassVar[str] = "mode_guard"
