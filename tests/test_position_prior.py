"""The position prior of dense and token tasks: a model that learned only where the classes tend to be (objects near
the centre) beats the class-frequency entropy without using its input; it is judged against ``H(Y | position)``.
Estimator properties (bias correction, noise over images), the counts (ignored targets, variable sizes, sequences),
a segmentation whose masks belong to other images caught, and healthy twins where position carries real signal."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from support import codes, problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import ConfusionCallback, Severity
from lightning_sanity.learnability import ConfusionSummary, EpochEvidence, beats_the_prior, prior_loss_floor
from lightning_sanity.position_prior import PositionCounts, entropy_levels, position_prior

SIZE, CLASSES = 16, 3


def centred_shapes(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` two-channel noise images with 1-2 squares (class 1, bright in channel 0) and discs (class 2, bright in
    channel 1) whose centres lie near the image centre: the corners are always background."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 2, SIZE, SIZE, generator=generator) * 0.5
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for index in range(n):
        for _ in range(int(torch.randint(1, 3, (1,), generator=generator))):
            cy, cx = (SIZE / 2 + 1.5 * torch.randn(2, generator=generator)).round().tolist()
            radius = int(torch.randint(2, 4, (1,), generator=generator))
            if bool(torch.randint(0, 2, (1,), generator=generator)):
                inside, label = ((yy - cy).abs() <= radius) & ((xx - cx).abs() <= radius), 1
            else:
                inside, label = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2, 2
            masks[index][inside] = label
            images[index, label - 1][inside] += 1.5
    return images, masks


class Segmenter(pl.LightningModule):
    """A small U-Net-ish conv net (zero padding: it can tell the borders from the centre)."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.down = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(16, CLASSES, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.down(x)
        return self.head(torch.cat([skip, self.up(self.bottom(skip))], 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        return F.cross_entropy(self(images), masks)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        logits = self(images)
        self.log("val_loss", F.cross_entropy(logits, masks))
        return logits

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(make_trainer: Any, masks_shuffled: bool, epochs: int = 6) -> tuple[pl.Trainer, ConfusionCallback]:
    pl.seed_everything(0, verbose=False)
    images, masks = centred_shapes(256, seed=1)
    val_images, val_masks = centred_shapes(64, seed=3)
    if masks_shuffled:  # each image gets another image's mask, in both splits
        masks = masks[torch.randperm(len(masks), generator=torch.Generator().manual_seed(2))]
        val_masks = val_masks[torch.randperm(len(val_masks), generator=torch.Generator().manual_seed(4))]
    callback = ConfusionCallback()
    trainer = make_trainer(callbacks=[callback], max_epochs=epochs)
    trainer.fit(
        Segmenter(lr=3e-2),
        DataLoader(TensorDataset(images, masks), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(val_images, val_masks), batch_size=16),
    )
    assert "sanity.internal_error" not in codes(trainer)
    return trainer, callback


def test_masks_of_other_images_with_centred_objects_are_caught(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, masks_shuffled=True)
    summary = callback.summaries["val"]
    assert summary.position_entropy is not None and summary.position_is_the_prior
    history = callback.history["val"]
    # the model learned where objects tend to be: it beats the class frequencies, but not the position prior
    assert history[-1].eval_loss is not None and history[-1].eval_loss < 0.9 * summary.prior_entropy
    assert not beats_the_prior(history[-1])
    verdicts = {"eval.prediction_collapse", "eval.imbalance_masked", "eval.chance_level"}
    found = [f for f in callback.findings if f.code in verdicts and f.severity >= Severity.WARNING]
    assert found, [f.code for f in callback.findings]
    assert all(f.resolved_epoch is None and f.subject == "val" for f in found)
    assert found[0].evidence["position_prior_entropy"] < found[0].evidence["prior_entropy"]
    assert "from its position alone" in found[0].message
    assert "class-prior entropy" not in found[0].message  # the story names the bar that held: the position prior


def test_centred_objects_learned_from_the_image_stay_quiet(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, masks_shuffled=False)
    assert problems(trainer) == []
    summary, latest = callback.summaries["val"], callback.history["val"][-1]
    assert summary.position_entropy is not None and summary.position_is_the_prior
    assert beats_the_prior(latest)  # against the position prior, not only the class frequencies


class Tagger(pl.LightningModule):
    """Embedding + GRU tagger on ``[N, L]`` tokens with -100 padding."""

    def __init__(self, vocabulary: int, tags: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 16)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, tags)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        tokens, tags = batch
        return F.cross_entropy(self(tokens).transpose(1, 2), tags, ignore_index=-100)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def tagged(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Sequences of 6-12 tokens whose first tag is always 0 (a sentence start) and whose other tags are the token's
    class (token id mod 3); padding is tag -100."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 30, (n, 12), generator=generator)
    tags = tokens % 3
    tags[:, 0] = 0
    lengths = torch.randint(6, 13, (n,), generator=generator)
    padded = torch.arange(12)[None, :] >= lengths[:, None]
    tokens[padded], tags[padded] = 0, -100
    return tokens, tags


def test_tagger_whose_first_tag_is_fixed_stays_quiet(make_trainer: Any) -> None:
    pl.seed_everything(0, verbose=False)
    callback = ConfusionCallback()
    trainer = make_trainer(callbacks=[callback], max_epochs=4)
    trainer.fit(
        Tagger(30, 3),
        DataLoader(TensorDataset(*tagged(256, seed=1)), batch_size=32, shuffle=True),
        DataLoader(TensorDataset(*tagged(64, seed=2)), batch_size=32),
    )
    assert problems(trainer) == []
    summary = callback.summaries["val"]
    assert callback.task is not None and callback.task.kind == "token"
    assert summary.position_entropy is not None and summary.position_entropy < summary.prior_entropy
    assert beats_the_prior(callback.history["val"][-1])


def test_miller_madow_corrects_the_plug_in_bias_of_few_images_per_position() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.tensor([0.7, 0.2, 0.1])
    truth = float(-(probabilities * probabilities.log()).sum())
    corrected, plug_in = [], []
    for _ in range(200):  # 12 images of 4 x 4 positions, every position with the same class distribution
        targets = torch.multinomial(probabilities, 12 * 16, replacement=True, generator=generator).view(12, 4, 4)
        counts = F.one_hot(targets, 3).sum(0).movedim(-1, 0)
        level = entropy_levels(counts)[0]
        corrected.append(level[1])
        plug_in.append(level[2])
    bias = truth - sum(plug_in) / len(plug_in)
    assert bias > 0.05  # plug-in entropy of 12 samples per position: clearly low
    assert abs(truth - sum(corrected) / len(corrected)) < bias / 3


def test_noise_is_measured_over_images_not_pixels() -> None:
    """Whole-image targets (every pixel of an image one class): 64 images, not 64 * 64 independent pixels. The
    measured standard error matches the spread of the entropy over repeated draws."""
    generator = torch.Generator().manual_seed(1)
    entropies, noises = [], []
    for _ in range(40):
        metric = PositionCounts(2)
        for _ in range(2):  # the second epoch is scored against the first one's table
            classes = (torch.rand(64, generator=generator) < 0.3).long()
            targets = classes[:, None, None].expand(64, 8, 8)
            metric.update(targets, torch.ones_like(targets, dtype=torch.bool))
            prior = position_prior(metric)
            assert prior is not None
        entropies.append(prior.entropy)
        noises.append(prior.noise)
    spread = torch.tensor(entropies).std().item()
    assert 0.6 * spread < sum(noises) / len(noises) < 1.6 * spread


def test_ignored_targets_are_left_out_and_variable_sizes_disable_the_prior() -> None:
    metric = PositionCounts(3)
    targets = torch.zeros(4, 6, 6, dtype=torch.long)
    targets[:, 0] = 255  # an ignored border row
    metric.update(targets, targets != 255)
    counts, left_out, _ = metric.compute()
    assert int(counts.sum()) == 4 * 5 * 6 and int(left_out) == 0
    metric.update(torch.zeros(4, 8, 8, dtype=torch.long), torch.ones(4, 8, 8, dtype=torch.bool))
    assert position_prior(metric) is None  # images of another size: no position to compare
    sequences = PositionCounts(3)
    for length in (5, 9):  # dynamic padding: sequences counted by absolute position
        sequences.update(torch.zeros(2, length, dtype=torch.long), torch.ones(2, length, dtype=torch.bool))
    prior = position_prior(sequences)
    assert prior is not None and prior.samples == 28


def test_large_images_are_counted_on_a_coarser_grid() -> None:
    metric = PositionCounts(21)
    metric.update(torch.zeros(1, 512, 512, dtype=torch.long), torch.ones(1, 512, 512, dtype=torch.bool))
    assert metric.cell == 4 and metric.grid == (128, 128)
    assert 21 * math.prod(metric.grid) <= metric.capacity * 21


def test_the_training_loss_floor_follows_the_lower_position_prior() -> None:
    counts = [torch.tensor(c) for c in ([8000, 0, 0], [10000, 0, 0], [8000, 1000, 1000])]
    summary = ConfusionSummary.from_counts(*counts)
    positional = ConfusionSummary.from_counts(*counts).__class__(
        **{**summary.__dict__, "position_entropy": 0.4, "position_noise": 0.01}
    )
    assert positional.input_free_entropy == 0.4 and summary.input_free_entropy == summary.prior_entropy
    assert prior_loss_floor(positional) == 0.4 - 2.0 * 0.01
    entry = EpochEvidence(3, 100, 0.45, 0.45, positional)
    assert summary.prior_entropy * 0.98 > 0.45 and not beats_the_prior(entry)
