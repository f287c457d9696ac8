"""GradientFlowCallback: each finding is triggered by a real buggy fit, and stays quiet on its healthy twin."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from support import codes, problems, sanity_warnings
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import GradientFlowCallback, SanityError, Severity, gradient_stats
from lightning_sanity import collect_findings as ls_findings
from lightning_sanity.demos import GAN, SmallCNN, wine_tensors
from lightning_sanity.gradient_stats import collapse_module_names, depth_ratio, exploding_growth, is_check_step, spread

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def digits_flat() -> TensorDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (torch.tensor(digits.data, dtype=torch.float32) / 16.0 - 0.3) / 0.4
    return TensorDataset(x, torch.tensor(digits.target))


def digits_tokens() -> TensorDataset:
    """Digits as token ids (pixel position x intensity level), 0 = blank pixel = padding."""
    data, targets = digits_flat().tensors
    levels = ((data * 0.4 + 0.3) * 4).round().long().clamp(0, 4)
    ids = torch.where(levels > 0, levels + 4 * torch.arange(64), torch.zeros_like(levels))
    return TensorDataset(ids, targets)


def wine() -> DataLoader:
    return DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)


def loader(dataset: TensorDataset, batch_size: int = 32) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def adam(lr: float = 1e-3) -> OptimizerFactory:
    return lambda net: torch.optim.Adam(net.parameters(), lr=lr)


def sgd(lr: float, momentum: float = 0.0) -> OptimizerFactory:
    return lambda net: torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)


def wine_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))


def stack(depth: int, activation: type[nn.Module], norm: type[nn.Module] | None = None, width: int = 32) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(64 if i == 0 else width, width), *([norm(width)] if norm else []), activation()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class Net(pl.LightningModule):
    """Cross-entropy on ``self.net`` with an optimizer built by ``optimizer``."""

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory | None = None, scheduler: Any = None) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = optimizer or adam()
        self.make_scheduler = scheduler

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self)
        if self.make_scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "step"},
        }


class BackboneHead(Net):
    """A backbone and a head; ``mode`` selects a bug or a healthy way of freezing the backbone."""

    def __init__(self, mode: str = "healthy") -> None:
        super().__init__(nn.Identity())
        self.mode = mode
        self.backbone = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)
        self.unused = nn.Linear(32, 32)
        if mode != "unused":
            del self.unused
        if mode == "frozen":
            self.backbone.requires_grad_(False)
        if mode == "no_grad_eval":
            self.backbone.eval()

    def forward(self, x: Tensor) -> Tensor:
        if self.mode in ("no_grad_eval", "no_grad"):
            with torch.no_grad():  # no_grad_eval: the transfer-learning recipe, a frozen feature extractor in eval mode
                features = self.backbone(x)
            return self.head(features)
        features = self.backbone(x)
        return self.head(features.detach() if self.mode == "detach" else features)


def fit(make_trainer: Any, model: pl.LightningModule, data: DataLoader, steps: int = 25, **kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    callback = kwargs.pop("callback", None) or GradientFlowCallback()
    trainer = make_trainer(callbacks=[callback], max_steps=steps, max_epochs=-1, **kwargs)
    trainer.fit(model, data)
    return trainer


def finding(trainer: pl.Trainer, code: str) -> Any:
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, GradientFlowCallback))
    return next(f for f in callback.findings if f.code == code)


# --- grad.missing -------------------------------------------------------------------------------------------------


def test_detached_backbone_reports_grad_missing_naming_the_module(make_trainer: Any) -> None:
    with sanity_warnings() as texts:
        trainer = fit(make_trainer, BackboneHead("detach"), wine())
    assert codes(trainer, Severity.WARNING) == {"grad.missing"}
    missing = finding(trainer, "grad.missing")
    assert missing.severity is Severity.ERROR
    assert missing.evidence["modules"] == ["backbone"] and missing.evidence["called_in_forward"] is True
    assert "backbone" in missing.message and "param.unused" not in codes(trainer)
    assert any("grad.missing" in text for text in texts)


class DiscardedBranch(Net):
    """An auxiliary head computed in forward whose output the loss never uses."""

    def __init__(self) -> None:
        super().__init__(wine_mlp())
        self.aux = nn.Linear(13, 3)

    def forward(self, x: Tensor) -> Tensor:
        self.aux(x)  # the bug: the auxiliary logits were meant to enter the loss
        return self.net(x)


@pytest.mark.parametrize(
    ("model", "cut"),
    [(lambda: BackboneHead("no_grad"), "backbone"), (DiscardedBranch, "aux")],
    ids=["no_grad-in-train-mode", "output-discarded"],
)
def test_modules_that_run_without_reaching_the_loss_report_grad_missing(
    make_trainer: Any, model: Callable[[], pl.LightningModule], cut: str
) -> None:
    """``torch.no_grad()`` around part of a training forward, a branch whose output the loss never uses: the modules
    run, so their missing gradient is a cut graph, not an unused layer."""
    trainer = fit(make_trainer, model(), wine())
    assert codes(trainer, Severity.WARNING) == {"grad.missing"}
    missing = finding(trainer, "grad.missing")
    assert missing.severity is Severity.ERROR
    assert missing.evidence["modules"] == [cut] and missing.evidence["called_in_forward"] is True
    assert "param.unused" not in codes(trainer)


class MainAndAux(nn.Module):
    """A model returning ``(main, aux)`` logits, as GoogLeNet/Inception do in train mode; ``drop`` discards the
    auxiliary head's output inside forward instead (returning ``main`` alone)."""

    def __init__(self, drop: bool = False) -> None:
        super().__init__()
        self.drop = drop
        self.trunk = nn.Sequential(nn.Linear(13, 32), nn.ReLU())
        self.main = nn.Linear(32, 3)
        self.aux = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> Any:
        features = self.trunk(x)
        aux = self.aux(features)
        return self.main(features) if self.drop else (self.main(features), aux)


