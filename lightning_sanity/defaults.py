"""The default pack of sanity callbacks."""

from __future__ import annotations

import inspect
from typing import Any

from lightning.pytorch.callbacks import Callback

from lightning_sanity.base import SanityCallback
from lightning_sanity.batch_stats import BatchStatsCallback
from lightning_sanity.confusion import ConfusionCallback
from lightning_sanity.gradient_flow import GradientFlowCallback
from lightning_sanity.mode_guard import ModeGuardCallback
from lightning_sanity.model_checks import ModelChecksCallback
from lightning_sanity.multilabel import MultiLabelCallback
from lightning_sanity.regression import RegressionCallback
from lightning_sanity.transform_parity import TransformParityCallback

DEFAULT_CALLBACKS: tuple[type[SanityCallback], ...] = (
    TransformParityCallback,
    BatchStatsCallback,
    GradientFlowCallback,
    ConfusionCallback,
    RegressionCallback,
    MultiLabelCallback,
    ModeGuardCallback,
    ModelChecksCallback,
)
_SHARED_OPTIONS = ("strict", "batch_adapter", "ignore", "severity", "figure_every_n_epochs", "save_dir")


def default_callbacks(**overrides: Any) -> list[Callback]:
    """The eight sanity callbacks with their defaults.

    The shared options ``strict``, ``batch_adapter``, ``ignore`` (finding codes to silence) and
    ``severity`` (``{code: "info" | "warning" | "error"}``) go to every callback; ``figure_every_n_epochs``
    and ``save_dir`` to every callback that draws figures. A callback's short name
    (``transform_parity``, ``batch_stats``, ``gradient_flow``, ``confusion``, ``regression``, ``multilabel``,
    ``mode_guard``, ``model_checks``) takes a
    dict of its constructor arguments (which win over shared ones), or ``False`` to leave it out.

    Example::

        trainer = Trainer(
            callbacks=default_callbacks(
                strict=True,
                ignore=["input.unscaled"],
                severity={"eval.chance_level": "error"},
                confusion={"num_classes": 10},
                mode_guard=False,
            )
        )

    Raises:
        ValueError: on an unknown keyword, finding code or severity.
    """
    by_name = {cls.name: cls for cls in DEFAULT_CALLBACKS}
    unknown = set(overrides) - set(by_name) - set(_SHARED_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)}; expected {list(_SHARED_OPTIONS)} or callback names {list(by_name)}"
        )
    shared = {key: overrides[key] for key in _SHARED_OPTIONS if key in overrides}
    callbacks: list[Callback] = []
    for name, cls in by_name.items():
        options = overrides.get(name, {})
        if options is False:
            continue
        if not isinstance(options, dict):
            raise ValueError(f"{name} must be a dict of constructor arguments or False, got {options!r}")
        accepted = inspect.signature(cls).parameters
        callbacks.append(cls(**{**{k: v for k, v in shared.items() if k in accepted}, **options}))
    return callbacks
