"""``target.mask_interpolated``: segmentation masks resampled with interpolation, judged on real fits of a small U-Net
over generated scenes (shapes of 3-5 classes on a textured background, torchvision transforms on PIL images), and the
pure rules of :mod:`lightning_sanity.dense_targets` on masks healthy programs produce."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support import codes, problems, sanity_warnings
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from lightning_sanity import BatchStatsCallback, Severity
from lightning_sanity.dense_targets import MIN_FRACTION_BAND, MaskEvidence, dense_class_targets, interpolating_steps

SCENE, SIZE = 96, 32
BLENDING_SIZE = 36
"""Bilinear without antialiasing at a whole factor (96 -> 32) samples source pixels exactly and blends nothing."""
FAST = {"limit_train_batches": 4, "limit_val_batches": 2, "num_sanity_val_steps": 1}


def scene(index: int, classes: int, kind: str = "shapes") -> tuple[Image.Image, np.ndarray]:
    """A 96x96 RGB image and its class-id mask: 1-3 shapes on a textured background, or cells with a boundary class
    (id 1, 2 px, between the background 0 and the cells 2) when ``kind == "cells"``."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:SCENE, 0:SCENE].astype(np.float64)
    image = rng.uniform(0, 80, (SCENE, SCENE, 3)) + 40 * np.sin(xx / rng.uniform(3, 9))[..., None]
    mask = np.zeros((SCENE, SCENE), np.int64)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.2, 0.8, 2) * SCENE
        radius = rng.uniform(0.1, 0.3) * SCENE
        if rng.integers(2):
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        else:
            inside = (abs(yy - cy) <= radius) & (abs(xx - cx) <= radius * 0.7)
        mask[inside] = 2 if kind == "cells" else rng.integers(1, classes)
        image[inside] = rng.uniform(60, 255, 3)
    if kind == "cells":  # the inner 2 px of every cell, as skimage's find_boundaries draws it
        ring = np.zeros_like(mask, bool)
        padded = np.pad(mask, 2, mode="edge")
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                if abs(dy) + abs(dx) <= 2:
                    ring |= padded[2 + dy : 2 + dy + SCENE, 2 + dx : 2 + dx + SCENE] != mask
        mask[ring & (mask == 2)] = 1
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), mask


class Scenes(Dataset):
    """A segmentation dataset as torchvision's VisionDatasets are written: PIL image and mask, ``transform`` and
    ``target_transform`` (a ``PILToTensor`` mask), or one v2 ``transforms`` on ``(Image, Mask)``."""

    def __init__(
        self,
        split: str,
        classes: int = 4,
        transform: Any = None,
        target_transform: Any = None,
        transforms: Any = None,
        kind: str = "shapes",
    ) -> None:
        self.offset = 0 if split == "train" else 10_000
        self.classes, self.kind = classes, kind
        self.transform, self.target_transform, self.transforms = transform, target_transform, transforms

    def __len__(self) -> int:
        return 96

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = scene(self.offset + index, self.classes, self.kind)
        if self.transforms is not None:
            out_image, out_mask = self.transforms(tv_tensors.Image(T.functional.pil_to_tensor(image)),
                                                  tv_tensors.Mask(torch.from_numpy(mask)))  # fmt: skip
            return out_image, out_mask.long()
        target = self.target_transform(Image.fromarray(mask.astype(np.uint8), mode="L"))
        return self.transform(image), target.squeeze(0).long()


