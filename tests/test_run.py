"""The run as a whole: one report per run on every exit, several instances side by side, user configuration."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from support import sanity_warnings
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity import SanityCallback, SanityError, SanityReport, Severity
from lightning_sanity.demos import Classifier, WineDataModule, mlp, wine_tensors


def loaders(standardize: bool = True, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    train = TensorDataset(*wine_tensors("train", standardize))
    val = TensorDataset(*wine_tensors("val", standardize))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def hooks_left_on(module: nn.Module) -> list[str]:
    """Every forward/backward hook still attached anywhere in ``module``."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [f"{name or '<root>'}.{kind}" for name, m in module.named_modules() for kind in kinds if getattr(m, kind)]


def report_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("sanity_report*"))


# ---------------------------------------------------------------- several instances (issue 14, bug 1)


class UnusedHead(Classifier):
    """A classifier with a layer forward never calls (``param.unused``) and softmax outputs
    (``output.activated``): both kinds of callback have something to find."""

    def __init__(self) -> None:
        super().__init__(nn.Sequential(mlp(13, 3), nn.Softmax(dim=1)), lr=1e-2)
        self.unused = nn.Linear(3, 3)


def two_of_each() -> list[pl.Callback]:
    return [
        *ls.default_callbacks(),
        ls.ConfusionCallback(num_classes=3),
        ls.GradientFlowCallback(dense_steps=5, every_n_steps=5, figure_every_n_epochs=0),
    ]


def test_second_instances_with_other_options_fit_checkpoint_and_resume(make_trainer: Any, tmp_path: Path) -> None:
    first = two_of_each()
    unique = [cb.state_key for cb in first if isinstance(cb, SanityCallback)]
    assert len(set(unique)) == len(unique)  # what Lightning checks when the Trainer is built
    trainer = make_trainer(callbacks=first, max_epochs=2, enable_checkpointing=True)
    with sanity_warnings():
        trainer.fit(UnusedHead(), *loaders())
    keys = [cb.state_key for cb in first if isinstance(cb, SanityCallback)]  # fixed by their places in the list
    assert "ConfusionCallback{'num_classes': 3}" in keys and "ConfusionCallback" in keys
    path = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert set(keys) <= set(saved)
    for callback in first:  # the second instances found what the first ones did
        if isinstance(callback, (ls.ConfusionCallback, ls.GradientFlowCallback)):
            expected = "output.activated" if isinstance(callback, ls.ConfusionCallback) else "param.unused"
            assert expected in {f.code for f in callback.findings}, callback.state_key
    checkpointed = {key: {(f["code"], f["subject"]): f["count"] for f in saved[key]["findings"]} for key in keys}
    assert checkpointed["ConfusionCallback"] and checkpointed["ConfusionCallback{'num_classes': 3}"]

    resumed = two_of_each()
    trainer = make_trainer(callbacks=list(resumed), max_epochs=3)
    with sanity_warnings() as texts:
        trainer.fit(UnusedHead(), *loaders(), ckpt_path=path)
    assert not any("output.activated" in text for text in texts)  # restored, so not announced again
    for callback in resumed:
        if isinstance(callback, SanityCallback):
            counts = {f.key: f.count for f in callback.findings}
            for key, count in checkpointed[callback.state_key].items():
                assert counts.get(key, 0) >= count, (callback.state_key, key)  # kept
                if isinstance(callback, (ls.ConfusionCallback, ls.GradientFlowCallback)):
                    assert counts[key] > count, (callback.state_key, key)  # and counted on (step-zero checks run once)


