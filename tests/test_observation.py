"""Our own forward passes reuse what the user's step passed to the model (issue 14, item 6).

Real fits of LightningModules whose step does not feed the raw batch to ``forward``: an autoencoder that flattens the
images inside the step, a LightningModule without ``forward`` that calls ``self.model(x)``, and a tiny transformer
language model (``lightning.pytorch.demos.Transformer``) called as ``self.model(inputs, target)``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import Transformer
from support import codes, problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity import ConfusionCallback, ModeGuardCallback, Severity
from lightning_sanity.demos import digits_tensors, mlp, wine_tensors
from lightning_sanity.observe import ForwardCall, StepObserver
from lightning_sanity.outputs import reconstructs_input


def digit_images(split: str, batch_size: int = 32) -> DataLoader:
    """The 8x8 digits as ``[N, 1, 8, 8]`` images with their labels, the way an image dataset yields them."""
    x, y = digits_tensors(split)  # type: ignore[arg-type]
    return DataLoader(TensorDataset(x.view(-1, 1, 8, 8), y), batch_size=batch_size, shuffle=split == "train")


def internal_errors(trainer: pl.Trainer) -> list[str]:
    return [f"{f.callback}: {f.message}" for f in ls.collect_findings(trainer) if f.code == "sanity.internal_error"]


def skipped_by(trainer: pl.Trainer, callback: str) -> list[str]:
    return [f.message for f in ls.collect_findings(trainer) if f.code == "sanity.skipped" and f.callback == callback]


# ------------------------------------------------------------ (a) the step reshapes the batch before forward
class FlatteningAutoencoder(pl.LightningModule):
    """Lightning's autoencoder example in small: ``forward`` takes flat rows, the steps flatten the images."""

    def __init__(self, dropout_in_eval: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 8))
        self.decoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64))
        self.dropout_in_eval = dropout_in_eval

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        if self.dropout_in_eval:
            z = F.dropout(z, 0.3, training=True)  # the bug: dropout that ignores the mode
        return self.decoder(z)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = batch
        x = x.view(x.size(0), -1)
        return F.mse_loss(self(x), x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("dropout_in_eval", [False, True], ids=["healthy", "dropout_in_eval"])
def test_a_step_that_reshapes_the_batch_runs_every_check(make_trainer: Any, dropout_in_eval: bool) -> None:
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=4)
    trainer.fit(FlatteningAutoencoder(dropout_in_eval), digit_images("train"), digit_images("val"))
    assert internal_errors(trainer) == []
    assert skipped_by(trainer, "ModeGuardCallback") == []  # the stochastic check replayed self(x.view(N, -1))
    # the MSE loss reads no batch tensor as it comes: no accuracy is judged on 64 "classes" against the labels
    [unpaired] = [f for f in ls.collect_findings(trainer) if f.code == "sanity.skipped" and f.subject == "pairing"]
    assert unpaired.callback == "ConfusionCallback" and unpaired.severity is Severity.INFO
    assert not [f for f in ls.collect_findings(trainer) if f.code.startswith("eval.")]
    found = [f for f in ls.collect_findings(trainer) if f.code == "mode.stochastic_eval"]
    if dropout_in_eval:
        [stochastic] = found
        assert stochastic.severity is Severity.ERROR
        assert stochastic.evidence["samples"] == ModeGuardCallback().stochastic_samples
    else:
        assert found == [] and problems(trainer) == []