class UsesMainOnly(Net):
    """The step classifies from the first output and leaves the auxiliary logits out of the loss."""

    def __init__(self, via_self: bool = False) -> None:
        super().__init__(MainAndAux())
        self.via_self = via_self

    def forward(self, x: Tensor) -> Any:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        main, _ = self(x) if self.via_self else self.net(x)
        return F.cross_entropy(main, y)


@pytest.mark.parametrize("via_self", [False, True], ids=["model-called-in-step", "model-called-in-forward"])
def test_an_output_returned_to_the_step_and_left_out_of_the_loss_is_param_unused_info(
    make_trainer: Any, via_self: bool
) -> None:
    """The auxiliary head runs and its output reaches the step beside the main logits: leaving it out of the loss is
    the step's choice (GoogLeNet's ``aux_logits``, a detector's auxiliary outputs), not a cut graph."""
    trainer = fit(make_trainer, UsesMainOnly(via_self), wine())
    assert problems(trainer) == [] and "grad.missing" not in codes(trainer)
    found = finding(trainer, "param.unused")
    assert found.severity is Severity.INFO and found.evidence["modules"] == ["net.aux"]
    assert found.evidence["returned_by"] == {"net.aux": "returned by `net` as `[1]`"}
    assert "returned by `net` as `[1]` but not used by the loss" in found.message


class DetachedAux(Net):
    """The twin cut in the step: the auxiliary logits are returned, and the step detaches them into the loss."""

    def __init__(self) -> None:
        super().__init__(MainAndAux(drop=True))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        features = self.net.trunk(x)
        return F.cross_entropy(self.net.main(features) + self.net.aux(features).detach(), y)