def test_a_duplicate_of_every_default_callback_fits_checkpoints_resumes_and_reads_the_originals_results(
    make_trainer: Any, tmp_path: Path
) -> None:
    """Issue 23, item 2: ``default_callbacks() + [GradientFlowCallback()]`` (for ``.layer_grad_norms`` in a notebook)
    failed when the Trainer was built (two stateful callbacks with one state key)."""

    def with_duplicates() -> list[pl.Callback]:
        return [*ls.default_callbacks(), *(type(cb)() for cb in ls.default_callbacks())]

    first = with_duplicates()
    logger = CSVLogger(tmp_path, name="dup")
    trainer = make_trainer(callbacks=list(first), max_epochs=2, enable_checkpointing=True, logger=logger)
    with sanity_warnings():
        trainer.fit(UnusedHead(), *loaders())
    count = len(first) // 2
    originals, duplicates = first[:count], first[count:]
    keys = [cb.state_key for cb in first]
    assert keys[count:] == [f"{key}#2" for key in keys[:count]]
    for original, duplicate in zip(originals, duplicates, strict=True):
        assert duplicate.duplicate_of is original
        assert [(f.code, f.subject) for f in duplicate.findings] == [("sanity.duplicate", duplicate.state_key)]
    gradient_flow, confusion = first[count + 2], first[count + 3]
    assert isinstance(gradient_flow, ls.GradientFlowCallback) and isinstance(confusion, ls.ConfusionCallback)
    assert gradient_flow.layer_grad_norms and gradient_flow.layer_grad_norms == first[2].layer_grad_norms
    assert confusion.confusion_matrix is not None and confusion.confusion_matrix is first[3].confusion_matrix
    report = SanityReport.from_json(Path(logger.log_dir, "sanity_report_fit.json").read_text())
    checks = [(f.callback, f.code, f.subject) for f in report.findings if f.code != "sanity.duplicate"]
    assert {"param.unused", "output.activated"} <= {code for _, code, _ in checks}
    assert len(checks) == len(set(checks))  # every finding once: the duplicates checked nothing
    assert len(report.sections) == 1  # one confusion matrix
    path = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert set(keys) <= set(saved)

    resumed = with_duplicates()
    trainer = make_trainer(callbacks=list(resumed), max_epochs=3)
    with sanity_warnings() as texts:
        trainer.fit(UnusedHead(), *loaders(), ckpt_path=path)
    assert [cb.state_key for cb in resumed] == keys
    assert not any("output.activated" in text for text in texts)  # restored, so not announced again
    for callback in resumed:
        assert isinstance(callback, SanityCallback)
        counts = {f.key: f.count for f in callback.findings}
        for finding in saved[callback.state_key]["findings"]:
            assert counts.get((finding["code"], finding["subject"]), 0) >= finding["count"], callback.state_key
    assert resumed[count + 2].layer_grad_norms == resumed[2].layer_grad_norms != {}


def inputs_and_targets(batch: Any) -> Any:
    return batch[0], batch[1]


def test_state_keys_name_the_options_and_number_the_same_check_by_its_place_in_the_list(make_trainer: Any) -> None:
    callbacks = [
        ls.ConfusionCallback(),
        ls.ConfusionCallback(max_classes=512),  # the default, spelt out: the same check
        ls.ConfusionCallback(compare_keys=["acc"]),
        ls.BatchStatsCallback(batch_adapter=inputs_and_targets),
        ls.BatchStatsCallback(batch_adapter=lambda batch: (batch[0], batch[1])),
        ls.BatchStatsCallback(batch_adapter=lambda batch: tuple(batch)),  # printed alike, another function
    ]
    before = [cb.state_key for cb in callbacks]
    assert len(set(before)) == len(before)  # what Lightning checks when the Trainer is built
    with sanity_warnings() as texts:
        make_trainer(callbacks=callbacks, max_steps=1).fit(Classifier(mlp(13, 3)), loaders()[0])
    assert texts == []
    lambdas = "BatchStatsCallback{'batch_adapter': 'test_run.test_state_keys_name_the_options_and_number_the_same_" \
        "check_by_its_place_in_the_list.<locals>.<lambda>'}"  # fmt: skip
    assert [cb.state_key for cb in callbacks] == [
        "ConfusionCallback",
        "ConfusionCallback#2",
        "ConfusionCallback{'compare_keys': ['acc']}",
        "BatchStatsCallback{'batch_adapter': 'test_run.inputs_and_targets'}",
        lambdas,
        f"{lambdas}#2",
    ]
    assert [cb.duplicate_of for cb in callbacks] == [None, callbacks[0], None, None, None, None]


