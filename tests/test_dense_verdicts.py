"""Segmentation (a ``dense`` task) judged by ConfusionCallback: per-class IoU and mIoU, a model that learned nothing
(masks that do not belong to their images) told so per pixel, and logged IoU / Dice scores checked against the
correct readings of the same pixels (``eval.metric_mismatch``)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from support import codes, problems
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex
from torchmetrics.functional.classification import multiclass_jaccard_index

from lightning_sanity import ConfusionCallback, Severity
from lightning_sanity.learnability import ConfusionSummary

SIZE, CLASSES = 16, 3


def shapes(n: int, seed: int, empty_tail: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` two-channel noise images with 1-2 squares (class 1, bright in channel 0) and discs (class 2, bright in
    channel 1), wrapped around the borders, on a background (class 0, about 80 % of the pixels); the last
    ``empty_tail`` images hold no shape."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 2, SIZE, SIZE, generator=generator) * 0.5
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for index in range(n - empty_tail):
        for _ in range(int(torch.randint(1, 3, (1,), generator=generator))):
            cy, cx = torch.randint(0, SIZE, (2,), generator=generator).tolist()
            radius = int(torch.randint(2, 4, (1,), generator=generator))
            # wrapped around the borders: every pixel is as likely a shape's, so a mask says nothing by position
            dy, dx = _wrapped(yy - cy), _wrapped(xx - cx)
            if bool(torch.randint(0, 2, (1,), generator=generator)):
                inside, label = (dy.abs() <= radius) & (dx.abs() <= radius), 1
            else:
                inside, label = dy**2 + dx**2 <= radius**2, 2
            masks[index][inside] = label
            images[index, label - 1][inside] += 1.5
    return images, masks


def _wrapped(offset: Tensor) -> Tensor:
    """Offsets on a torus of side ``SIZE``: in ``[-SIZE / 2, SIZE / 2)``."""
    return (offset + SIZE // 2) % SIZE - SIZE // 2


class Segmenter(pl.LightningModule):
    """A small U-Net-ish conv net (one skip connection) trained with pixel-wise cross-entropy."""

    def __init__(self) -> None:
        super().__init__()
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
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(
    make_trainer: Any, model: type[pl.LightningModule], masks_shuffled: bool = False, epochs: int = 5, **kwargs: Any
) -> tuple[pl.Trainer, ConfusionCallback]:
    pl.seed_everything(0, verbose=False)
    images, masks = shapes(192, seed=1)
    if masks_shuffled:  # each image gets another image's mask
        masks = masks[torch.randperm(len(masks), generator=torch.Generator().manual_seed(2))]
    val = kwargs.pop("val", None) or shapes(64, seed=3)
    callback = ConfusionCallback()
    trainer = make_trainer(callbacks=[callback], max_epochs=epochs, **kwargs)
    trainer.fit(
        model(),
        DataLoader(TensorDataset(images, masks), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(*val), batch_size=16),
    )
    assert "sanity.internal_error" not in codes(trainer)
    return trainer, callback


def test_healthy_segmenter_stays_quiet_and_logs_per_class_iou(make_trainer: Any, tmp_path: Any) -> None:
    trainer, callback = fit(make_trainer, Segmenter, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    assert problems(trainer) == []
    assert callback.task is not None and callback.task.kind == "dense"
    summary = callback.summaries["val"]
    assert summary.total == 64 * SIZE * SIZE
    assert summary.miou > 0.6
    assert summary.class_shares[0] > 0.75  # mostly background
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"sanity/confusion/val/miou", "sanity/confusion/val/iou_c0", "sanity/confusion/val/iou_c2"} <= set(logged)


def test_masks_shuffled_across_images_collapse_to_background(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, Segmenter, masks_shuffled=True, epochs=5)
    verdicts = [f for f in callback.findings if f.code.startswith("eval.") and f.severity >= Severity.WARNING]
    assert {"eval.prediction_collapse", "eval.imbalance_masked"} & {f.code for f in verdicts}, verdicts
    collapse = next(f for f in verdicts if f.code in ("eval.prediction_collapse", "eval.imbalance_masked"))
    assert collapse.subject == "val" and collapse.resolved_epoch is None
    assert collapse.evidence["top_predicted_class"] == "0"  # the background
    assert collapse.evidence["samples"] == 64 * SIZE * SIZE  # counted per pixel
    # said for pixels: the fix is a mask that belongs to its image (a sampler would not help)
    assert "pixels" in collapse.message or "predictions are class" in collapse.message
    assert "mask" in collapse.hint and "WeightedRandomSampler" not in collapse.hint
    assert callback.summaries["val"].miou < 0.4


def test_iou_properties_follow_torchmetrics_jaccard_index() -> None:
    predicted = torch.tensor([0, 0, 1, 1, 1, 0, 2, 0])
    targets = torch.tensor([0, 0, 1, 0, 1, 1, 0, 0])  # class 2 only predicted, class 3 absent
    matrix = torch.zeros(4, 4, dtype=torch.long).index_put_((targets, predicted), torch.tensor(1), accumulate=True)
    summary = ConfusionSummary.from_counts(matrix.diagonal(), matrix.sum(0), matrix.sum(1))
    expected = multiclass_jaccard_index(predicted, targets, 4, average="none")
    assert torch.allclose(torch.tensor(summary.ious[:3], dtype=torch.float64), expected[:3].double(), atol=1e-6)
    assert torch.isnan(torch.tensor(summary.ious[3]))
    assert abs(summary.miou - float(multiclass_jaccard_index(predicted, targets, 4, average="macro"))) < 1e-6


# ------------------------------------------------------------------ logged IoU / Dice: eval.metric_mismatch
class LogsScores(Segmenter):
    """Logs IoU and Dice every correct way: metric objects, per-step values, one minus a Dice loss."""

    def __init__(self) -> None:
        super().__init__()
        self.iou = MulticlassJaccardIndex(CLASSES)
        self.dice = MulticlassF1Score(CLASSES)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        logits = self(images)
        predicted = logits.argmax(1)
        self.iou(predicted, masks)
        self.dice(predicted, masks)
        self.log_dict({"val_iou": self.iou, "val_dice": self.dice})
        self.log("val/miou_step", multiclass_jaccard_index(predicted, masks, CLASSES))
        fg = predicted > 0
        union = (fg | (masks > 0)).sum().clamp(min=1)
        self.log("val/foreground_jaccard", (fg & (masks > 0)).sum() / union)
        probabilities = logits.softmax(1)
        one_hot = F.one_hot(masks, CLASSES).permute(0, 3, 1, 2)
        soft_dice = (2 * (probabilities * one_hot).sum((0, 2, 3)) / (probabilities + one_hot).sum((0, 2, 3))).mean()
        self.log("val_dice_loss", 1 - soft_dice)
        self.log("val_soft_dice", soft_dice)
        return logits


class AssignsIoU(Segmenter):
    """The bug: ``self.iou_value = ...`` per batch, logged at the epoch's end: the last batch's IoU only."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        logits = self(images)
        self.iou_value = multiclass_jaccard_index(logits.argmax(1), masks, CLASSES)
        return logits

    def on_validation_epoch_end(self) -> None:
        self.log("val_miou", self.iou_value)