@pytest.mark.parametrize(
    ("model", "cut"),
    [
        (lambda: Net(MainAndAux(drop=True)), ["net.aux"]),  # computed in forward, never returned
        (DetachedAux, ["net.aux"]),  # the whole of what the step received from it, detached
        (lambda: BackboneHead("detach"), ["backbone"]),  # reaches the head only through .detach()
    ],
    ids=["dropped-inside-forward", "detached-in-the-step", "detached-inside-forward"],
)
def test_an_output_dropped_inside_the_computation_stays_grad_missing(
    make_trainer: Any, model: Callable[[], pl.LightningModule], cut: list[str]
) -> None:
    trainer = fit(make_trainer, model(), wine())
    assert codes(trainer, Severity.WARNING) == {"grad.missing"}
    assert finding(trainer, "grad.missing").evidence["modules"] == cut
    assert "param.unused" not in codes(trainer)


class Outputs(dict):
    """A user's output mapping whose ``items()`` raises: read inside the user's forward, where nothing may raise."""

    def items(self) -> Any:
        raise RuntimeError("lazy outputs")


def test_an_output_structure_that_cannot_be_read_is_an_internal_error_not_a_crash(make_trainer: Any) -> None:
    class Lazy(Net):
        def forward(self, x: Tensor) -> Any:
            return Outputs(logits=self.net(x))

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self(x)["logits"], y)

    trainer = fit(make_trainer, Lazy(wine_mlp()), wine())
    assert codes(trainer, Severity.WARNING) == {"sanity.internal_error"}
    internal = finding(trainer, "sanity.internal_error")
    assert "lazy outputs" in internal.message and internal.count == 1  # outputs are no longer followed after it
    assert trainer.global_step == 25


class FirstToken(Net):
    """A Hugging Face ``BertModel`` classified from the first token's hidden state by its own head: the pooler runs
    and its ``pooler_output`` is returned, unused."""

    def __init__(self, in_forward: bool) -> None:
        transformers = pytest.importorskip("transformers")
        config = transformers.BertConfig(
            vocab_size=64 * 4 + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64,
        )  # fmt: skip
        super().__init__(nn.Identity())
        self.bert = transformers.BertModel(config)
        self.head = nn.Linear(32, 10)
        self.in_forward = in_forward

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.bert(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state[:, 0])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ids, y = batch
        if self.in_forward:
            return F.cross_entropy(self(ids), y)
        return F.cross_entropy(self.head(self.bert(input_ids=ids).last_hidden_state[:, 0]), y)


@pytest.mark.parametrize("in_forward", [False, True], ids=["bert-called-in-step", "bert-called-in-forward"])
def test_hf_bert_classified_from_the_first_token_is_quiet(make_trainer: Any, in_forward: bool) -> None:
    trainer = fit(make_trainer, FirstToken(in_forward), loader(digits_tokens()))
    assert problems(trainer) == []
    found = finding(trainer, "param.unused")
    assert found.evidence["modules"] == ["bert.pooler"]
    assert found.evidence["returned_by"] == {"bert.pooler": "returned by `bert` as `pooler_output`"}


class DeepEncoder(Net):
    """A backbone built four stages deep and run ``depth`` stages deep, as segmentation libraries build encoders."""

    def __init__(self, depth: int) -> None:
        super().__init__(nn.Identity())
        self.depth = depth
        self.stages = nn.ModuleList([nn.Sequential(nn.Linear(13 if i == 0 else 32, 32), nn.ReLU()) for i in range(4)])
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages[: self.depth]:
            x = stage(x)
        return self.head(x)


@pytest.mark.parametrize(
    ("model", "unused"),
    [(lambda: BackboneHead("unused"), ["unused"]), (lambda: DeepEncoder(2), ["stages.2", "stages.3"])],
    ids=["layer-never-called", "encoder-deeper-than-used"],
)
def test_layers_forward_never_calls_are_param_unused_info_not_grad_missing(
    make_trainer: Any, model: Callable[[], pl.LightningModule], unused: list[str]
) -> None:
    trainer = fit(make_trainer, model(), wine())
    assert problems(trainer) == []
    found = finding(trainer, "param.unused")
    assert found.severity is Severity.INFO
    assert found.evidence["modules"] == unused
    assert found.evidence["checks"] == 20
    assert "grad.missing" not in codes(trainer)


