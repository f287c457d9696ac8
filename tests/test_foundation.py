"""The shared mechanics: emission, strictness, isolation, state, the run report, configuration."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from support import sanity_warnings
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity import SanityCallback, SanityError, SanityReport, Severity
from lightning_sanity.defaults import DEFAULT_CALLBACKS
from lightning_sanity.demos import Classifier, mlp, wine_tensors


class EveryBatch(SanityCallback):
    """A test callback that records the same two findings on every training batch."""

    name = "every_batch"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.record(trainer, "test.repeated", Severity.WARNING, "seen again", "none", subject="layer.a")
        self.record(trainer, "test.repeated", Severity.WARNING, "seen again", "none", subject="layer.b")


class FailsOnce(SanityCallback):
    name = "fails"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        raise RuntimeError("boom")


class ErrorAtStart(SanityCallback):
    name = "error_at_start"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record(trainer, "test.fatal", Severity.ERROR, "bad", "fix it", stage="setup")


def wine_loaders(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    train, val = TensorDataset(*wine_tensors("train")), TensorDataset(*wine_tensors("val"))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def wine_model() -> Classifier:
    return Classifier(mlp(13, 3), lr=1e-2)


def test_first_occurrence_warns_once_per_code_and_subject(make_trainer: Any) -> None:
    callback = EveryBatch()
    trainer = make_trainer(callbacks=[callback], max_epochs=2)
    with sanity_warnings() as texts:
        trainer.fit(wine_model(), *wine_loaders())
    assert len(texts) == 2
    assert all("test.repeated" in text for text in texts)
    batches = trainer.global_step
    assert [f.count for f in callback.findings] == [batches, batches]
    assert {f.subject for f in callback.findings} == {"layer.a", "layer.b"}


class ResolvesAtEpochEnd(SanityCallback):
    """Resolves every ``test.repeated`` finding of the run at the end of the first training epoch."""

    name = "resolves"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.resolved = ls.base.resolve_findings(trainer, "test.repeated", trainer.current_epoch)


def test_one_callback_resolves_another_callbacks_standing_findings(make_trainer: Any) -> None:
    watcher, resolver = EveryBatch(), ResolvesAtEpochEnd()
    trainer = make_trainer(callbacks=[watcher, resolver], max_epochs=1)
    trainer.fit(wine_model(), *wine_loaders())
    assert sorted(f.subject for f in resolver.resolved) == ["layer.a", "layer.b"]
    assert [f.resolved_epoch for f in watcher.findings] == [0, 0] and not any(f.standing for f in watcher.findings)
    assert not watcher.resolve("test.repeated", "layer.a", 1)  # resolved once: the first epoch stays
    assert not watcher.resolve("test.other", "layer.a", 1)


def test_standard_warning_filters_apply(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[EveryBatch()], max_steps=2)
    with warnings.catch_warnings(), pytest.raises(ls.SanityWarning, match="test.repeated"):
        warnings.simplefilter("error", ls.SanityWarning)
        trainer.fit(wine_model(), *wine_loaders())


def test_strict_raises_sanity_error_with_the_finding(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[ErrorAtStart(strict=True)])
    with pytest.raises(SanityError) as raised:
        trainer.fit(wine_model(), *wine_loaders())
    assert raised.value.finding.code == "test.fatal"
    assert raised.value.finding.severity is Severity.ERROR


def test_not_strict_records_error_and_finishes(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[ErrorAtStart()])
    with sanity_warnings():
        trainer.fit(wine_model(), *wine_loaders())
    assert trainer.state.finished
    assert [f.code for f in ls.collect_findings(trainer)] == ["test.fatal"]


def test_internal_error_is_one_warning_shown_once_and_fit_completes(make_trainer: Any) -> None:
    callback = FailsOnce()
    trainer = make_trainer(callbacks=[callback], max_epochs=2)
    with sanity_warnings() as texts:
        trainer.fit(wine_model(), *wine_loaders())
    assert trainer.current_epoch == 2
    assert len(texts) == 1 and "sanity.internal_error" in texts[0] and "boom" in texts[0]
    [finding] = callback.findings
    assert finding.code == "sanity.internal_error"
    assert finding.severity is Severity.WARNING
    assert finding.count == trainer.global_step
    assert "boom" in finding.evidence["error"]


def test_strict_raises_an_internal_error(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[FailsOnce(strict=True)])
    with sanity_warnings(), pytest.raises(SanityError, match="sanity.internal_error.*boom") as raised:
        trainer.fit(wine_model(), *wine_loaders())
    assert raised.value.finding.code == "sanity.internal_error"
    assert isinstance(raised.value.__context__, RuntimeError)


def test_collect_findings_gathers_every_callback_most_severe_first(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[FailsOnce(), ErrorAtStart(), EveryBatch()], max_steps=2)
    with sanity_warnings():
        trainer.fit(wine_model(), *wine_loaders())
    findings = ls.collect_findings(trainer)
    assert [f.code for f in findings][0] == "test.fatal"
    assert {f.code for f in findings} == {"test.fatal", "test.repeated", "sanity.internal_error"}
    assert [f.severity for f in findings] == sorted((f.severity for f in findings), reverse=True)


def test_report_printed_once_per_run_with_several_callbacks(make_trainer: Any, capsys: Any) -> None:
    trainer = make_trainer(callbacks=[EveryBatch(), ErrorAtStart(), *ls.default_callbacks()], max_steps=2)
    with sanity_warnings():
        trainer.fit(wine_model(), *wine_loaders())
        assert capsys.readouterr().out.count("lightning-sanity report (fit)") == 1
        trainer.validate(wine_model(), wine_loaders()[1])
    assert capsys.readouterr().out.count("lightning-sanity report (validate)") == 1


def test_json_report_written_next_to_logs_and_round_trips(make_trainer: Any, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run")
    trainer = make_trainer(callbacks=[EveryBatch(), FailsOnce()], max_steps=3, logger=logger)
    with sanity_warnings():
        trainer.fit(wine_model(), *wine_loaders())
    path = Path(logger.log_dir) / "sanity_report_fit.json"
    data = json.loads(path.read_text())
    assert data["schema"] == "lightning-sanity/report" and data["version"] == 2
    assert data["run"] == "fit" and data["status"] == "finished" and data["exception"] is None
    assert data["summary"] == {"error": 0, "warning": 3, "info": 0}
    report = SanityReport.from_json(path.read_text())
    assert report.findings == ls.collect_findings(trainer)
    assert SanityReport.from_json(report.to_json()) == report
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert "sanity/warnings" in metrics[0] and "sanity/errors" in metrics[0]


def test_markdown_report_lists_findings() -> None:
    finding = ls.Finding("x.y", Severity.ERROR, "msg | with pipe", "hint", "Cb", "train", 0, 3, evidence={"a": 1})
    text = SanityReport([finding], [("Matrix", "1 2\n3 4")]).to_markdown()
    assert "| error | `x.y` |" in text
    assert "msg \\| with pipe" in text
    assert "## Matrix" in text


def test_checkpoint_resume_keeps_findings_without_duplicates(make_trainer: Any, tmp_path: Path) -> None:
    first = EveryBatch()
    trainer = make_trainer(callbacks=[first], max_epochs=1, enable_checkpointing=True)
    with sanity_warnings():
        trainer.fit(wine_model(), *wine_loaders())
    checkpoint = trainer.checkpoint_callback.best_model_path
    steps_first = trainer.global_step

    resumed = EveryBatch()
    trainer = make_trainer(callbacks=[resumed], max_epochs=2)
    with sanity_warnings() as texts:
        trainer.fit(wine_model(), *wine_loaders(), ckpt_path=checkpoint)
    assert texts == []
    assert [(f.subject, f.count) for f in resumed.findings] == [
        ("layer.a", trainer.global_step),
        ("layer.b", trainer.global_step),
    ]
    assert trainer.global_step == 2 * steps_first


def test_findings_are_json_serialisable_with_tensor_evidence(make_trainer: Any) -> None:
    class TensorEvidence(SanityCallback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            evidence = {"t": torch.tensor([1.0, float("nan")]), "s": torch.tensor(2), "inf": float("inf")}
            self.record(trainer, "test.evidence", Severity.INFO, "m", "h", evidence=evidence)

    callback = TensorEvidence()
    make_trainer(callbacks=[callback], max_steps=1).fit(wine_model(), *wine_loaders())
    assert callback.findings[0].evidence == {"t": [1.0, "nan"], "s": 2, "inf": "inf"}
    json.dumps(callback.findings[0].to_dict(), allow_nan=False)


def test_severity_is_ordered_and_parses() -> None:
    assert Severity.INFO < Severity.WARNING < Severity.ERROR
    assert Severity.parse("error") is Severity.ERROR
    with pytest.raises(ValueError, match="unknown severity"):
        Severity.parse("fatal")


def test_public_api_is_constructible_without_arguments() -> None:
    for cls in (
        ls.BatchStatsCallback,
        ls.TransformParityCallback,
        ls.GradientFlowCallback,
        ls.ConfusionCallback,
        ls.RegressionCallback,
        ls.MultiLabelCallback,
        ls.ModeGuardCallback,
        ls.ModelChecksCallback,
    ):
        assert cls().findings == []
    assert [type(cb) for cb in ls.default_callbacks()] == [
        ls.TransformParityCallback,
        ls.BatchStatsCallback,
        ls.GradientFlowCallback,
        ls.ConfusionCallback,
        ls.RegressionCallback,
        ls.MultiLabelCallback,
        ls.ModeGuardCallback,
        ls.ModelChecksCallback,
    ]
    assert issubclass(ls.SanityWarning, UserWarning)


def test_default_callbacks_overrides() -> None:
    callbacks = ls.default_callbacks(strict=True, mode_guard=False)
    assert len(callbacks) == len(DEFAULT_CALLBACKS) - 1
    assert all(cb.strict for cb in callbacks)
    with pytest.raises(ValueError, match="unknown option"):
        ls.default_callbacks(colour="red")
    with pytest.raises(ValueError, match="confusion must be a dict"):
        ls.default_callbacks(confusion=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"strict": "yes"}, "strict must be a bool"), ({"batch_adapter": 3}, "batch_adapter must be None or a callable")],
)
def test_bad_shared_configuration_fails_fast(kwargs: dict[str, Any], match: str) -> None:
    for cls in DEFAULT_CALLBACKS:
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


class DictBatches(torch.utils.data.Dataset):
    """Items under keys no callback knows: only a batch_adapter can read them."""

    def __init__(self) -> None:
        self.x, self.y = wine_tensors("train")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"measurements": self.x[index], "cultivar": self.y[index]}


class DictClassifier(Classifier):
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return super().training_step((batch["measurements"], batch["cultivar"]), batch_idx)


def test_unreadable_batches_are_skipped_with_one_info(make_trainer: Any) -> None:
    callback = ls.BatchStatsCallback()
    trainer = make_trainer(callbacks=[callback], max_epochs=2)
    with sanity_warnings() as texts:
        trainer.fit(DictClassifier(mlp(13, 3)), DataLoader(DictBatches(), batch_size=16))
    assert texts == []
    [skipped] = [f for f in callback.findings if f.code == "sanity.skipped"]
    assert skipped.severity is Severity.INFO and skipped.count > 1
    assert "batch_adapter" in skipped.hint


def test_batch_adapter_makes_unknown_batches_readable(make_trainer: Any) -> None:
    callback = ls.BatchStatsCallback(batch_adapter=lambda batch: (batch["measurements"], batch["cultivar"]))
    trainer = make_trainer(callbacks=[callback])
    trainer.fit(DictClassifier(mlp(13, 3)), DataLoader(DictBatches(), batch_size=16))
    assert "sanity.skipped" not in {f.code for f in callback.findings}


class FunctionalLogits(Classifier):
    """Computes validation logits without calling any module: nothing for a forward hook to capture."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = F.linear(x, self.net.weight, self.net.bias)
        self.log("val_loss", F.cross_entropy(logits, y))


def test_predictions_recomputed_only_as_last_resort_with_one_info(make_trainer: Any) -> None:
    callback = ls.ConfusionCallback()
    trainer = make_trainer(callbacks=[callback])
    trainer.fit(FunctionalLogits(nn.Linear(13, 3)), *wine_loaders())
    [recomputed] = [f for f in callback.findings if f.code == "sanity.recomputed"]
    assert recomputed.severity is Severity.INFO and recomputed.count == 1
    assert callback.confusion_matrix is not None and int(callback.confusion_matrix.sum()) == len(wine_tensors("val")[1])


def test_module_forward_is_captured_even_next_to_extra_forwards_of_other_callbacks(make_trainer: Any) -> None:
    """ModeGuard's stochastic check runs extra forwards on a few samples; the pack must still find `self(x)`."""
    trainer = make_trainer(callbacks=[ls.ConfusionCallback(), ls.ModeGuardCallback()])
    trainer.fit(wine_model(), *wine_loaders())
    assert "sanity.recomputed" not in {f.code for f in ls.collect_findings(trainer)}