class UNet(pl.LightningModule):
    """Two levels, one skip connection: enough to be a segmentation model."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.down(x)
        return self.head(torch.cat([skip, self.up(self.bottom(skip))], 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        return F.cross_entropy(self(images), masks.flatten(0, -3).long())  # [N, H, W] from [N, H, W] or [N, 1, H, W]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, masks = batch
        self.log("val_loss", F.cross_entropy(self(images), masks.flatten(0, -3).long()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(make_trainer: Any, train: Dataset, val: Dataset, classes: int = 4) -> pl.Trainer:
    trainer = make_trainer(callbacks=[BatchStatsCallback()], **FAST)
    with sanity_warnings():
        trainer.fit(UNet(classes), DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=16))
    assert "sanity.internal_error" not in codes(trainer)  # a crashed check would make every quiet test pass
    return trainer


def interpolated(trainer: pl.Trainer) -> dict[str, Any]:
    return {f.subject: f for f in trainer.callbacks[0].findings if f.code == "target.mask_interpolated"}  # type: ignore[attr-defined]


IMAGE = T.Compose([T.Resize(SIZE), T.ToTensor()])


def resized_masks(interpolation: InterpolationMode) -> T.Compose:
    return T.Compose([T.Resize(SIZE, interpolation=interpolation), T.PILToTensor()])


def test_masks_resized_bilinearly_are_reported_with_ids_loader_and_transform(make_trainer: Any) -> None:
    bilinear = resized_masks(InterpolationMode.BILINEAR)
    train = Scenes("train", transform=IMAGE, target_transform=bilinear)
    val = Scenes("val", transform=IMAGE, target_transform=resized_masks(InterpolationMode.NEAREST))
    trainer = fit(make_trainer, train, val)
    found = interpolated(trainer)
    assert set(found) == {"train"}  # the val masks are resized with nearest
    finding = found["train"]
    assert finding.severity is Severity.WARNING and finding.stage == "train"
    assert finding.step < 3  # judged on the first check_batches (3) batches
    assert finding.evidence["blended_ids"] and set(map(int, finding.evidence["blended_ids"])) <= {1, 2}
    assert finding.evidence["transforms"] == ["Resize(interpolation=bilinear) at position 0 of target_transform"]
    assert "The train dataloader's masks go through Resize(interpolation=bilinear)" in finding.message
    assert "InterpolationMode.NEAREST" in finding.hint and "tv_tensors.Mask" in finding.hint


@pytest.mark.parametrize("classes", [3, 5])
def test_masks_resized_with_nearest_stay_quiet(make_trainer: Any, classes: int) -> None:
    nearest = resized_masks(InterpolationMode.NEAREST)
    train = Scenes("train", classes, transform=IMAGE, target_transform=nearest)
    trainer = fit(make_trainer, train, Scenes("val", classes, transform=IMAGE, target_transform=nearest), classes)
    assert problems(trainer) == []


def test_joint_v2_geometric_and_photometric_augmentation_on_masks_stays_quiet(make_trainer: Any) -> None:
    # v2 resamples a tv_tensors.Mask with nearest whatever interpolation the transform is given.
    train = v2.Compose(
        [
            v2.RandomResizedCrop(SIZE, scale=(0.3, 1.0), interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(20, interpolation=InterpolationMode.BILINEAR),
            v2.ColorJitter(0.4, 0.4, 0.4),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    val = v2.Compose([v2.Resize(SIZE, antialias=True), v2.ToDtype(torch.float32, scale=True)])
    trainer = fit(make_trainer, Scenes("train", 5, transforms=train), Scenes("val", 5, transforms=val), 5)
    assert problems(trainer) == []


def test_a_drawn_boundary_class_between_background_and_cells_stays_quiet(make_trainer: Any) -> None:
    nearest = resized_masks(InterpolationMode.NEAREST)
    train = Scenes("train", transform=IMAGE, target_transform=nearest, kind="cells")
    trainer = fit(make_trainer, train, Scenes("val", transform=IMAGE, target_transform=nearest, kind="cells"), 3)
    assert problems(trainer) == []


class FloatMasks(Dataset):
    """Tensors resized in ``__getitem__`` by ``F.interpolate``: the mask still float ``[1, H, W]`` (cast to long in the
    step)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = scene(index, 5)
        pixels = T.functional.to_tensor(image)[None]
        target = torch.from_numpy(mask).float()[None, None]
        align = None if self.mode == "nearest" else False
        return (
            F.interpolate(pixels, size=(BLENDING_SIZE, BLENDING_SIZE), mode="bilinear", align_corners=False)[0],
            F.interpolate(target, size=(BLENDING_SIZE, BLENDING_SIZE), mode=self.mode, align_corners=align)[0],
        )


def test_float_masks_interpolated_before_the_cast_are_reported_and_nearest_twin_is_quiet(make_trainer: Any) -> None:
    broken = fit(make_trainer, FloatMasks("bilinear"), FloatMasks("nearest"), 5)
    finding = interpolated(broken)["train"]
    assert finding.evidence["fractional_share"] > 0 and finding.evidence["fractional_on_bands"] >= MIN_FRACTION_BAND
    assert "fractional values" in finding.message
    assert problems(fit(make_trainer, FloatMasks("nearest"), FloatMasks("nearest"), 5)) == []