def test_a_layer_used_through_its_weight_alone_is_neither_unused_nor_missing(make_trainer: Any) -> None:
    class Functional(BackboneHead):
        def forward(self, x: Tensor) -> Tensor:
            return F.linear(self.backbone(x), self.head.weight, self.head.bias)  # head never called, weight used

    trainer = fit(make_trainer, Functional(), wine())
    assert codes(trainer) == set()


def test_calls_are_recorded_only_during_the_dense_phase_and_no_hook_is_left(make_trainer: Any) -> None:
    """One global forward pre-hook and one forward hook while the dense checks run; none on the user's modules, none
    afterwards."""
    hooks = torch.nn.modules.module._global_forward_pre_hooks
    after_hooks = torch.nn.modules.module._global_forward_hooks
    before, before_after = dict(hooks), dict(after_hooks)
    per_step: list[int] = []

    class Count(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            assert len(after_hooks) - len(before_after) == len(hooks) - len(before)
            per_step.append(len(hooks) - len(before))

    model = BackboneHead("unused")
    callback = GradientFlowCallback(dense_steps=5)
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=[callback, Count()], max_steps=10, max_epochs=-1)
    trainer.fit(model, wine())
    assert per_step == [1] * 5 + [0] * 5
    assert dict(hooks) == before and dict(after_hooks) == before_after
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert finding(trainer, "param.unused").evidence["checks"] == 5


