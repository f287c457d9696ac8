"""The preprocessing pipelines themselves, compared across splits."""

from __future__ import annotations

from typing import ClassVar

from lightning_sanity.base import SanityCallback


class TransformParityCallback(SanityCallback):
    """The preprocessing pipelines themselves, compared across splits."""

    name: ClassVar[str] = "transform_parity"
