"""Issue 16: silent bugs from public bug reports, each with its healthy twin, and two false alarms.

Every test runs a real ``Trainer.fit`` on scikit-learn data with the pack's callbacks attached.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from support import codes, problems, sanity_warnings
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import Finding, Severity, TransformParityCallback, collect_findings
from lightning_sanity.demos import Classifier, mlp, wine_tensors


def findings_of(trainer: pl.Trainer, code: str) -> list[Finding]:
    return [f for f in collect_findings(trainer) if f.code == code]


# ---------------------------------------------------------------- 7: trainer.test on the training loader


def test_testing_on_the_training_loader_on_purpose_is_info_not_overlap(make_trainer: Any) -> None:
    """The linear-probe tutorial: training accuracy reported next to test accuracy, on the very train loader."""
    pl.seed_everything(0, verbose=False)
    train_loader = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    test_loader = DataLoader(TensorDataset(*wine_tensors("val")), batch_size=16)
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=2)
    with sanity_warnings() as warned:
        trainer.fit(Classifier(mlp(13, 3)), train_loader)
        trainer.test(trainer.lightning_module, dataloaders=train_loader)
        trainer.test(trainer.lightning_module, test_loader)
    assert problems(trainer) == [] and warned == []
    [info] = findings_of(trainer, "data.eval_on_train")
    assert info.severity is Severity.INFO and info.stage == "test"
    assert "training-set metrics" in info.message and info.subject == "train|test"


def test_a_test_set_rebuilt_from_the_training_data_is_still_an_overlap_error(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    train_loader = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    rebuilt = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16)  # "test" set = training data
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=1)
    with sanity_warnings():
        trainer.fit(Classifier(mlp(13, 3)), train_loader)
        trainer.test(trainer.lightning_module, dataloaders=rebuilt)
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert overlap.severity is Severity.ERROR and overlap.evidence["how"] == "identical raw samples"
    assert "data.eval_on_train" not in codes(trainer)


def test_validating_during_fit_on_a_new_loader_of_the_training_dataset_stays_an_error(make_trainer: Any) -> None:
    """A val_dataloader built on the training dataset object is the copy-paste bug, not a deliberate probe."""
    pl.seed_everything(0, verbose=False)
    train_set = TensorDataset(*wine_tensors("train"))
    trainer = make_trainer(callbacks=[TransformParityCallback()], max_epochs=1)
    with sanity_warnings():
        trainer.fit(Classifier(mlp(13, 3)), DataLoader(train_set, batch_size=16), DataLoader(train_set, batch_size=32))
    assert findings_of(trainer, "data.split_overlap")[0].severity is Severity.ERROR