def test_recording_calls_leaves_the_weights_bit_identical(make_trainer: Any) -> None:
    weights = []
    for callbacks in ([], [GradientFlowCallback()]):
        pl.seed_everything(0, verbose=False)
        model = BackboneHead("unused")
        make_trainer(callbacks=callbacks, max_steps=25, max_epochs=-1).fit(model, wine())
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.slow
def test_smp_unet_with_a_shallow_encoder_gets_param_unused_info_only(make_trainer: Callable[..., pl.Trainer]) -> None:
    """smp builds the whole ResNet encoder and never calls ``layer3``/``layer4`` with ``encoder_depth=3``: a healthy
    program that got ``grad.missing`` ERROR (``/tmp/clients_pending.py``)."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from test_clients import Program, Segmenter, fit_quietly, shapes, tensor_loaders

    pl.seed_everything(0, verbose=False)
    net = smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(32, 16, 8))
    train, val = tensor_loaders(shapes(256, seed=1), shapes(64, seed=2), batch_size=32)
    program = Program(Segmenter(net, smp.losses.DiceLoss("multiclass")), train, val, 3, "val_loss", 0.4)
    trainers: list[pl.Trainer] = []
    fit_quietly(lambda **kwargs: trainers.append(make_trainer(**kwargs)) or trainers[-1], program)
    unused = next(f for f in ls_findings(trainers[0]) if f.code == "param.unused")
    assert unused.evidence["modules"] == ["net.encoder.layer3", "net.encoder.layer4"]
    assert set(unused.evidence["held_by"].values()) == {"segmentation_models_pytorch.encoders.resnet.ResNetEncoder"}


@pytest.mark.parametrize("mode", ["healthy", "frozen", "no_grad_eval"])
def test_healthy_and_frozen_backbones_stay_quiet(make_trainer: Any, mode: str) -> None:
    trainer = fit(make_trainer, BackboneHead(mode), wine())
    assert problems(trainer) == []


def test_strict_mode_raises_on_grad_missing(make_trainer: Any) -> None:
    with pytest.raises(SanityError, match="grad.missing"):
        fit(make_trainer, BackboneHead("detach"), wine(), callback=GradientFlowCallback(strict=True))


class TwoGroups(Net):
    """Fine-tuning: a frozen stem, a backbone at a tenth of the head's learning rate."""

    def __init__(self) -> None:
        super().__init__(stack(4, nn.ReLU, nn.LayerNorm))
        self.net[0].requires_grad_(False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = list(self.net[-1].parameters())
        backbone = [p for p in self.net[:-1].parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": backbone, "lr": 1e-4}, {"params": head, "lr": 1e-3}])


def test_frozen_stem_and_param_groups_with_different_learning_rates_stay_quiet(make_trainer: Any) -> None:
    assert problems(fit(make_trainer, TwoGroups(), loader(digits_flat()))) == []


def test_gan_with_manual_optimisation_and_two_optimizers_stays_quiet(make_trainer: Any) -> None:
    trainer = fit(make_trainer, GAN(), wine())
    assert problems(trainer) == []
    callback = trainer.callbacks[0]
    assert {s.optimizer_index for s in callback.summaries} == {0, 1}


# --- grad.vanishing -----------------------------------------------------------------------------------------------


def test_deep_sigmoid_stack_reports_vanishing_gradients(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(stack(20, nn.Sigmoid), sgd(0.1)), loader(digits_flat()))
    assert codes(trainer, Severity.WARNING) == {"grad.vanishing"}
    vanishing = finding(trainer, "grad.vanishing")
    assert vanishing.evidence["depth_ratio"] < 1e-10
    assert "net.0" in vanishing.message


@pytest.mark.parametrize(
    "net",
    [
        lambda: stack(12, nn.ReLU),
        lambda: stack(12, nn.GELU, nn.LayerNorm),
        lambda: stack(8, nn.ReLU, nn.BatchNorm1d),
    ],
    ids=["relu12", "layernorm12", "batchnorm8"],
)
def test_healthy_deep_networks_do_not_report_vanishing(make_trainer: Any, net: Callable[[], nn.Module]) -> None:
    assert problems(fit(make_trainer, Net(net()), loader(digits_flat()))) == []


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(64 * 4 + 5, 32, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids > 0).float()[..., None]
        return self.head((self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


@pytest.mark.parametrize("optimizer", [adam(1e-3), sgd(0.5)], ids=["adam", "sgd"])
def test_embedding_model_with_padding_idx_stays_quiet(make_trainer: Any, optimizer: OptimizerFactory) -> None:
    assert problems(fit(make_trainer, Net(Bag(), optimizer), loader(digits_tokens()))) == []


# --- grad.exploding, grad.non_finite, update.too_large, update.too_small ------------------------------------------


def test_learning_rate_10_with_sgd_reports_exploding_gradients(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), sgd(10.0)), wine())
    assert "grad.exploding" in codes(trainer, Severity.ERROR)
    assert finding(trainer, "grad.exploding").evidence["growth"] > 1e4


class NanLoss(Net):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return torch.sqrt(F.cross_entropy(self(x), y) - 10.0)  # sqrt of a negative number: NaN


def test_nan_loss_reports_non_finite_gradients_naming_parameters(make_trainer: Any) -> None:
    trainer = fit(make_trainer, NanLoss(wine_mlp()), wine(), steps=5)
    non_finite = finding(trainer, "grad.non_finite")
    assert non_finite.severity is Severity.ERROR
    assert non_finite.evidence["parameters"][0] == "net.0.weight"


def test_adam_with_learning_rate_1_reports_too_large_updates(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), adam(1.0)), wine())
    assert codes(trainer, Severity.WARNING) == {"update.too_large"}
    assert finding(trainer, "update.too_large").evidence["median_layer_step"] > 1.0


def test_adam_with_learning_rate_1e_7_reports_too_small_updates(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), adam(1e-7)), wine())
    assert codes(trainer, Severity.WARNING) == {"update.too_small"}
    assert finding(trainer, "update.too_small").evidence["max_layer_update_ratio"] < 1e-5


def test_a_tiny_gradient_clip_value_is_named_as_the_cause_of_too_small_updates(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), sgd(0.1)), wine(), gradient_clip_val=1e-5)
    small = finding(trainer, "update.too_small")
    assert small.evidence["gradient_clip_val"] == 1e-5 and "gradient_clip_val=1e-05" in small.message
    assert "gradient_clip_val" in small.hint and "learning rate" not in small.hint
    lr_only = finding(fit(make_trainer, Net(wine_mlp(), adam(1e-7)), wine()), "update.too_small")
    assert "gradient_clip_val" not in lr_only.message and "learning rate" in lr_only.hint