class FlippedTargetIoU(Segmenter):
    """The bug: the IoU scored against a flipped copy of the masks (an augmentation applied in the metric only)."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        logits = self(images)
        self.log("val_jaccard", multiclass_jaccard_index(logits.argmax(1), masks.flip(-1), CLASSES))
        return logits


def test_correctly_logged_iou_and_dice_stay_quiet(make_trainer: Any) -> None:
    trainer, _ = fit(make_trainer, LogsScores)
    assert problems(trainer) == []


def test_an_iou_assigned_per_batch_instead_of_accumulated_is_a_metric_mismatch(make_trainer: Any) -> None:
    val = shapes(72, seed=3, empty_tail=8)  # the last batch: 8 images of background only
    trainer, callback = fit(make_trainer, AssignsIoU, val=val)
    [finding] = [f for f in callback.findings if f.code == "eval.metric_mismatch"]
    assert finding.severity is Severity.ERROR and finding.subject == "val:val_miou"
    assert finding.evidence["metric"] == "IoU"
    assert finding.evidence["logged"] > finding.evidence["accumulated_mean"] + 0.1
    assert "+=" in finding.hint


def test_an_iou_against_flipped_masks_is_a_metric_mismatch(make_trainer: Any) -> None:
    trainer, callback = fit(make_trainer, FlippedTargetIoU)
    [finding] = [f for f in callback.findings if f.code == "eval.metric_mismatch"]
    assert finding.subject == "val:val_jaccard"
    assert finding.evidence["logged"] < finding.evidence["accumulated_mean"] - 0.1
