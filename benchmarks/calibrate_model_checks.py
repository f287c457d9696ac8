"""Measure the statistics ModelChecksCallback thresholds, on healthy and broken models at step 0.

Each variant (architecture x data x loss x seed) builds a freshly initialised model, takes the first shuffled batch,
computes the loss the way the program would, and applies the callback's own functions (``read_loss``,
``probe_call``) exactly as the callback does on the first training batch. Printed per check: the statistic behind it,
the largest value over healthy variants and the smallest over broken ones (or the reverse where lower is worse):

- ``loss match``: relative error between the returned loss and the recomputed standard loss that produced it
  (healthy max must stay below ``MATCH_TOLERANCE``), and the relative distance from the returned loss to the nearest
  candidate with a *different* verdict (its min must stay above ``MATCH_TOLERANCE``).
- ``init ratio``: first-batch class loss / ln(C) (``loss.init_high`` above ``INIT_LOSS_RATIO``).
- ``leak``: share of one sample's input gradient landing on the other samples (``model.batch_mixing`` above 0).
- ``spread``: relative spread of the outputs of 4 different samples (``model.input_independent`` at 0, with zero
  input gradient and identical parameter gradients).
- ``layout ratio``: roughness of a batch of images read as channels-last over read as they are, for correctly
  permuted and for reshaped channels-last arrays (``input.layout_scrambled`` below ``LAYOUT_RATIO``).

It also measures the one-time CPU cost of the callback (``time.process_time``) on a small CNN and a ~0.8M-parameter
model.

    python benchmarks/calibrate_model_checks.py
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T
from torchvision.models import resnet18

from lightning_sanity import ModelChecksCallback
from lightning_sanity.demos import DigitImages, SmallCNN, digits_tensors, wine_tensors
from lightning_sanity.losses import MATCH_TOLERANCE, LossContext, class_candidates, elementwise_candidates, read_loss
from lightning_sanity.model_checks import INIT_LOSS_RATIO, LAYOUT_RATIO, LAYOUT_SAMPLES, layout_ratio, probe_call
from lightning_sanity.observe import ForwardCall, graph_activation
from lightning_sanity.outputs import class_scores

torch.set_num_threads(1)
SEEDS = range(5)


# ---- data -------------------------------------------------------------------------------------------------------


def first_batch(dataset: Any, seed: int, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return next(iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)))


def images(channels: int = 3, natural: bool = False) -> Any:
    steps = [T.Grayscale()] if channels == 1 else []
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if natural else ([0.2] * 3, [0.3] * 3)
    return DigitImages(T.Compose([*steps, T.ToTensor(), T.Normalize(mean[:channels], std[:channels])]))


def flat_digits() -> TensorDataset:
    return TensorDataset(*digits_tensors())


def wine() -> TensorDataset:
    return TensorDataset(*wine_tensors())


def token_digits() -> TensorDataset:
    data = load_digits()
    return TensorDataset(torch.as_tensor(data.data, dtype=torch.long), torch.as_tensor(data.target))


# ---- models -----------------------------------------------------------------------------------------------------


def mlp(inputs: int, outputs: int, hidden: int = 32, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth - 1):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, outputs))


class Rows(nn.Module):
    """8x8 digits as 8 row tokens; ``scramble`` reshapes a sequence-first output as batch-first (the bug)."""

    def __init__(self, batch_first: bool = True, scramble: bool = False, width: int = 32, layers: int = 1) -> None:
        super().__init__()
        self.batch_first, self.scramble = batch_first, scramble
        self.embed = nn.Linear(8, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x.view(len(x), 8, 8))
        if self.batch_first:
            return self.head(self.encoder(tokens).mean(1))
        hidden = self.encoder(tokens.transpose(0, 1))
        hidden = hidden.reshape(tokens.shape) if self.scramble else hidden.transpose(0, 1)
        return self.head(hidden.mean(1))


class Tokens(nn.Module):
    def __init__(self, pool_batch: bool = False) -> None:
        super().__init__()
        self.pool_batch = pool_batch
        self.embed = nn.Embedding(17, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, tokens: Tensor) -> Tensor:
        embedded = self.embed(tokens)
        pooled = embedded.mean(1) + (embedded.mean((0, 1)) if self.pool_batch else 0)
        return self.head(pooled)


class Wrap(nn.Module):
    """``net`` with something done to its input or output (the variable part of the broken variants)."""

    def __init__(self, net: nn.Module, before: Callable[[Tensor], Tensor] | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.net, self.before, self.scale = net, before, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.before(x) if self.before else x) * self.scale


def zero_head(net: nn.Module) -> nn.Module:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net


def normal_init(net: nn.Module, std: float = 1.0) -> nn.Module:
    for parameter in net.parameters():
        nn.init.normal_(parameter, std=std)
    return net


def resnet(channels: int = 3) -> nn.Module:
    net = resnet18(num_classes=10)
    if channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    return net


# ---- variants ---------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    family: str
    """``loss``, ``init``, ``mixing`` or ``input``: which check it calibrates."""
    name: str
    healthy: bool
    build: Callable[[], nn.Module]
    data: Callable[[], Any]
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy


def softmax(net: nn.Module) -> nn.Module:
    return nn.Sequential(net, nn.Softmax(dim=1))


def nll_of_log(p: Tensor, y: Tensor) -> Tensor:
    return F.nll_loss(torch.log(p), y)


def binary(data: Callable[[], Any]) -> Callable[[], Any]:
    def build() -> TensorDataset:
        features, labels = data().tensors
        return TensorDataset(features, (labels >= 5).float().unsqueeze(1))

    return build


def regression(column: bool) -> Callable[[], TensorDataset]:
    def build() -> TensorDataset:
        features, _ = wine_tensors()
        return TensorDataset(features[:, 1:], features[:, :1] if column else features[:, 0])

    return build


WEIGHTS = torch.linspace(0.5, 2.0, 10)
VARIANTS = [
    # which loss, and how it reads outputs and targets
    Variant("loss", "cnn + cross_entropy", True, lambda: SmallCNN(10, width=8), images),
    Variant(
        "loss",
        "mlp + label smoothing 0.1",
        True,
        lambda: mlp(64, 10),
        flat_digits,
        nn.CrossEntropyLoss(label_smoothing=0.1),
    ),
    Variant("loss", "mlp + class weights", True, lambda: mlp(64, 10), flat_digits, nn.CrossEntropyLoss(weight=WEIGHTS)),
    Variant("loss", "softmax + nll(log)", True, lambda: softmax(SmallCNN(10, width=8)), images, nll_of_log),
    Variant(
        "loss", "log_softmax + nll", True, lambda: nn.Sequential(mlp(64, 10), nn.LogSoftmax(1)), flat_digits, F.nll_loss
    ),
    Variant(
        "loss",
        "sigmoid + bce",
        True,
        lambda: nn.Sequential(mlp(64, 1), nn.Sigmoid()),
        binary(flat_digits),
        F.binary_cross_entropy,
    ),
    Variant(
        "loss",
        "logit + bce_with_logits",
        True,
        lambda: mlp(64, 1),
        binary(flat_digits),
        F.binary_cross_entropy_with_logits,
    ),
    Variant("loss", "regression mse (N,1)", True, lambda: mlp(12, 1), regression(column=True), F.mse_loss),
    Variant("loss", "softmax + cross_entropy", False, lambda: softmax(SmallCNN(10, width=8)), images),
    Variant(
        "loss",
        "softmax + weighted ce",
        False,
        lambda: softmax(mlp(64, 10)),
        flat_digits,
        nn.CrossEntropyLoss(weight=WEIGHTS),
    ),
    Variant("loss", "softmax + nll", False, lambda: softmax(mlp(64, 10)), flat_digits, F.nll_loss),
    Variant(
        "loss",
        "sigmoid + bce_with_logits",
        False,
        lambda: nn.Sequential(mlp(64, 1), nn.Sigmoid()),
        binary(flat_digits),
        F.binary_cross_entropy_with_logits,
    ),
    Variant(
        "loss",
        "mse (N,) vs (N,1)",
        False,
        lambda: nn.Sequential(mlp(12, 1), nn.Flatten(0)),
        regression(column=True),
        F.mse_loss,
    ),
    Variant("loss", "l1 (N,1) vs (N,)", False, lambda: mlp(12, 1), regression(column=False), F.l1_loss),
    # loss at initialisation
    Variant("init", "mlp default init", True, lambda: mlp(64, 10), flat_digits),
    Variant("init", "deep mlp (6) default init", True, lambda: mlp(64, 10, 128, 6), flat_digits),
    Variant("init", "wine mlp", True, lambda: mlp(13, 3), wine),
    Variant("init", "cnn default init", True, lambda: SmallCNN(10, width=16), images),
    Variant("init", "cnn 1-channel", True, lambda: SmallCNN(10, in_channels=1, width=16), lambda: images(1)),
    Variant("init", "resnet18", True, resnet, lambda: images(natural=True)),
    Variant("init", "transformer", True, lambda: Rows(width=64, layers=2), flat_digits),
    Variant("init", "zero-initialised head", True, lambda: zero_head(SmallCNN(10, width=16)), images),
    Variant(
        "init",
        "label smoothing 0.2",
        True,
        lambda: SmallCNN(10, width=16),
        images,
        nn.CrossEntropyLoss(label_smoothing=0.2),
    ),
    Variant("init", "class weights", True, lambda: SmallCNN(10, width=16), images, nn.CrossEntropyLoss(weight=WEIGHTS)),
    Variant("init", "xavier init", True, lambda: _xavier(mlp(64, 10, 128, 3)), flat_digits),
    Variant("init", "wide mlp (1024)", True, lambda: mlp(64, 10, 1024, 3), flat_digits),
    Variant("init", "cnn width 64", True, lambda: SmallCNN(10, width=64), lambda: images(natural=True)),
    Variant("init", "vgg-style cnn, no BatchNorm", True, lambda: _plain_cnn(), images),
    Variant("init", "resnet18 1-channel", True, lambda: resnet(1), lambda: images(1)),
    Variant("init", "bias = log prior (imbalanced head init)", True, lambda: _prior_bias(mlp(64, 10)), flat_digits),
    Variant("init", "normal_(std=1) mlp", False, lambda: normal_init(mlp(64, 10)), flat_digits),
    Variant("init", "normal_(std=1) cnn", False, lambda: normal_init(SmallCNN(10, width=16)), images),
    Variant("init", "normal_(std=1) wine", False, lambda: normal_init(mlp(13, 3)), wine),
    Variant("init", "normal_(std=1) transformer", False, lambda: normal_init(Rows(width=64)), flat_digits),
    Variant("init", "logits x 20 (temperature bug)", False, lambda: Wrap(SmallCNN(10, width=16), scale=20.0), images),
    # samples mixing in a batch
    Variant("mixing", "mlp", True, lambda: mlp(64, 10), flat_digits),
    Variant("mixing", "cnn (BatchNorm)", True, lambda: SmallCNN(10, width=8), images),
    Variant("mixing", "resnet18", True, resnet, lambda: images(natural=True)),
    Variant("mixing", "transformer batch-first", True, lambda: Rows(), flat_digits),
    Variant("mixing", "transformer seq-first", True, lambda: Rows(batch_first=False), flat_digits),
    Variant("mixing", "token embeddings", True, Tokens, token_digits),
    Variant(
        "mixing",
        "(seq,batch) reshaped as (batch,seq)",
        False,
        lambda: Rows(batch_first=False, scramble=True),
        flat_digits,
    ),
    Variant(
        "mixing", "centred on the batch mean", False, lambda: Wrap(mlp(64, 10), lambda x: x - x.mean(0)), flat_digits
    ),
    Variant(
        "mixing", "softmax over the batch", False, lambda: Wrap(mlp(64, 10), lambda x: x * x.softmax(0)), flat_digits
    ),
    Variant("mixing", "tokens pooled over the batch", False, lambda: Tokens(pool_batch=True), token_digits),
    # dependence on the input
    Variant("input", "cnn", True, lambda: SmallCNN(10, width=8), images),
    Variant("input", "zero-initialised head", True, lambda: zero_head(mlp(64, 10)), flat_digits),
    Variant("input", "binarised input", True, lambda: Wrap(SmallCNN(10, width=8), lambda x: (x > 0).float()), images),
    Variant("input", "input x 0", False, lambda: Wrap(SmallCNN(10, width=8), lambda x: x * 0), images),
    Variant(
        "input",
        "constant instead of input",
        False,
        lambda: Wrap(mlp(64, 10), lambda x: torch.zeros_like(x)),
        flat_digits,
    ),
    Variant(
        "input", "input detached, then x 0", False, lambda: Wrap(mlp(64, 10), lambda x: x.detach() * 0), flat_digits
    ),
]


def _plain_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def _prior_bias(net: nn.Module) -> nn.Module:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias.copy_(torch.log(torch.bincount(digits_tensors()[1], minlength=10).float() / 1348))
    return net


def _xavier(net: nn.Module) -> nn.Module:
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
    return net


# ---- measurements -----------------------------------------------------------------------------------------------


@dataclass
class Measured:
    match_error: float | None = None
    other_verdict_gap: float | None = None
    verdict: str | None = None
    init_ratio: float | None = None
    leak: float | None = None
    spread: float | None = None
    ignores_input: bool | None = None


def measure(variant: Variant, seed: int) -> Measured:
    torch.manual_seed(seed)
    net = variant.build()
    x, y = first_batch(variant.data(), seed)
    net.train()
    output = net(x)
    loss = float(variant.loss(output, y))
    holder = nn.Module()
    holder.net, holder.loss = net, variant.loss if isinstance(variant.loss, nn.Module) else nn.Identity()
    context = LossContext.of(holder)
    result = Measured()
    reading = read_loss(output, y, loss, context)
    if reading is not None:
        result.verdict = reading.verdict
        result.match_error = abs(reading.matched.value - loss) / max(abs(loss), 1e-2)
        if reading.init_loss is not None and reading.init_expected:
            result.init_ratio = reading.init_loss / reading.init_expected
    graph = graph_activation(output)  # read before detaching, as the observer does
    result.other_verdict_gap = _other_verdict_gap(output.detach().float(), y, loss, context, reading, graph)
    net.eval()
    probe = probe_call(ForwardCall(net, "", (x,), {}), 0, 4)
    if probe is not None:
        result.leak = max(probe.leak, probe.substitution_change)
        result.spread = probe.output_spread
        result.ignores_input = probe.input_independent
    return result


def _other_verdict_gap(
    output: Tensor, y: Tensor, loss: float, context: LossContext, reading: Any, graph: str | None
) -> float | None:
    """Distance from the loss to the nearest candidate that would give a different verdict than the true one."""
    candidates = list(elementwise_candidates(output, y.float() if y.is_floating_point() else y))
    if not y.is_floating_point():
        pair = class_scores(output, y)
        if pair is not None and pair[0].shape[1] >= 2:
            candidates += class_candidates(pair[0], pair[1], context)
    if reading is None:
        return None
    others = [
        c
        for c in candidates
        if read_loss_verdict(c, output, y, context, graph) not in (None, reading.verdict)
        and c.value != reading.matched.value
    ]
    gaps = [abs(c.value - loss) / max(abs(loss), 1e-2) for c in others]
    return min(gaps) if gaps else None


def read_loss_verdict(candidate: Any, output: Tensor, y: Tensor, context: LossContext, graph: str | None) -> str | None:
    reading = read_loss(output, y, candidate.value, context, graph)
    return None if reading is None else reading.verdict


def timed_fit(model: pl.LightningModule, loader: DataLoader, checks: bool) -> float:
    """CPU seconds of ModelChecksCallback's step-zero work (0 when ``checks`` is off)."""
    spent: list[float] = []

    class Timed(ModelChecksCallback):
        def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
            start = time.process_time()
            super().on_before_backward(trainer, pl_module, loss)
            spent.append(time.process_time() - start)

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[Timed()] if checks else [],
        limit_val_batches=0,
    )
    trainer.fit(model, loader)
    return sum(spent)