def warmup(steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / steps))


@pytest.mark.parametrize(
    ("optimizer", "trainer_options"),
    [
        (sgd(0.1), {}),
        (sgd(1e-3), {}),
        (sgd(0.01, momentum=0.9), {"gradient_clip_val": 0.5}),
        (adam(1e-2), {"accumulate_grad_batches": 4}),
        (lambda net: torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05), {"gradient_clip_val": 1.0}),
        (adam(1e-3), {"precision": "bf16-mixed"}),
    ],
    ids=["sgd", "sgd-1e-3", "sgd-momentum-clip", "adam-accumulate", "adamw-clip", "adam-bf16"],
)
def test_healthy_optimizer_setups_stay_quiet(
    make_trainer: Any, optimizer: OptimizerFactory, trainer_options: Any
) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), optimizer), wine(), steps=30, **trainer_options)
    assert problems(trainer) == []


def test_warm_up_from_a_tiny_learning_rate_does_not_report_too_small_updates(make_trainer: Any) -> None:
    model = Net(wine_mlp(), adam(1e-3), scheduler=lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1e-5, 1.0, 20))
    assert problems(fit(make_trainer, model, wine())) == []


# --- update.lr_collapsed ------------------------------------------------------------------------------------------


def step_lr(gamma: float) -> Any:
    """``StepLR(step_size=1)``, which ``Net`` steps every optimizer step: a per-epoch decay applied per batch."""
    return lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)


def test_a_per_epoch_decay_stepped_every_batch_reports_the_collapsed_learning_rate(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), sgd(0.05, momentum=0.9), scheduler=step_lr(0.5)), wine(), steps=60)
    assert codes(trainer, Severity.WARNING) == {"update.lr_collapsed"}
    collapsed = finding(trainer, "update.lr_collapsed")
    assert collapsed.evidence["planned_steps"] == 60 and collapsed.evidence["step"] <= 11  # 0.5 ** 10 < 1e-3
    assert collapsed.evidence["learning_rates"][0] < 1e-3 * collapsed.evidence["peak_lrs"][0] == pytest.approx(5e-5)
    assert "StepLR (interval 'step')" in collapsed.message