def test_a_reconstruction_is_told_from_class_scores() -> None:
    x = torch.randn(8, 3)
    call = ForwardCall(nn.Identity(), "", (x,), {}, output=x, returned=True)
    assert reconstructs_input(x, call, torch.zeros(8, dtype=torch.long))  # one class used, 3 columns: autoencoder
    # a tabular classifier with as many features as classes: its targets span the columns
    assert not reconstructs_input(x, call, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert not reconstructs_input(torch.randn(8, 5), call, torch.zeros(8, dtype=torch.long))  # shaped otherwise


def test_validate_of_a_reshaping_step_catches_dropout_left_active(make_trainer: Any) -> None:
    trainer = make_trainer(callbacks=[ModeGuardCallback(), ConfusionCallback()])
    trainer.validate(FlatteningAutoencoder(dropout_in_eval=True), digit_images("val"))
    assert internal_errors(trainer) == []
    assert "mode.stochastic_eval" in codes(trainer, Severity.ERROR)


def test_replaying_the_step_call_leaves_the_weights_bit_identical(make_trainer: Any) -> None:
    """The replays run in a forked RNG: here they draw dropout masks, yet training's masks and weights do not move."""

    def fit_weights(callbacks: list[pl.Callback]) -> dict[str, Tensor]:
        pl.seed_everything(7, verbose=False)
        model = FlatteningAutoencoder(dropout_in_eval=True)
        # no sanity check (Lightning isolates its RNG): the check runs between the two training epochs
        trainer = make_trainer(
            callbacks=callbacks, max_epochs=2, limit_train_batches=6, limit_val_batches=3, num_sanity_val_steps=0
        )
        trainer.fit(model, digit_images("train"), digit_images("val"))
        return {key: value.clone() for key, value in model.state_dict().items()}

    without = fit_weights([])
    observed = fit_weights(ls.default_callbacks())
    assert [key for key in without if not torch.equal(without[key], observed[key])] == []


# ------------------------------------------------------------ (b) a LightningModule without forward
class ModelAttribute(pl.LightningModule):
    """Holds its network in ``self.model`` and has no ``forward``: the steps call ``self.model(x)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class AlwaysDropout(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, 0.5, training=True)


def test_a_module_without_forward_gets_its_confusion_matrix_and_every_check(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    x, y = wine_tensors("val")
    train = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    confusion = ConfusionCallback()
    trainer = make_trainer(callbacks=[*ls.default_callbacks(confusion=False), confusion], max_epochs=3)
    trainer.fit(ModelAttribute(mlp(13, 3)), train, DataLoader(TensorDataset(x, y), batch_size=16))
    assert internal_errors(trainer) == []
    assert skipped_by(trainer, "ModeGuardCallback") == [] and skipped_by(trainer, "ConfusionCallback") == []
    assert "sanity.recomputed" not in codes(trainer)
    assert confusion.confusion_matrix is not None
    assert torch.equal(confusion.confusion_matrix.sum(dim=1), torch.bincount(y, minlength=3))
    assert confusion.summaries["val"].accuracy > 0.8  # really the model's predictions


def test_dropout_left_active_in_a_child_called_by_a_module_without_forward_is_caught(make_trainer: Any) -> None:
    x, y = digits_tensors("val")
    model = ModelAttribute(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), AlwaysDropout(), nn.Linear(32, 10)))
    trainer = make_trainer(callbacks=[ModeGuardCallback()])
    trainer.validate(model, DataLoader(TensorDataset(x, y), batch_size=32))
    [stochastic] = [f for f in ls.collect_findings(trainer) if f.code == "mode.stochastic_eval"]
    assert stochastic.evidence["module"] == "model"
    assert [source["module"] for source in stochastic.evidence["sources"]] == ["model.2"]


class FunctionalOnly(ModelAttribute):
    """The validation step calls no module at all: there is no forward call to replay, and no forward to run."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        first, head = self.model[0], self.model[-1]
        logits = F.linear(F.relu(F.linear(x, first.weight, first.bias)), head.weight, head.bias)
        self.log("val_acc", (logits.argmax(1) == y).float().mean())


def test_no_call_to_replay_is_said_once_not_an_internal_error(make_trainer: Any) -> None:
    x, y = wine_tensors("val")
    trainer = make_trainer(callbacks=[ModeGuardCallback(), ConfusionCallback()])
    trainer.validate(FunctionalOnly(mlp(13, 3)), DataLoader(TensorDataset(x, y), batch_size=16))
    assert internal_errors(trainer) == []
    skips = [f for f in ls.collect_findings(trainer) if f.code == "sanity.skipped"]
    assert {f.callback for f in skips} == {"ModeGuardCallback", "ConfusionCallback"}
    assert all(f.severity is Severity.INFO and f.count == 1 for f in skips)


# ------------------------------------------------------------ (c) Lightning's transformer language model
class TinyLanguageModel(pl.LightningModule):
    """Lightning's transformer LM example without ``forward``: the steps call ``self.model(inputs, target)``."""

    def __init__(self, vocab_size: int = 40) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size, ninp=16, nhead=2, nhid=32, nlayers=1, dropout=0.2)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self.model(inputs, target), target.view(-1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)


