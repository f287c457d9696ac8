"""Lightning callbacks that catch the bugs which silently ruin training runs.

Example::

    import lightning.pytorch as pl
    import lightning_sanity

    trainer = pl.Trainer(callbacks=lightning_sanity.default_callbacks())
    trainer.fit(model, datamodule)
    for finding in lightning_sanity.collect_findings(trainer):
        print(finding)
"""

from lightning_sanity.base import SanityCallback, collect_findings
from lightning_sanity.batch_stats import BatchStatsCallback
from lightning_sanity.confusion import ConfusionCallback
from lightning_sanity.defaults import default_callbacks
from lightning_sanity.findings import Finding, SanityError, SanityWarning, Severity
from lightning_sanity.gradient_flow import GradientFlowCallback
from lightning_sanity.mode_guard import ModeGuardCallback
from lightning_sanity.model_checks import ModelChecksCallback
from lightning_sanity.multilabel import MultiLabelCallback
from lightning_sanity.regression import RegressionCallback
from lightning_sanity.report import SanityReport
from lightning_sanity.run import last_report
from lightning_sanity.transform_parity import TransformParityCallback

__version__ = "0.1.0.dev0"

__all__ = [
    "BatchStatsCallback",
    "ConfusionCallback",
    "Finding",
    "GradientFlowCallback",
    "ModeGuardCallback",
    "ModelChecksCallback",
    "MultiLabelCallback",
    "RegressionCallback",
    "SanityCallback",
    "SanityError",
    "SanityReport",
    "SanityWarning",
    "Severity",
    "TransformParityCallback",
    "collect_findings",
    "default_callbacks",
    "last_report",
]