class OnPlateau(Net):
    """``ReduceLROnPlateau`` on the training loss, per step, reducing 10x whenever the loss does not improve."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=0)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "monitor": "train_loss"},
        }


@pytest.mark.parametrize(
    "schedule",
    [
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 60),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=60),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1e-5, 1.0, 20),
        step_lr(0.9),
    ],
    ids=["cosine-to-zero", "one-cycle", "warm-up-from-1e-5", "decay-0.9-per-step"],
)
def test_schedules_that_decay_over_the_planned_steps_are_quiet(make_trainer: Any, schedule: Any) -> None:
    trainer = fit(make_trainer, Net(wine_mlp(), sgd(0.05, momentum=0.9), scheduler=schedule), wine(), steps=60)
    assert problems(trainer) == []


def test_reductions_on_a_plateau_follow_the_run_and_are_not_reported(make_trainer: Any) -> None:
    trainer = fit(make_trainer, OnPlateau(wine_mlp(), sgd(0.05, momentum=0.9)), wine(), steps=60)
    assert trainer.optimizers[0].param_groups[0]["lr"] < 5e-5  # reduced far below 1/1000 of 0.05 early on
    assert "update.lr_collapsed" not in codes(trainer)


def test_healthy_cnn_with_batchnorm_stays_quiet(make_trainer: Any) -> None:
    images, targets = digits_flat().tensors
    data = TensorDataset(images.view(-1, 1, 8, 8).repeat(1, 3, 1, 1), targets)
    trainer = fit(make_trainer, Net(SmallCNN(10, width=8), sgd(0.05, momentum=0.9)), loader(data))
    assert problems(trainer) == []


# --- grad.zero ----------------------------------------------------------------------------------------------------


def dead_relu_mlp() -> nn.Module:
    net = stack(2, nn.ReLU)
    with torch.no_grad():
        net[2].bias.fill_(-100.0)  # every unit of the second layer is dead from the start
    return net


def test_dead_relu_units_report_zero_gradients_naming_the_parameters(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Net(dead_relu_mlp()), loader(digits_flat()))
    zero = finding(trainer, "grad.zero")
    assert zero.severity is Severity.WARNING
    # the dead layer, everything before it, and the weight (not the bias) of the layer reading its zeros
    assert set(zero.evidence["parameters"]) == {
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
        "net.4.weight",
    }
    assert "grad.missing" not in codes(trainer)


# --- param.not_updated --------------------------------------------------------------------------------------------


class ForgottenHead(Net):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net[0].parameters(), lr=1e-3)  # the head was never given to the optimizer


def test_parameters_in_no_param_group_report_not_updated(make_trainer: Any) -> None:
    trainer = fit(make_trainer, ForgottenHead(wine_mlp()), wine(), steps=5)
    not_updated = finding(trainer, "param.not_updated")
    assert not_updated.severity is Severity.ERROR
    assert not_updated.evidence["modules"] == ["net.2"]


class RestoresHead(Net):
    """Undoes every update of the head: e.g. a weight projection that copies the wrong tensor."""

    def on_fit_start(self) -> None:
        self.initial_head = self.net[2].weight.detach().clone()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            self.net[2].weight.copy_(self.initial_head)


def test_parameters_with_gradients_that_never_change_report_not_updated(make_trainer: Any) -> None:
    trainer = fit(make_trainer, RestoresHead(wine_mlp()), wine())
    assert codes(trainer, Severity.WARNING) == {"param.not_updated"}
    assert finding(trainer, "param.not_updated").evidence["parameters"] == ["net.2.weight"]


# --- logging, public numbers, scheduling, configuration ------------------------------------------------------------


def test_logs_total_norm_update_ratio_and_a_bounded_number_of_layers(make_trainer: Any, tmp_path: Path) -> None:
    callback = GradientFlowCallback(dense_steps=5, every_n_steps=10, max_logged_layers=3)
    logger = CSVLogger(tmp_path, name="run")
    trainer = fit(
        make_trainer, Net(stack(6, nn.ReLU)), loader(digits_flat()), steps=30, callback=callback, logger=logger
    )
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    ours = sorted(key for key in header if key.startswith("sanity/gradient_flow/train/"))
    assert ours == [
        "sanity/gradient_flow/train/grad_norm/net.0",
        "sanity/gradient_flow/train/grad_norm/net.12",
        "sanity/gradient_flow/train/grad_norm/net.6",
        "sanity/gradient_flow/train/grad_norm_total",
        "sanity/gradient_flow/train/update_ratio",
    ]
    assert [s.step for s in callback.summaries] == [0, 1, 2, 3, 4, 14, 24]
    assert list(callback.layer_grad_norms) == [f"net.{i}" for i in range(0, 13, 2)]
    assert all(0 < mean <= peak for mean, peak in callback.layer_grad_norms.values())
    assert problems(trainer) == []


def wide_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def test_sampled_statistics_agree_with_exact_ones_on_large_layers(
    make_trainer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights, updates and the figure's L1/max-abs of the 262,144-weight layer come from a 4096-element sample; the
    same seeded run measured in full (a sample as large as the layer) gives the same numbers within 10 %."""
    runs = {}
    for sample in (gradient_stats.SAMPLE, 1 << 20):
        monkeypatch.setattr(gradient_stats, "SAMPLE", sample)
        callback = GradientFlowCallback()
        pl.seed_everything(0, verbose=False)
        model = Net(wide_mlp(), sgd(0.05, momentum=0.9))
        trainer = fit(make_trainer, model, loader(digits_flat()), callback=callback)
        assert problems(trainer) == []
        runs[sample] = callback
    sampled, exact = runs.values()
    for ours, full in zip(sampled.summaries, exact.summaries, strict=True):
        assert ours.total_grad_norm == full.total_grad_norm  # measured in full either way
        assert ours.update_ratio == pytest.approx(full.update_ratio, rel=0.1)  # 2-4 % here
        assert ours.max_layer_update_ratio == pytest.approx(full.max_layer_update_ratio, rel=0.1)
        assert ours.depth_ratio is None and full.depth_ratio is None  # 3 layers: no depth verdict
    for layer, (mean, peak) in exact.layer_grad_norms.items():
        ours_mean, ours_peak = sampled.layer_grad_norms[layer]
        assert ours_mean == pytest.approx(mean, rel=0.1)
        assert peak / 3 <= ours_peak <= peak  # a sample's maximum, never above the true one