def random_tokens(sequences: int, vocab_size: int = 40, length: int = 12) -> DataLoader:
    tokens = torch.randint(0, vocab_size, (sequences, length + 1), generator=torch.Generator().manual_seed(sequences))
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)


def test_a_transformer_language_model_without_forward_runs_every_check(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=1)
    trainer.fit(TinyLanguageModel(), random_tokens(64), random_tokens(32))
    assert internal_errors(trainer) == []
    assert skipped_by(trainer, "ModeGuardCallback") == []  # replayed self.model(inputs[:4], target[:4])
    assert "mode.stochastic_eval" not in codes(trainer)
    # the loss reads the targets flattened to [96]: the pairing is not confirmed, so no accuracy is judged, said once
    [unpaired] = [f for f in ls.collect_findings(trainer) if f.code == "sanity.skipped" and f.subject == "pairing"]
    assert unpaired.callback == "ConfusionCallback" and unpaired.count == 1
    assert not [f for f in ls.collect_findings(trainer) if f.code.startswith("eval.")]


# ------------------------------------------------------------ the observation layer itself
class ScoresInADict(pl.LightningModule):
    """``forward`` returns a dict under keys the callback does not read: the head's output is found instead."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        return {"features": features, "class_scores": self.head(features)}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x)["class_scores"], y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x)["class_scores"], y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_the_head_called_inside_forward_gives_the_predictions(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    x, y = wine_tensors("val")
    train = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    confusion = ConfusionCallback()
    trainer = make_trainer(callbacks=[confusion], max_epochs=2)
    trainer.fit(ScoresInADict(), train, DataLoader(TensorDataset(x, y), batch_size=16))
    assert codes(trainer) == set()  # neither recomputed nor skipped
    assert confusion.confusion_matrix is not None and confusion.confusion_matrix.shape == (3, 3)
    assert torch.equal(confusion.confusion_matrix.sum(dim=1), torch.bincount(y, minlength=3))


def test_the_observer_records_the_step_call_not_our_own_replay() -> None:
    module = ModelAttribute(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)))
    x, mask = torch.randn(8, 6), torch.ones(3)
    with StepObserver(module, keep_child_outputs=True) as observer:
        module.model(x)
    [call] = observer.calls
    assert call.name == "model" and call.returned and call.args[0] is not x and torch.equal(call.args[0], x)
    with StepObserver(module) as replay_observer:
        call.run()
    assert replay_observer.calls == []  # our own pass is not recorded
    call.args = (x, mask)
    args, _ = call.head(3)
    assert args[0].shape == (3, 6) and args[1] is mask  # only tensors with the batch's dim 0 are cut
    with StepObserver(module, copy_args=False) as observer:
        module.model(x)
    assert observer.calls[0].args[0].data_ptr() == x.data_ptr()  # a view: no copy per step


# ------------------------------------------------------------ one name per dataloader, whichever callback speaks
class TwoValLoaders(ls.demos.Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def test_every_callback_names_the_second_val_dataloader_the_same_way(make_trainer: Any) -> None:
    from torchvision import transforms as T

    from lightning_sanity.demos import DigitImages, SmallCNN

    normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train = DataLoader(DigitImages(T.Compose([T.ToTensor(), normalize]), "train"), batch_size=32, shuffle=True)
    healthy = DataLoader(DigitImages(T.Compose([T.ToTensor(), normalize]), "val"), batch_size=64)
    forgot_normalize = DataLoader(DigitImages(T.ToTensor(), "val"), batch_size=64)
    confusion = ConfusionCallback()
    callbacks = [c for c in ls.default_callbacks() if not isinstance(c, ConfusionCallback)] + [confusion]
    trainer = make_trainer(callbacks=callbacks, max_epochs=2, limit_train_batches=8)
    trainer.fit(TwoValLoaders(SmallCNN(10, width=4)), train, [healthy, forgot_normalize])
    named = {f.code: f.subject for f in problems(trainer) if "val/dataloader_idx_1" in f.subject}
    assert named["transform.normalize_missing"] == "train|val/dataloader_idx_1"  # TransformParity
    assert named["input.split_shift"] == "val/dataloader_idx_1"  # BatchStats
    assert set(confusion.confusion_matrices) == {"val", "val/dataloader_idx_1"}  # Confusion
    spelled = [f"{f.subject} {f.message}" for f in ls.collect_findings(trainer)]
    assert not [text for text in spelled if "val_dl" in text or "val[" in text]


def test_dataloader_collections_are_named_as_the_batch_hooks_see_them() -> None:
    from lightning_sanity.pipelines import iter_loaders

    a, b = DataLoader([1]), DataLoader([2])
    assert [label for label, _ in iter_loaders([a, b], "val")] == ["val", "val/dataloader_idx_1"]
    assert [label for label, _ in iter_loaders({"x": a, "y": b}, "test")] == ["test", "test/dataloader_idx_1"]
    assert [label for label, _ in iter_loaders({"images": a, "text": b}, "train")] == ["train/images", "train/text"]
    assert [label for label, _ in iter_loaders([a, b], "train")] == ["train/0", "train/1"]
    assert [label for label, _ in iter_loaders([a], "train")] == ["train"]
    assert list(iter_loaders(None, "val")) == []


# ------------------------------------------------------------ one hook per batch event for every evaluation split
class CountEvalBatches(ls.SanityCallback):
    """A new check in a few lines: it sees validation, test and predict batches through one guarded hook."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def on_eval_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        split: str, dataloader_idx: int,
    ) -> None:  # fmt: skip
        from lightning_sanity.observe import dataloader_label

        where = dataloader_label(split, dataloader_idx)
        self.seen.append((split, where))
        if dataloader_idx == 1:
            self.record(trainer, "myteam.second_loader", Severity.INFO, f"{where} seen", "none", subject=where)
        if split == "test":
            raise RuntimeError("a bug in this check")


def test_a_new_check_sees_every_evaluation_batch_through_one_guarded_hook(make_trainer: Any) -> None:
    callback = CountEvalBatches()
    trainer = make_trainer(callbacks=[callback], max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0)
    model = TwoValLoaders(mlp(64, 10))
    val = DataLoader(TensorDataset(*digits_tensors("val")), batch_size=200)
    trainer.fit(model, DataLoader(TensorDataset(*digits_tensors("train")), batch_size=64), [val, val])
    assert sorted(set(callback.seen)) == [("val", "val"), ("val", "val/dataloader_idx_1")]
    [own] = [f for f in ls.last_report(trainer).findings if f.code == "myteam.second_loader"]
    assert own.subject == "val/dataloader_idx_1" and own.callback == "CountEvalBatches"
    trainer.test(model, val)  # the check's own bug is reported; the run goes on
    assert ("test", "test") in callback.seen and "sanity.internal_error" in codes(trainer)
    trainer.predict(model, DataLoader(torch.randn(8, 64), batch_size=4))
    assert callback.seen[-2:] == [("predict", "predict")] * 2