class Step(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


# ---- image layout -------------------------------------------------------------------------------------------------


def _photo_crops(seed: int, size: int, source: int | None, count: int = LAYOUT_SAMPLES) -> Tensor:
    """``count`` crops (channels-last, ImageNet-normalised) of scikit-learn's two natural photos, resized from
    ``source`` pixels to ``size`` when given."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos, crops = load_sample_images().images, []
    for _ in range(count):
        photo, side = photos[rng.integers(2)], source or size
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(crop, dtype=np.float32) / 255)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy((np.stack(crops) - mean) / std)


def _digit_arrays(seed: int, size: int) -> Tensor:
    data = DigitImages(T.ToTensor(), size=size)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:LAYOUT_SAMPLES]
    return torch.stack([data[int(i)][0] for i in order]).permute(0, 2, 3, 1)


def _collapsed_digits(seed: int) -> Tensor:
    """The demo's bug: digits after ``ToTensor`` normalised with 0-255 ImageNet constants (each channel ~ -2.1 with a
    spread of a few thousandths, a different offset per channel)."""
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    return (_digit_arrays(seed, 12) - mean) / std


def _stripes(seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    time_axis, frequency = torch.linspace(0, 20, 32), torch.linspace(0, 5, 32)
    base = torch.sin(torch.outer(frequency, time_axis)).abs()[None, :, :, None]
    gains = 0.5 + torch.rand(LAYOUT_SAMPLES, 1, 1, 3, generator=generator)
    return base * gains + 0.05 * torch.randn(LAYOUT_SAMPLES, 32, 32, 3, generator=generator)


def _noise(seed: int, smooth: bool) -> Tensor:
    noise = torch.randn(LAYOUT_SAMPLES, 32, 32, 3, generator=torch.Generator().manual_seed(seed))
    return noise.cumsum(1).cumsum(2) if smooth else noise


LAYOUTS: list[tuple[str, Callable[[int], Tensor]]] = [
    ("photo crops 32 px, native", lambda seed: _photo_crops(seed, 32, None)),
    ("photo crops 32 px from 200", lambda seed: _photo_crops(seed, 32, 200)),
    ("photo crops 64 px, native", lambda seed: _photo_crops(seed, 64, None)),
    ("photo crops 224 px, native", lambda seed: _photo_crops(seed, 224, None)),
    ("photo crops 224 px from 400", lambda seed: _photo_crops(seed, 224, 400)),
    ("digits RGB 32 px (PIL)", lambda seed: _digit_arrays(seed, 32)),
    ("digits RGB 8 px (PIL)", lambda seed: _digit_arrays(seed, 8)),
    ("digits RGB 12 px, 0-255 Normalize constants (collapsed)", _collapsed_digits),
    ("3-channel spectrogram-like stripes", _stripes),
    ("white noise", lambda seed: _noise(seed, smooth=False)),
    ("smooth noise (random walk)", lambda seed: _noise(seed, smooth=True)),
]


def layout_table() -> list[tuple[str, float, float]]:
    """Per image kind: the smallest ratio of correctly permuted batches and the largest of reshaped ones."""
    rows = []
    for name, build in LAYOUTS:
        healthy, broken = [], []
        for seed in SEEDS:
            channels_last = build(seed).contiguous()
            batch, height, width, channels = channels_last.shape
            healthy.append(layout_ratio(channels_last.permute(0, 3, 1, 2)))
            broken.append(layout_ratio(channels_last.reshape(batch, channels, height, width)))
        rows.append((name, min(r for r in healthy if r is not None), max(r for r in broken if r is not None)))
    return rows


def cost() -> list[tuple[str, int, float, float]]:
    rows = []
    for name, build, data in (
        ("SmallCNN(width=16), 32x32 RGB, batch 64", lambda: SmallCNN(10, width=16), images),
        ("transformer d=128 x 4 layers, batch 64", lambda: Rows(width=128, layers=4), flat_digits),
    ):
        torch.manual_seed(0)
        net = build()
        params = sum(p.numel() for p in net.parameters())
        loader = DataLoader(data(), batch_size=64, shuffle=True)
        step_time = time.process_time()
        timed_fit(Step(net), loader, checks=False)
        step_time = time.process_time() - step_time
        rows.append((name, params, min(timed_fit(Step(build()), loader, checks=True) for _ in range(3)), step_time))
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def main() -> None:
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    by_family: dict[tuple[str, bool], list[Measured]] = {}
    print(
        f"{'family':7} {'variant':38} {'ok':4} {'verdicts':28} {'match err':>9} {'gap':>8} {'init':>6} {'leak':>8} "
        f"{'spread':>8} {'ignores':>7}"
    )
    for variant in VARIANTS:
        results = [measure(variant, seed) for seed in SEEDS]
        by_family.setdefault((variant.family, variant.healthy), []).extend(results)
        verdicts = ",".join(sorted({str(r.verdict) for r in results}))
        match = [r.match_error for r in results if r.match_error is not None]
        gaps = [r.other_verdict_gap for r in results if r.other_verdict_gap is not None]
        inits = [r.init_ratio for r in results if r.init_ratio is not None]
        leaks = [r.leak for r in results if r.leak is not None]
        spreads = [r.spread for r in results if r.spread is not None]
        print(
            f"{variant.family:7} {variant.name:38} {'yes' if variant.healthy else 'NO':4} {verdicts:28} "
            f"{_fmt(max(match, default=None)):>9} {_fmt(min(gaps, default=None)):>8} "
            f"{_fmt(max(inits, default=None) if variant.healthy else min(inits, default=None)):>6} "
            f"{_fmt(max(leaks, default=None) if variant.healthy else min(leaks, default=None)):>8} "
            f"{_fmt(min(spreads, default=None) if variant.healthy else max(spreads, default=None)):>8} "
            f"{sum(bool(r.ignores_input) for r in results):>3}/{len(results)}"
        )
    print(f"\nseeds per variant: {len(SEEDS)}")

    def values(family: str, healthy: bool, field: str) -> list[float]:
        return [getattr(r, field) for r in by_family.get((family, healthy), []) if getattr(r, field) is not None]

    every = [r for results in by_family.values() for r in results]
    print("\n| check | statistic | healthy | broken | threshold |")
    print("|---|---|---|---|---|")
    match_errors = [r.match_error for r in every if r.match_error is not None]
    gaps = [r.other_verdict_gap for r in every if r.other_verdict_gap is not None]
    print(
        f"| loss identification | relative error of the matching loss (max, all runs) / distance to the nearest "
        f"candidate with another verdict (min) | {_fmt(max(match_errors))} | {_fmt(min(gaps, default=None))} | "
        f"{MATCH_TOLERANCE:g} |"
    )
    print(
        f"| `loss.init_high` | first loss / ln(C) | max {_fmt(max(values('init', True, 'init_ratio')))} | "
        f"min {_fmt(min(values('init', False, 'init_ratio')))} | {INIT_LOSS_RATIO:g} |"
    )
    print(
        f"| `model.batch_mixing` | leaked gradient share (or output change on substitution) | "
        f"max {_fmt(max(values('mixing', True, 'leak')))} | min {_fmt(min(values('mixing', False, 'leak')))} | > 0 |"
    )
    healthy_input = [r for (family, healthy), rs in by_family.items() if healthy for r in rs]
    broken_input = by_family[("input", False)]
    print(
        f"| `model.input_independent` | relative output spread over 4 samples (zero-initialised heads: 0) | "
        f"min {_fmt(min(r.spread for r in healthy_input if r.spread))} (non-zero) | "
        f"max {_fmt(max(values('input', False, 'spread')))} | 0 |"
    )
    print(
        "| `model.input_independent` | runs where outputs, input gradient (0) and parameter gradients are identical "
        f"for 4 different inputs | {sum(bool(r.ignores_input) for r in healthy_input)}/{len(healthy_input)} | "
        f"{sum(bool(r.ignores_input) for r in broken_input)}/{len(broken_input)} | all three |"
    )
    layouts = layout_table()
    print(f"\n| images ({LAYOUT_SAMPLES} per batch, {len(SEEDS)} batches) | permute: min ratio | reshape: max ratio |")
    print("|---|---|---|")
    for name, healthy_min, broken_max in layouts:
        print(f"| {name} | {healthy_min:.3f} | {broken_max:.3f} |")
    detectable = [broken for _, _, broken in layouts if broken < 0.8]
    print(
        "| `input.layout_scrambled` | channels-last / channels-first roughness | "
        f"min {min(h for _, h, _ in layouts):.3f} | max {max(detectable):.3f} (where detectable) | < {LAYOUT_RATIO:g} |"
    )
    print("\n| model | parameters | checks CPU s (once) | whole 1-step fit without checks, CPU s |")
    print("|---|---|---|---|")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rows = cost()
    for name, params, spent, step in rows:
        print(f"| {name} | {params:,} | {spent:.3f} | {step:.3f} |")


if __name__ == "__main__":
    main()