# The pure rules on masks healthy programs produce --------------------------------------------------------------


def judge(masks: list[Tensor]) -> Any:
    evidence = MaskEvidence()
    for batch in masks:
        evidence.update(batch)
    return evidence.verdict()


def test_dense_targets_are_per_pixel_ids_of_the_inputs_size() -> None:
    images = torch.zeros(4, 3, 16, 16)
    assert dense_class_targets(images, torch.zeros(4, 1, 16, 16, dtype=torch.long)).shape == (4, 16, 16)  # type: ignore[union-attr]
    assert dense_class_targets(images, torch.zeros(4, 16, 16)) is not None
    assert dense_class_targets(images, torch.zeros(4, dtype=torch.long)) is None  # one label per sample
    assert dense_class_targets(images, torch.zeros(4, 8, 8, dtype=torch.long)) is None  # another size
    assert dense_class_targets(images, torch.zeros(4, 3, 16, 16)) is None  # an image target (autoencoder)
    assert dense_class_targets(images, torch.zeros(4, 16, 16, dtype=torch.bool)) is None
    assert dense_class_targets(torch.zeros(4, 3, 4, 4), torch.zeros(4, 4, 4, dtype=torch.long)) is None  # too small


def test_void_rings_depth_maps_heatmaps_and_soft_binary_masks_are_not_interpolated_masks() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    scenes = [torch.from_numpy(scene(i, 21)[1]) for i in range(48)]
    masks = torch.stack(scenes)[:, ::3, ::3].contiguous()  # nearest, 21 classes
    void = masks.clone()
    grown = F.max_pool2d((masks > 0).float()[:, None], 3, 1, 1)[:, 0] > 0
    void[grown & ~(-F.max_pool2d(-(masks > 0).float()[:, None], 3, 1, 1)[:, 0] > 0)] = 255  # VOC-style void border
    depth = (3000 + 20 * yy + 7 * xx).round().long().expand(48, 32, 32).clone()
    depth[:, 8:20, 8:20] = 1200 + 3 * xx[8:20, 8:20].long()
    bumps = torch.exp(-((yy - 16) ** 2 + (xx - 10) ** 2) / 8).expand(48, 32, 32)
    soft = F.interpolate((masks > 0).float()[:, None], scale_factor=2, mode="bilinear")[:, 0]  # 0/1 mask, soft edges
    for healthy in (masks, void, depth, bumps.where(bumps > 1e-3, 0), soft):
        assert judge(list(healthy.split(16))) is None


def test_blended_ids_between_every_pair_of_regions_are_interpolation() -> None:
    scenes = torch.stack([torch.from_numpy(scene(i, 5)[1]) for i in range(48)]).float()[:, None]
    bilinear = F.interpolate(scenes, size=(BLENDING_SIZE,) * 2, mode="bilinear", align_corners=False)[:, 0]
    verdict = judge(list(bilinear.round().long().split(16)))
    assert verdict is not None and len(verdict.blended) >= 2
    assert all(0 < value < 4 for value in verdict.blended)  # blends lie strictly between the extreme ids
    assert judge(list(bilinear.split(16))).fractional_share > 0  # type: ignore[union-attr]
    nearest = F.interpolate(scenes, size=(BLENDING_SIZE,) * 2, mode="nearest")[:, 0]
    assert judge(list(nearest.long().split(16))) is None


def test_interpolating_steps_read_the_mask_transforms_of_wrapped_datasets() -> None:
    train = Scenes("train", transform=IMAGE, target_transform=resized_masks(InterpolationMode.BICUBIC))
    subset = torch.utils.data.Subset(train, range(8))
    assert interpolating_steps(DataLoader(subset)) == [
        "Resize(interpolation=bicubic) at position 0 of target_transform"
    ]
    nearest = Scenes("train", transform=IMAGE, target_transform=resized_masks(InterpolationMode.NEAREST))
    assert interpolating_steps(DataLoader(nearest)) == []
    joint = Scenes("train", transforms=v2.Resize(SIZE, interpolation=InterpolationMode.BILINEAR))
    assert interpolating_steps(DataLoader(joint)) == []  # v2 resamples tv_tensors.Mask with nearest
