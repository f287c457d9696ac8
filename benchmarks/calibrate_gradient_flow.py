"""Measure the statistics GradientFlowCallback thresholds, on healthy and on buggy training runs.

Runs small real models (sklearn wine and digits) with many optimizers, normalisations, schedules
and training setups, and prints per run and per family the statistic behind each finding:

- ``depth``: median over checks of the first layers' relative gradient over the last layers'
  (``grad.vanishing`` fires below ``vanishing_ratio``).
- ``growth``: largest total gradient norm over the median of the first 3 checks
  (``grad.exploding`` fires above ``exploding_growth``).
- ``max_upd``: smallest per-check *largest* layer update ratio (``update.too_small`` fires when it
  stays below ``min_update_ratio``).
- ``med_upd``: the 5th largest per-check *median* layer update ratio (``update.too_large`` fires when
  5 checks exceed ``max_update_ratio``).
- ``lr_drop``: smallest learning rate, over the checks in the first half of the planned steps, as a fraction
  of the highest one used before it (``update.lr_collapsed`` fires below 1e-3).

``missing`` runs programs whose trainable parameters get no gradient, healthy (library models built larger than
they are used: smp's encoder_depth, timm's forward_features, a torchvision ResNet run child by child, a Hugging Face
pooler) and buggy (``.detach()``, ``torch.no_grad()``, a discarded branch, a forgotten layer), and prints how many of
those parameters belong to modules forward called (``grad.missing``) or never called (``param.unused``).

    python benchmarks/calibrate_gradient_flow.py [healthy|buggy|missing]
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import statistics
import sys
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import GradientFlowCallback, Severity
from lightning_sanity.demos import GAN, SmallCNN, wine_tensors

torch.set_num_threads(1)
OptimizerFactory = Callable[[Any], torch.optim.Optimizer]


def digits(kind: str) -> TensorDataset:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    if kind == "flat":
        return TensorDataset((x.flatten(1) - 0.3) / 0.4, y)
    if kind == "image":
        return TensorDataset(((x - 0.3) / 0.4)[:, None].repeat(1, 3, 1, 1), y)
    tokens = (x.flatten(1) * 4).round().long()  # 5 intensity levels per pixel; 0 = blank, padded
    ids = torch.where(tokens > 0, tokens + 4 * torch.arange(64), torch.zeros_like(tokens))
    return TensorDataset(ids, y)


class Bag(nn.Module):
    def __init__(self, vocab: int = 64 * 4 + 5, dim: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids > 0).float()[..., None]
        return self.head((self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


def resnet_like(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *[Residual(width) for _ in range(3)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def deep_mlp(
    inputs: int, depth: int, width: int, act: type[nn.Module], norm: type[nn.Module] | None = None
) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(inputs if i == 0 else width, width))
        if norm is not None:
            layers.append(norm(width))
        layers.append(act())
    return nn.Sequential(*layers, nn.Linear(width, 10))


class Module(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        frozen: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        if frozen:
            self.net.get_submodule(frozen).requires_grad_(False)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.net)
        if self.make_scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "step"},
        }


def sgd(lr: float, momentum: float = 0.0, wd: float = 0.0) -> OptimizerFactory:
    return lambda net: torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)


def adam(lr: float) -> OptimizerFactory:
    return lambda net: torch.optim.Adam(net.parameters(), lr=lr)


def adamw(lr: float, wd: float = 0.05) -> OptimizerFactory:
    return lambda net: torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)


def two_groups(lr: float, backbone_factor: float = 0.1) -> OptimizerFactory:
    def build(net: Any) -> torch.optim.Optimizer:
        head = list(net[-1].parameters())
        head_ids = {id(p) for p in head}
        rest = [p for p in net.parameters() if id(p) not in head_ids]
        return torch.optim.AdamW([{"params": rest, "lr": lr * backbone_factor}, {"params": head}], lr=lr)

    return build


def warmup(steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / steps))


def cosine(steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


def one_cycle(lr: float, steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    return lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)


def per_step(gamma: float) -> Callable[[torch.optim.Optimizer], Any]:
    """An exponential decay applied every optimizer step (the modules here step their scheduler per step)."""
    return lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)


WINE = ("wine", 16)
FLAT = ("flat", 32)
IMAGE = ("image", 32)
TOKENS = ("tokens", 32)


def loaders(data: tuple[str, int]) -> DataLoader:
    kind, batch_size = data
    dataset = TensorDataset(*wine_tensors("train")) if kind == "wine" else digits(kind)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def run(name: str, build: Callable[[], pl.LightningModule], data: tuple[str, int], **trainer: Any) -> dict[str, Any]:
    planned = trainer.get("max_steps", 60)
    pl.seed_everything(0, verbose=False)
    callback = GradientFlowCallback()
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "max_steps": 60,
        "max_epochs": -1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "callbacks": [callback],
    }
    options.update(trainer)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the run report, printed per run
        warnings.simplefilter("ignore")
        pl.Trainer(**options).fit(build(), loaders(data))
    return {"name": name, **statistics_of(callback, planned)}


def statistics_of(callback: GradientFlowCallback, planned: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"codes": sorted({f.code for f in callback.findings if f.severity >= Severity.WARNING})}
    by_optimizer: dict[int, list[Any]] = {}
    for summary in callback.summaries:
        by_optimizer.setdefault(summary.optimizer_index, []).append(summary)
    depth, growth, small, large, drops = [], [], [], [], []
    for summaries in by_optimizer.values():
        highest: list[float] = []
        for s in summaries:
            highest = [max(pair) for pair in zip(highest or s.learning_rates, s.learning_rates, strict=True)]
            if s.step < planned / 2 and all(highest):
                drops.append(min(lr / peak for lr, peak in zip(s.learning_rates, highest, strict=True)))
        ratios = [s.depth_ratio for s in summaries if s.depth_ratio is not None]
        if ratios:
            depth.append(statistics.median(ratios))
        norms = [s.total_grad_norm for s in summaries]
        if len(norms) > 3:
            growth.append(max(norms[3:]) / statistics.median(norms[:3]))
        judged = [s for s in summaries if s.judgeable_lr]
        if judged:
            small.append(min(s.max_layer_update_ratio for s in judged))
            medians = sorted((s.median_layer_step for s in judged), reverse=True)
            large.append(medians[min(4, len(medians) - 1)])
    stats.update(
        depth=min(depth, default=math.nan),
        growth=max(growth, default=math.nan),
        max_upd=min(small, default=math.nan),
        med_upd=max(large, default=math.nan),
        lr_drop=min(drops, default=math.nan),
    )
    return stats


def healthy_runs() -> list[tuple[str, Callable[[], pl.LightningModule], tuple[str, int], dict[str, Any]]]:
    def m(net: Callable[[], nn.Module], opt: OptimizerFactory, **kw: Any) -> Callable[[], pl.LightningModule]:
        return lambda: Module(net(), opt, **kw)

    wine_mlp = lambda: nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))  # noqa: E731
    relu6 = lambda: deep_mlp(64, 6, 64, nn.ReLU)  # noqa: E731
    bn6 = lambda: deep_mlp(64, 6, 64, nn.ReLU, nn.BatchNorm1d)  # noqa: E731
    ln6 = lambda: deep_mlp(64, 6, 64, nn.GELU, nn.LayerNorm)  # noqa: E731
    relu12 = lambda: deep_mlp(64, 12, 64, nn.ReLU, nn.LayerNorm)  # noqa: E731
    cnn = lambda: SmallCNN(10, width=16)  # noqa: E731
    res = lambda: resnet_like(16)  # noqa: E731
    return [
        ("wine mlp sgd 0.1", m(wine_mlp, sgd(0.1)), WINE, {}),
        ("wine mlp sgd 0.01", m(wine_mlp, sgd(0.01)), WINE, {}),
        ("wine mlp sgd 1e-3", m(wine_mlp, sgd(1e-3)), WINE, {}),
        ("wine mlp sgd+mom 0.01", m(wine_mlp, sgd(0.01, 0.9)), WINE, {}),
        ("wine mlp adam 1e-3", m(wine_mlp, adam(1e-3)), WINE, {}),
        ("wine mlp adam 1e-2", m(wine_mlp, adam(1e-2)), WINE, {}),
        ("wine mlp adam 1e-4", m(wine_mlp, adam(1e-4)), WINE, {}),
        ("wine mlp adamw 3e-3", m(wine_mlp, adamw(3e-3)), WINE, {}),
        ("digits relu6 sgd+mom 0.05", m(relu6, sgd(0.05, 0.9)), FLAT, {}),
        ("digits relu6 adam 1e-3", m(relu6, adam(1e-3)), FLAT, {}),
        ("digits relu6 adam 1e-3 clip 0.1", m(relu6, adam(1e-3)), FLAT, {"gradient_clip_val": 0.1}),
        ("digits bn6 sgd 0.1", m(bn6, sgd(0.1)), FLAT, {}),
        ("digits bn6 adamw 1e-3", m(bn6, adamw(1e-3)), FLAT, {}),
        ("digits ln6 adam 3e-4", m(ln6, adam(3e-4)), FLAT, {}),
        ("digits ln6 adamw 1e-3 warmup", m(ln6, adamw(1e-3), scheduler=warmup(40)), FLAT, {}),
        ("digits ln12 adamw 1e-3 cosine", m(relu12, adamw(1e-3), scheduler=cosine(60)), FLAT, {}),
        ("digits ln12 sgd+mom onecycle", m(relu12, sgd(0.1, 0.9), scheduler=one_cycle(0.1, 60)), FLAT, {}),
        ("digits ln6 adam 1e-2 decay 0.9/step", m(ln6, adam(1e-2), scheduler=per_step(0.9)), FLAT, {}),
        ("digits cnn adam 1e-2", m(cnn, adam(1e-2)), IMAGE, {}),
        ("digits cnn sgd+mom 0.05 clip 1", m(cnn, sgd(0.05, 0.9, 5e-4)), IMAGE, {"gradient_clip_val": 1.0}),
        ("digits resnet adam 1e-3", m(res, adam(1e-3)), IMAGE, {}),
        ("digits resnet sgd+mom 0.1", m(res, sgd(0.1, 0.9, 5e-4)), IMAGE, {}),
        ("digits resnet two groups", m(res, two_groups(1e-3)), IMAGE, {}),
        ("digits resnet frozen backbone", m(res, adam(1e-3), frozen="3"), IMAGE, {}),
        ("digits cnn adam accumulate 4", m(cnn, adam(1e-3)), IMAGE, {"accumulate_grad_batches": 4}),
        ("digits cnn adam bf16-mixed", m(cnn, adam(1e-3)), IMAGE, {"precision": "bf16-mixed"}),
        ("digits embedding adam 1e-3", m(Bag, adam(1e-3)), TOKENS, {}),
        ("digits embedding sgd 0.5", m(Bag, sgd(0.5)), TOKENS, {}),
        ("digits cnn sgd 1e-3", m(cnn, sgd(1e-3)), IMAGE, {}),
        ("digits wide mlp 512 adam 1e-2", m(lambda: deep_mlp(64, 3, 512, nn.ReLU), adam(1e-2)), FLAT, {}),
        ("wine mlp adam 1e-5 (fine-tuning lr)", m(wine_mlp, adam(1e-5)), WINE, {}),
        ("wine gan manual", GAN, WINE, {}),
        ("long: digits cnn adam 1e-3, 1500 steps", m(cnn, adam(1e-3)), IMAGE, {"max_steps": 1500}),
        ("long: wine mlp sgd+mom 0.05, 3000 steps", m(wine_mlp, sgd(0.05, 0.9)), WINE, {"max_steps": 3000}),
    ]


def buggy_runs() -> list[tuple[str, Callable[[], pl.LightningModule], tuple[str, int], dict[str, Any]]]:
    wine_mlp = lambda: nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))  # noqa: E731
    return [
        ("sigmoid20 sgd 0.1", lambda: Module(deep_mlp(64, 20, 64, nn.Sigmoid), sgd(0.1)), FLAT, {}),
        ("sigmoid10 adam 1e-3", lambda: Module(deep_mlp(64, 10, 64, nn.Sigmoid), adam(1e-3)), FLAT, {}),
        ("tanh20 sgd 0.1", lambda: Module(deep_mlp(64, 20, 64, nn.Tanh), sgd(0.1)), FLAT, {}),
        ("wine mlp adam 1e-7", lambda: Module(wine_mlp(), adam(1e-7)), WINE, {}),
        ("digits cnn adam 1e-7", lambda: Module(SmallCNN(10), adam(1e-7)), IMAGE, {}),
        ("wine mlp sgd 10", lambda: Module(wine_mlp(), sgd(10.0)), WINE, {}),
        ("wine mlp adam 1", lambda: Module(wine_mlp(), adam(1.0)), WINE, {}),
        ("digits relu6 sgd 10", lambda: Module(deep_mlp(64, 6, 64, nn.ReLU), sgd(10.0)), FLAT, {}),
        ("digits cnn adam 1", lambda: Module(SmallCNN(10), adam(1.0)), IMAGE, {}),
        ("digits cnn sgd+mom StepLR per step", lambda: Module(SmallCNN(10), sgd(0.05, 0.9), per_step(0.5)), IMAGE, {}),
        ("wine mlp adam StepLR 0.1 per step", lambda: Module(wine_mlp(), adam(1e-2), per_step(0.1)), WINE, {}),
    ]


def digit_masks() -> TensorDataset:
    """Digits upsampled to 3x32x32 with the ink as class 1 of a per-pixel mask: a small real segmentation task."""
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return TensorDataset(((x - 0.3) / 0.4).repeat(1, 3, 1, 1), (x[:, 0] > 0.3).long())


class Features(nn.Module):
    """A classifier on a backbone's features, reached the way the program says (a library's partial forward)."""

    def __init__(self, backbone: nn.Module, features: Callable[[nn.Module, Tensor], Tensor], width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.features = features
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.backbone, x))


def torchvision_children(net: nn.Module, x: Tensor) -> Tensor:
    """A torchvision ResNet run child by child up to its pooling: its ``fc`` is never called."""
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        x = getattr(net, name)(x)
    return x.flatten(1)


class Cut(nn.Module):
    """An MLP on digits whose backbone is cut from the loss as ``mode`` says (the bugs of ``grad.missing``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.extra = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "no_grad":
            with torch.no_grad():
                x = self.backbone(x)
        else:
            x = self.backbone(x)
        if self.mode == "detach":
            x = x.detach()
        if self.mode == "discarded":
            self.extra(x)  # an auxiliary branch whose output never reaches the loss
        if self.mode == "functional_detach":
            x = F.linear(x, self.extra.weight.detach(), self.extra.bias.detach())
        if self.mode == "returned":
            return self.head(x), self.extra(x)  # a (main, aux) model: which outputs the loss uses is the step's choice
        return self.head(x)  # "forgotten": self.extra is defined and never called


class Segmentation(pl.LightningModule):
    def __init__(self, net: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.loss = loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Pooled(Module):
    """A Hugging Face BertModel on digit tokens, classified from the first token's hidden state (not the pooler)."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ids, y = batch
        return F.cross_entropy(self.net[1](self.net[0](input_ids=ids).last_hidden_state[:, 0]), y)


class FirstToken(nn.Module):
    """The same classifier as a module whose forward calls the BertModel (the usual way to write it)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(32, 10)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.bert(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state[:, 0])


class MainOutput(Module):
    """A model that returns several outputs (a tuple, torchvision's GoogLeNetOutputs), trained on the first alone."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x)[0], y)


def missing_programs() -> list[tuple[str, str, Callable[[], pl.LightningModule], Callable[[], TensorDataset]]]:
    """(family, name, module, data) of the programs whose parameters get no gradient."""
    import segmentation_models_pytorch as smp
    import timm
    import torchvision
    import transformers

    def unet(depth: int) -> pl.LightningModule:
        decoder = (64, 32, 16, 16, 8)[5 - depth :]
        net = smp.Unet("resnet18", encoder_weights=None, classes=2, encoder_depth=depth, decoder_channels=decoder)
        return Segmentation(net, smp.losses.DiceLoss("multiclass"))

    def timm_features() -> pl.LightningModule:
        backbone = timm.create_model("resnet18", pretrained=False, num_classes=10)
        return Module(
            Features(backbone, lambda net, x: net.forward_head(net.forward_features(x), True), 512), adam(1e-3)
        )

    def torchvision_features() -> pl.LightningModule:
        return Module(Features(torchvision.models.resnet18(num_classes=10), torchvision_children, 512), adam(1e-3))

    def bert(in_forward: bool = False) -> pl.LightningModule:
        config = transformers.BertConfig(
            vocab_size=64 * 4 + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64,
        )  # fmt: skip
        if in_forward:
            return Module(FirstToken(transformers.BertModel(config)), adam(1e-3))
        return Pooled(nn.ModuleList([transformers.BertModel(config), nn.Linear(32, 10)]), adam(1e-3))

    def googlenet() -> pl.LightningModule:
        net = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=True)
        return MainOutput(net, adam(1e-3))  # train mode returns (logits, aux_logits2, aux_logits1)

    def cut(mode: str) -> Callable[[], pl.LightningModule]:
        return lambda: Module(Cut(mode), adam(1e-3))

    def flat() -> TensorDataset:
        return digits("flat")

    def image() -> TensorDataset:
        return digits("image")

    def tokens() -> TensorDataset:
        return digits("tokens")

    def image32() -> TensorDataset:
        return TensorDataset(digit_masks().tensors[0], digits("flat").tensors[1])

    return [
        ("healthy", "smp Unet resnet18 encoder_depth=3", lambda: unet(3), digit_masks),
        ("healthy", "smp Unet resnet18 encoder_depth=4", lambda: unet(4), digit_masks),
        ("healthy", "timm resnet18 forward_features + own head", timm_features, image),
        ("healthy", "torchvision resnet18 run child by child", torchvision_features, image),
        ("healthy", "HF BertModel, first token instead of pooler", bert, tokens),
        ("healthy", "HF BertModel, first token, in a module's forward", lambda: bert(True), tokens),
        ("healthy", "torchvision GoogLeNet (train: 2 aux logits), logits only", googlenet, image32),
        ("healthy", "(main, aux) returned, step uses main", lambda: MainOutput(Cut("returned"), adam(1e-3)), flat),
        ("buggy", "backbone .detach()", cut("detach"), flat),
        ("buggy", "backbone under torch.no_grad() in train mode", cut("no_grad"), flat),
        ("buggy", "auxiliary branch output discarded", cut("discarded"), flat),
        ("buggy", "layer defined, forgotten in forward", cut("forgotten"), flat),
        ("buggy", "layer used as F.linear(x, w.detach())", cut("functional_detach"), flat),
    ]


def missing_table() -> None:
    """Per program: trainable parameters without a gradient in the dense checks, split by whether forward ever
    called the module that holds them, and the findings that come out (before: every one was grad.missing ERROR)."""
    print(f"{'family':8s} {'program':56s} {'no grad':>8s} {'called':>7s} {'returned':>8s} {'never':>6s}  findings")
    for family, name, build, data in missing_programs():
        pl.seed_everything(0, verbose=False)
        callback = GradientFlowCallback()
        trainer = pl.Trainer(
            accelerator="cpu", max_steps=25, max_epochs=-1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=[callback],
        )  # fmt: skip
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.fit(build(), DataLoader(data(), batch_size=32, shuffle=True))
        counts = {"grad.missing": 0, "returned": 0, "param.unused": 0}
        for found in callback.findings:
            if found.code in counts:
                kind = "returned" if "returned_by" in found.evidence else found.code
                counts[kind] += len(found.evidence["parameters"])
        called, returned, never = counts.values()
        codes = ", ".join(f"{f.code} ({f.severity})" for f in callback.findings) or "-"
        print(f"{family:8s} {name:56s} {called + returned + never:8d} {called:7d} {returned:8d} {never:6d}  {codes}")


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_sanity").setLevel(logging.ERROR)
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    if only == "missing":
        missing_table()
        return
    columns = ("depth", "growth", "max_upd", "med_upd", "lr_drop")
    for family, runs in (("healthy", healthy_runs()), ("buggy", buggy_runs())):
        if only and only != family:
            continue
        print(f"\n== {family} ==")
        print(f"{'run':36s} " + " ".join(f"{c:>9s}" for c in columns) + "  findings")
        results = [run(name, build, data, **trainer) for name, build, data, trainer in runs]
        for r in results:
            print(f"{r['name']:36s} " + " ".join(f"{r[c]:9.1e}" for c in columns) + f"  {','.join(r['codes']) or '-'}")
        for column in columns:
            values = np.array([r[column] for r in results if math.isfinite(r[column])])
            if len(values):
                print(f"  {column:8s} min {values.min():.1e}  median {np.median(values):.1e}  max {values.max():.1e}")


if __name__ == "__main__":
    main()
