"""The compatibility boundary: each private Lightning/torch API we rely on still behaves as we use it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import compat
from lightning_sanity.demos import Classifier, mlp, wine_tensors

PACKAGE = Path(compat.__file__).parent
PRIVATE_USE = re.compile(
    r"\b(?:torch|nn|trainer|strategy|pl_module|module|loop)\.(_[a-z]\w*)"
    r"|_compiler_ctx|\b_results\b|epoch_progress|fit_loop|from torch\.nn\.modules|torch\._|(?<!self)(?<!cls)\._[A-Z]\w*"
)


def test_no_private_api_outside_the_compat_module() -> None:
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "compat.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_USE.search(line)
    ]
    assert offenders == []


def test_torch_private_base_classes_cover_the_layers_we_classify() -> None:
    norms = [nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.InstanceNorm2d(3, track_running_stats=True), nn.SyncBatchNorm(3)]
    assert all(isinstance(m, compat.NORM_WITH_RUNNING_STATS) for m in norms)
    assert all(isinstance(m, compat.BATCH_NORM) for m in norms if not isinstance(m, nn.InstanceNorm2d))
    assert not isinstance(nn.InstanceNorm2d(3, track_running_stats=True), compat.BATCH_NORM)
    assert all(hasattr(m, "running_mean") for m in norms)
    dropouts = [
        nn.Dropout(),
        nn.Dropout1d(),
        nn.Dropout2d(),
        nn.Dropout3d(),
        nn.AlphaDropout(),
        nn.FeatureAlphaDropout(),
    ]
    assert all(isinstance(m, compat.DROPOUT) for m in dropouts)
    assert not isinstance(nn.LayerNorm(3), compat.NORM_WITH_RUNNING_STATS + compat.DROPOUT)
    assert all(isinstance(m, compat.LOSS) for m in (nn.CrossEntropyLoss(), nn.MSELoss(), nn.BCEWithLogitsLoss()))
    assert not isinstance(nn.Linear(2, 2), compat.LOSS)


def test_module_slots_are_what_attribute_access_resolves_through() -> None:
    module = nn.BatchNorm1d(3)
    module.head = nn.Linear(3, 2)
    parameters, buffers, children = compat.module_slots(module)
    assert parameters["weight"] is module.weight and buffers["running_mean"] is module.running_mean
    assert children["head"] is module.head
    swapped = nn.Parameter(torch.zeros(3))
    parameters["weight"] = swapped
    assert module.weight is swapped


def test_foreach_kernels_match_their_per_tensor_definition() -> None:
    tensors = [torch.randn(3, 4), torch.randn(5)]
    for ord in (1, 2, math.inf):
        expected = [t.norm(ord) for t in tensors]
        assert all(torch.allclose(a, b) for a, b in zip(compat.foreach_norm(tensors, ord), expected, strict=True))
    assert compat.foreach_norm(tensors, 2, dtype=torch.float32)[0].dtype == torch.float32
    differences = compat.foreach_sub(tensors, [2 * t for t in tensors])
    assert all(torch.equal(d, -t) for d, t in zip(differences, tensors, strict=True))


class LogsAccuracy(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())


class ReadsInternals(pl.Callback):
    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.completed: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.completed.append(compat.completed_epochs(trainer))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        results = compat.logged_results(trainer)
        assert results is not None
        for result in results.values():
            meta = result.meta
            self.results[str(meta.name)] = {
                "fx": str(meta.fx),
                "on_epoch": meta.on_epoch,
                "mean": meta.is_mean_reduction,
                "loader": meta.dataloader_idx,
                "add_loader": meta.add_dataloader_idx,
                "is_tensor": result.is_tensor,
                "value": result.value,
            }


def test_lightning_logged_results_and_loop_progress(make_trainer: Any) -> None:
    spy = ReadsInternals()
    data = TensorDataset(*wine_tensors("val"))
    trainer = make_trainer(callbacks=[spy], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(LogsAccuracy(mlp(13, 3)), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    assert spy.completed == [0, 1] and compat.completed_epochs(trainer) == 2
    accuracy = spy.results["val_acc"]
    assert accuracy["fx"] == "validation_step" and accuracy["on_epoch"] is True and accuracy["mean"] is True
    assert accuracy["is_tensor"] is True and isinstance(accuracy["value"], Tensor)
    assert accuracy["add_loader"] is True and accuracy["loader"] in (None, 0)


def test_lightning_marks_compiled_modules() -> None:
    from lightning.pytorch.utilities.compile import from_compiled

    model = Classifier(nn.Linear(13, 3))
    assert not compat.is_compiled(model)
    assert compat.is_compiled(from_compiled(torch.compile(Classifier(nn.Linear(13, 3)))))
    model.net = torch.compile(model.net)  # type: ignore[assignment]
    assert compat.is_compiled(model)