def test_a_sampled_embedding_whose_rows_train_sparsely_is_seen_moving(make_trainer: Any) -> None:
    """Plain SGD moves only the rows of the tokens in a batch; of 20,000 rows, at most 4096 hold a sampled element."""

    class WideVocabulary(Bag):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20_000, 32, padding_idx=0)

        def forward(self, ids: Tensor) -> Tensor:
            return super().forward(ids * 71 % 20_000)  # the digits' 261 token ids spread over the vocabulary

    trainer = fit(make_trainer, Net(WideVocabulary(), sgd(0.5)), loader(digits_tokens()))
    assert problems(trainer) == []


def test_a_sample_estimates_a_large_tensors_norm_and_is_the_whole_of_a_small_one() -> None:
    small = torch.randn(50, 60)
    assert torch.equal(gradient_stats.sample_elements(small), small.reshape(-1))
    large = torch.randn(1000, 300)
    large[:, ::8] = 0.0  # structure a strided sample would alias with
    sample = gradient_stats.sample_elements(large)
    assert sample.numel() == gradient_stats.SAMPLE
    assert torch.equal(gradient_stats.sample_elements(large), sample)  # the same positions at every check
    estimate = float(sample.norm()) * math.sqrt(large.numel() / sample.numel())
    assert estimate == pytest.approx(float(large.norm()), rel=0.03)


def test_check_schedule_is_dense_then_sparse() -> None:
    checked = [step for step in range(40) if is_check_step(step, dense_steps=5, every_n_steps=10)]
    assert checked == [0, 1, 2, 3, 4, 14, 24, 34]


def test_depth_ratio_compares_the_first_and_last_quarters() -> None:
    assert depth_ratio([1e-8, 1e-8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(1e-8)
    assert depth_ratio([1.0, 2.0, 3.0]) is None
    assert depth_ratio([1.0, 1.0, 1.0, 0.0]) is None


def test_exploding_growth_needs_a_finite_baseline() -> None:
    assert exploding_growth(2.0, 2e5) == pytest.approx(1e5)
    assert exploding_growth(0.0, 1.0) is None
    assert exploding_growth(1.0, math.inf) is None


def test_module_names_collapse_to_the_parent_they_cover() -> None:
    everything = {"backbone.0", "backbone.2", "head", "neck.0", "neck.1"}
    assert collapse_module_names({"backbone.0", "backbone.2", "neck.1"}, everything) == ["backbone", "neck.1"]
    assert collapse_module_names({"head"}, everything) == ["head"]


def test_spread_keeps_first_and_last() -> None:
    assert spread(list("abcdefg"), 3) == ["a", "d", "g"]
    assert spread(list("ab"), 5) == ["a", "b"]
    assert spread(list("abc"), 0) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("dense_steps", 2),
        ("every_n_steps", 0),
        ("max_logged_layers", -1),
        ("vanishing_ratio", 1.5),
        ("exploding_growth", 1.0),
        ("min_update_ratio", 0.0),
        ("max_update_ratio", 1e-9),
        ("dense_steps", True),
    ],
)
def test_bad_configuration_fails_fast_naming_the_argument(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        GradientFlowCallback(**{option: value})