# ---------------------------------------------------------------- every exit (issue 14, bug 2)


class RaisesInStep(Classifier):
    def __init__(self, where: str) -> None:
        super().__init__(nn.Sequential(mlp(13, 3), nn.Dropout(0.1)), lr=1e-2)
        self.where = where

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.where == "training_step" and self.global_step == 3:
            raise KeyError("user bug in training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.where == "validation_step" and self.current_epoch == 1 and batch_idx == 1:
            self(batch[0])  # the module ran (hooks fired), then the user's code fails
            raise KeyError("user bug in validation_step")
        super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("where", ["training_step", "validation_step"])
def test_exception_in_the_users_step_writes_the_report_and_removes_every_hook(
    make_trainer: Any, tmp_path: Path, where: str
) -> None:
    model = RaisesInStep(where)
    logger = CSVLogger(tmp_path, name="run")
    trainer = make_trainer(callbacks=ls.default_callbacks(), logger=logger, max_epochs=3)
    with sanity_warnings(), pytest.raises(KeyError, match="user bug"):
        trainer.fit(model, *loaders(standardize=False))
    assert hooks_left_on(model) == []
    assert report_files(tmp_path) == ["sanity_report_fit.json", "sanity_report_fit.md"]
    data = json.loads(Path(logger.log_dir, "sanity_report_fit.json").read_text())
    assert data["status"] == "interrupted" and "user bug" in data["exception"]
    assert "input.unscaled" in {f["code"] for f in data["findings"]}  # what was found before the failure
    assert "interrupted" in Path(logger.log_dir, "sanity_report_fit.md").read_text()


class TrainsInEval(Classifier):
    """Calls ``self.train()`` in ``validation_step``: ``mode.train_in_eval`` (an ERROR) during validation."""

    def __init__(self) -> None:
        super().__init__(nn.Sequential(mlp(13, 3), nn.Dropout(0.2)), lr=1e-2)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.train()
        super().validation_step(batch, batch_idx)


def test_strict_run_that_raises_writes_the_report_a_normal_run_writes_and_leaves_no_hook(
    make_trainer: Any, tmp_path: Path
) -> None:
    normal_logger, strict_logger = CSVLogger(tmp_path, name="normal"), CSVLogger(tmp_path, name="strict")
    make_trainer(callbacks=ls.default_callbacks(), logger=normal_logger, num_sanity_val_steps=0).fit(
        TrainsInEval(), *loaders()
    )
    model = TrainsInEval()
    trainer = make_trainer(callbacks=ls.default_callbacks(strict=True), logger=strict_logger, num_sanity_val_steps=0)
    with sanity_warnings(), pytest.raises(SanityError, match="mode.train_in_eval"):
        trainer.fit(model, *loaders())
    assert hooks_left_on(model) == []
    normal = SanityReport.from_json(Path(normal_logger.log_dir, "sanity_report_fit.json").read_text())
    strict = SanityReport.from_json(Path(strict_logger.log_dir, "sanity_report_fit.json").read_text())
    assert strict.status == "interrupted" and strict.exception is not None and "SanityError" in strict.exception
    assert "mode.train_in_eval" in {f.code for f in strict.findings} <= {f.code for f in normal.findings}
    assert Path(strict_logger.log_dir, "sanity_report_fit.md").exists()


def test_hooks_are_removed_after_a_normal_run(make_trainer: Any) -> None:
    model = Classifier(nn.Sequential(mlp(13, 3), nn.Dropout(0.1)))
    make_trainer(callbacks=ls.default_callbacks()).fit(model, *loaders())
    assert hooks_left_on(model) == []


# ---------------------------------------------------------------- one report per run (issue 14, bug 5)


class SeenPerLoop(SanityCallback):
    """Records one INFO finding per loop it sees, named after the loop."""

    name = "seen"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.record(trainer, "test.seen", Severity.INFO, "train batch", "none", subject="train")

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.record(trainer, "test.seen", Severity.INFO, "val batch", "none", subject="val")

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.record(trainer, "test.seen", Severity.INFO, "test batch", "none", subject="test")

    def on_predict_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.record(trainer, "test.seen", Severity.INFO, "predict batch", "none", subject="predict")


def test_fit_test_predict_on_one_trainer_leave_three_reports_each_with_its_own_findings(
    make_trainer: Any, tmp_path: Path
) -> None:
    logger = CSVLogger(tmp_path, name="runs")
    trainer = make_trainer(callbacks=[SeenPerLoop(), *ls.default_callbacks()], logger=logger, max_epochs=2)
    model = Classifier(mlp(13, 3))
    train, val = loaders()
    trainer.fit(model, train, val)
    trainer.test(model, val)
    trainer.predict(model, DataLoader(wine_tensors("val")[0], batch_size=16))
    expected = [f"sanity_report_{run}.{ext}" for run in ("fit", "predict", "test") for ext in ("json", "md")]
    assert report_files(tmp_path) == expected
    seen = {}
    for run in ("fit", "test", "predict"):
        report = SanityReport.from_json(Path(logger.log_dir, f"sanity_report_{run}.json").read_text())
        assert report.run == run and report.status == "finished"
        seen[run] = {f.subject for f in report.findings if f.code == "test.seen"}
    assert seen == {"fit": {"train", "val"}, "test": {"test"}, "predict": {"predict"}}
    assert {f.subject for f in ls.collect_findings(trainer) if f.code == "test.seen"} == {"predict"}


def test_a_second_fit_on_one_trainer_gets_its_own_file(make_trainer: Any, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="runs")
    trainer = make_trainer(callbacks=[SeenPerLoop()], logger=logger, max_epochs=1)
    trainer.fit(Classifier(mlp(13, 3)), loaders()[0])
    trainer.fit_loop.max_epochs = 2
    trainer.fit(Classifier(mlp(13, 3)), loaders()[0])
    assert {"sanity_report_fit.json", "sanity_report_fit_2.json"} <= set(report_files(tmp_path))


# ---------------------------------------------------------------- warnings point at the user's code (bug 7)


def test_sanity_warning_points_at_the_users_code_not_ours(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[ls.BatchStatsCallback()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(mlp(13, 3)), loaders(standardize=False)[0])  # this line is the one shown
    [unscaled] = [w for w in caught if issubclass(w.category, ls.SanityWarning)]
    assert "input.unscaled" in str(unscaled.message)
    assert Path(unscaled.filename) == Path(__file__)
    assert (
        "lightning_sanity"
        not in warnings.formatwarning(unscaled.message, unscaled.category, unscaled.filename, unscaled.lineno).split(
            ":"
        )[0]
    )


# ---------------------------------------------------------------- ignore / severity


class RecordsUnscaled(SanityCallback):
    """Records a catalogued code with no severity: the catalogue's default applies."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record(trainer, "input.unscaled", None, "test", "none")


def test_record_applies_the_catalogue_severity_and_the_users_override(make_trainer: Any) -> None:
    default, regraded = RecordsUnscaled(), RecordsUnscaled(severity={"input.unscaled": "error"})
    with sanity_warnings():
        make_trainer(callbacks=[default, regraded], max_steps=1).fit(Classifier(mlp(13, 3)), loaders()[0])
    assert [f.severity for f in default.findings] == [Severity.WARNING]
    assert [f.severity for f in regraded.findings] == [Severity.ERROR]


def test_default_callbacks_ignore_and_severity_reach_the_real_checks(make_trainer: Any) -> None:
    trainer = make_trainer(
        callbacks=ls.default_callbacks(ignore=["input.unscaled"], severity={"eval.chance_level": "error"}),
        max_epochs=1,
    )
    with sanity_warnings() as texts:
        trainer.fit(Classifier(mlp(13, 3)), *loaders(standardize=False))
    assert "input.unscaled" not in {f.code for f in ls.collect_findings(trainer)}
    assert not any("input.unscaled" in text for text in texts)
    confusion = next(cb for cb in trainer.callbacks if isinstance(cb, ls.ConfusionCallback))
    assert confusion.severity_overrides == {"eval.chance_level": Severity.ERROR}

    control = make_trainer(callbacks=ls.default_callbacks(), max_epochs=1)
    with sanity_warnings():
        control.fit(Classifier(mlp(13, 3)), *loaders(standardize=False))
    assert "input.unscaled" in {f.code for f in ls.collect_findings(control)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ignore": ["input.unscald"]}, "unknown finding code"),
        ({"ignore": "input.unscaled"}, "ignore must be a list"),
        ({"severity": {"eval.chance": "error"}}, "unknown finding code"),
        ({"severity": {"eval.chance_level": "fatal"}}, "unknown severity"),
    ],
)
def test_unknown_codes_and_severities_fail_fast(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ls.default_callbacks(**kwargs)
    for cls in (ls.ConfusionCallback, ls.ModeGuardCallback, ls.TransformParityCallback):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


def test_default_callbacks_accept_figure_options(tmp_path: Path) -> None:
    callbacks = ls.default_callbacks(figure_every_n_epochs=0, save_dir=str(tmp_path))
    figure_kinds = (ls.BatchStatsCallback, ls.GradientFlowCallback, ls.ConfusionCallback)
    drawing = [cb for cb in callbacks if isinstance(cb, figure_kinds)]
    assert len(drawing) == 3
    assert all(cb.figure_every_n_epochs == 0 and cb.save_dir == str(tmp_path) for cb in drawing)


CONFIG = """
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  callbacks:
    - class_path: lightning_sanity.BatchStatsCallback
      init_args:
        ignore: [input.unscaled]
        severity: {target.imbalance: warning}
    - class_path: lightning_sanity.ConfusionCallback
      init_args:
        severity: {eval.chance_level: error}
"""


class UnscaledWine(WineDataModule):
    def setup(self, stage: str) -> None:
        self.train = TensorDataset(*wine_tensors("train", standardize=False))
        self.val = TensorDataset(*wine_tensors("val", standardize=False))


class WineClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__(mlp(13, 3), lr=1e-2)


def test_ignore_and_severity_from_lightning_cli_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    cli = LightningCLI(WineClassifier, UnscaledWine, args=["fit", "--config", str(config)], save_config_callback=None)
    batch_stats, confusion = (cb for cb in cli.trainer.callbacks if isinstance(cb, SanityCallback))
    assert batch_stats.ignore == {"input.unscaled"}
    assert batch_stats.severity_overrides == {"target.imbalance": Severity.WARNING}
    assert confusion.severity_overrides == {"eval.chance_level": Severity.ERROR}
    assert "input.unscaled" not in {f.code for f in ls.collect_findings(cli.trainer)}
    config.write_text(CONFIG.replace("input.unscaled]", "input.unscald]"))
    with pytest.raises((ValueError, SystemExit)):
        LightningCLI(WineClassifier, UnscaledWine, args=["fit", "--config", str(config)], save_config_callback=None)


def test_findings_from_a_newer_version_load_ignoring_unknown_fields() -> None:
    finding = ls.Finding("x.y", Severity.WARNING, "m", "h", "Cb", "train", 1, 7, count=3, subject="s")
    data = {**finding.to_dict(), "resolved_at_epoch": 4, "something_new": [1]}
    assert ls.Finding.from_dict(data) == finding
    document = json.loads(SanityReport([finding], run="test").to_json())
    document["unknown_section"] = {}
    assert SanityReport.from_json(json.dumps(document)).findings == [finding]
