"""TransformParityCallback: the preprocessing pipelines, modelled and compared across splits, on real fits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from support import codes, problems, sanity_warnings
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset, TensorDataset, random_split
from torchvision import transforms as T
from torchvision.transforms import v2

from lightning_sanity import SanityError, Severity, TransformParityCallback, collect_findings
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN, mlp, wine_tensors
from lightning_sanity.pipelines import (
    Pipeline,
    Scale,
    constants_scale,
    find_normalize,
    index_overlap,
    index_segments,
    is_random,
    sample_indices,
)
from lightning_sanity.transform_parity import normalization_gap

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MEAN_255, STD_255 = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def digits(transform: Any, split: str = "train") -> DigitImages:
    return DigitImages(transform, split=split)  # type: ignore[arg-type]


class MultiValClassifier(Classifier):
    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().validation_step(batch, batch_idx)


def fit(
    make_trainer: Callable[..., pl.Trainer],
    train: Any,
    val: Any,
    callback: TransformParityCallback | None = None,
    **trainer_options: Any,
) -> pl.Trainer:
    """Fit a small CNN for two batches on ``train`` (a dataset or dataloader) and validate one batch of ``val``."""
    options = {"limit_train_batches": 2, "limit_val_batches": 1, **trainer_options}
    trainer = make_trainer(callbacks=[callback or TransformParityCallback()], **options)
    with sanity_warnings():
        model = MultiValClassifier(SmallCNN(10, width=8))
        trainer.fit(model, _loader(train, shuffle=True), _loader(val))
    return trainer


def _loader(data: Any, shuffle: bool = False) -> Any:
    if isinstance(data, list):
        return [_loader(item) for item in data]
    return data if isinstance(data, DataLoader) or data is None else DataLoader(data, batch_size=32, shuffle=shuffle)


def findings_of(trainer: pl.Trainer, code: str) -> list[Any]:
    return [f for f in collect_findings(trainer) if f.code == code]


# ---------------------------------------------------------------- case 1 and its healthy twins


def test_case_1_v1_normalize_with_0_255_constants_after_to_tensor_and_val_without_normalize(
    make_trainer: Any,
) -> None:
    train = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN_255, STD_255)])
    val = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert codes(trainer, Severity.ERROR) == {"transform.normalize_scale", "transform.normalize_missing"}
    [scale] = findings_of(trainer, "transform.normalize_scale")
    assert "at position 3 of the train pipeline receives ToTensor at position 2 output in [0, 1]" in scale.message
    assert scale.evidence["mean"] == MEAN_255
    assert scale.evidence["output_range"][0] == pytest.approx(-2.118, abs=1e-3)
    assert "mean=[0.485, 0.456, 0.406]" in scale.hint
    [missing] = findings_of(trainer, "transform.normalize_missing")
    assert missing.subject == "train|val"
    assert "the val pipeline (Resize → CenterCrop → ToTensor) does not" in missing.message


def test_case_1_v2_pipelines(make_trainer: Any) -> None:
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    train = v2.Compose(
        [v2.RandomResizedCrop(32), v2.RandomHorizontalFlip(), *to_float, v2.Normalize(MEAN_255, STD_255)]
    )
    val = v2.Compose([v2.Resize(32), v2.CenterCrop(32), *to_float])
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert codes(trainer, Severity.ERROR) == {"transform.normalize_scale", "transform.normalize_missing"}
    [scale] = findings_of(trainer, "transform.normalize_scale")
    assert "receives ToDtype at position 3 output in [0, 1]" in scale.message


HEALTHY_PIPELINES = {
    "v1 imagenet style": (
        T.Compose(
            [
                T.RandomResizedCrop(32, scale=(0.5, 1.0)),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.3, 0.3, 0.3),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
                T.RandomErasing(),
            ]
        ),
        T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)]),
    ),
    "v2 imagenet style": (
        v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(32, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.TrivialAugmentWide(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        ),
        v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(32),
                v2.CenterCrop(32),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        ),
    ),
    "v2 in nn.Sequential with 0-255 constants on 0-255 floats": (
        nn.Sequential(
            v2.PILToTensor(), v2.RandomCrop(32, padding=2), v2.ToDtype(torch.float32), v2.Normalize(MEAN_255, STD_255)
        ),
        nn.Sequential(v2.PILToTensor(), v2.ToDtype(torch.float32), v2.Normalize(MEAN_255, STD_255)),
    ),
    "0-1 constants vs equivalent 0-255 constants": (
        T.Compose([T.RandomRotation(10), T.ToTensor(), T.Normalize(MEAN, STD)]),
        T.Compose(
            [
                T.PILToTensor(),
                T.ConvertImageDtype(torch.float32),
                T.Lambda(lambda x: x * 255),
                T.Normalize(MEAN_255, STD_255),
            ]
        ),
    ),
    "no normalisation anywhere": (T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), T.ToTensor()),
    "one-value mean/std, per-split statistics": (
        T.Compose([T.RandomAffine(5), T.ToTensor(), T.Normalize([0.1307], [0.3081])]),
        T.Compose([T.ToTensor(), T.Normalize([0.1325], [0.3104])]),
    ),
    "[-1, 1] normalisation and a deterministic GaussianBlur in val": (
        T.Compose([T.RandomGrayscale(), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]),
        T.Compose(
            [
                T.GaussianBlur(3, sigma=1.0),
                T.RandomHorizontalFlip(p=0.0),
                T.ToTensor(),
                T.Normalize([0.5] * 3, [0.5] * 3),
            ]
        ),
    ),
}


@pytest.mark.parametrize("name", list(HEALTHY_PIPELINES))
def test_healthy_pipelines_with_asymmetric_augmentation_are_silent(make_trainer: Any, name: str) -> None:
    train, val = HEALTHY_PIPELINES[name]
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert problems(trainer) == []
    assert codes(trainer) == set()


# ---------------------------------------------------------------- one code at a time


def test_normalize_scale_0_1_constants_on_0_255_floats_in_both_splits(make_trainer: Any) -> None:
    pipeline = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=False), v2.Normalize(MEAN, STD)])
    trainer = fit(make_trainer, digits(pipeline), digits(pipeline, "val"))
    scale = findings_of(trainer, "transform.normalize_scale")
    assert {f.subject for f in scale} == {"train:2", "val:2"}
    assert "output in 0-255" in scale[0].message and "written for [0, 1] data" in scale[0].message
    assert codes(trainer, Severity.WARNING) == {
        "transform.normalize_scale"
    }  # same mistake on both sides: no parity error


def test_lambda_step_is_measured(make_trainer: Any) -> None:
    to_unit = T.Compose([T.PILToTensor(), T.Lambda(lambda x: x.float() / 255), T.Normalize(MEAN_255, STD_255)])
    to_byte = T.Compose([T.PILToTensor(), T.Lambda(lambda x: x.float()), T.Normalize(MEAN_255, STD_255)])
    bad = fit(make_trainer, digits(to_unit), digits(to_unit, "val"))
    [finding, _] = findings_of(bad, "transform.normalize_scale")
    assert "receives Lambda at position 1 output in [0, 1] (measured on 4 samples" in finding.message
    good = fit(make_trainer, digits(to_byte), digits(to_byte, "val"))
    assert problems(good) == []


def test_lambda_that_normalises_by_hand_is_not_normalize_missing(make_trainer: Any) -> None:
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    train = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    val = T.Compose([T.ToTensor(), T.Lambda(lambda x: (x - mean) / std)])
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert problems(trainer) == []


def test_normalize_mismatch(make_trainer: Any) -> None:
    train = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    val = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert codes(trainer, Severity.WARNING) == {"transform.normalize_mismatch"}
    [finding] = findings_of(trainer, "transform.normalize_mismatch")
    assert finding.evidence["std_ratio"] == pytest.approx(0.5 / 0.224, rel=1e-3)


def test_scaling_mismatch_without_normalize(make_trainer: Any) -> None:
    train = T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])
    val = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=False)])
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert codes(trainer, Severity.WARNING) == {"transform.scaling_mismatch"}
    [finding] = findings_of(trainer, "transform.scaling_mismatch")
    assert "train inputs are on the [0, 1] scale (ToTensor at position 1)" in finding.message
    assert "val inputs on the 0-255 scale (PILToTensor at position 0)" in finding.message


def test_scaling_mismatch_before_the_same_normalize(make_trainer: Any) -> None:
    train = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    val = T.Compose(
        [T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Lambda(lambda x: x * 255), T.Normalize(MEAN, STD)]
    )
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert codes(trainer, Severity.WARNING) == {"transform.scaling_mismatch", "transform.normalize_scale"}
    assert [f.subject for f in findings_of(trainer, "transform.normalize_scale")] == ["val:3"]


def test_random_in_eval_v1_and_v2(make_trainer: Any) -> None:
    train = T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])
    val = T.Compose([T.Resize(32), T.RandomHorizontalFlip(), T.ColorJitter(0.2), T.ToTensor()])
    test = v2.Compose([v2.ToImage(), v2.RandAugment(), v2.ToDtype(torch.float32, scale=True)])
    trainer = fit(make_trainer, digits(train), [digits(val, "val"), digits(test, "val")])
    findings = findings_of(trainer, "transform.random_in_eval")
    assert [f.severity for f in findings] == [Severity.WARNING, Severity.WARNING]
    assert "RandomHorizontalFlip at position 1, ColorJitter at position 2" in findings[0].message
    assert findings[0].subject == "val" and findings[1].subject == "val/dataloader_idx_1"
    assert codes(trainer, Severity.WARNING) == {"transform.random_in_eval"}


def test_output_mismatch(make_trainer: Any) -> None:
    train = T.Compose([T.RandomResizedCrop(32), T.ToTensor()])
    val = T.Compose([T.CenterCrop(28), T.ToTensor()])
    trainer = fit(make_trainer, digits(train), digits(val, "val"))
    assert codes(trainer, Severity.WARNING) == {"transform.output_mismatch"}
    [finding] = findings_of(trainer, "transform.output_mismatch")
    assert finding.evidence["train_shape"] == [3, 32, 32] and finding.evidence["other_shape"] == [3, 28, 28]


def test_multiple_val_dataloaders_name_the_culprit(make_trainer: Any) -> None:
    good = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    trainer = fit(make_trainer, digits(good), [digits(good, "val"), digits(T.ToTensor(), "val")])
    [missing] = findings_of(trainer, "transform.normalize_missing")
    assert missing.subject == "train|val/dataloader_idx_1"
    assert codes(trainer, Severity.WARNING) == {"transform.normalize_missing"}
    healthy = fit(make_trainer, digits(good), [digits(good, "val"), digits(good, "val")])
    assert problems(healthy) == []


def test_dataset_without_transform_is_unreachable_info_only(make_trainer: Any) -> None:
    train, val = TensorDataset(*wine_tensors("train")), TensorDataset(*wine_tensors("val"))
    trainer = make_trainer(callbacks=[TransformParityCallback()], limit_train_batches=2)
    trainer.fit(Classifier(mlp(13, 3)), DataLoader(train, batch_size=16), DataLoader(val, batch_size=16))
    assert problems(trainer) == []
    assert {f.subject for f in findings_of(trainer, "transform.unreachable")} == {"train", "val"}


def test_strict_raises_before_the_first_optimizer_step(make_trainer: Any) -> None:
    train = T.Compose([T.ToTensor(), T.Normalize(MEAN_255, STD_255)])
    model = Classifier(SmallCNN(10, width=8))
    trainer = make_trainer(callbacks=[TransformParityCallback(strict=True)], num_sanity_val_steps=0)
    with sanity_warnings(), pytest.raises(SanityError, match="transform.normalize_scale"):
        trainer.fit(model, DataLoader(digits(train), batch_size=32), DataLoader(digits(train, "val"), batch_size=32))
    assert trainer.global_step == 0


def test_pairs_compared_without_sanity_check_and_once_per_fit(make_trainer: Any) -> None:
    good = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    trainer = fit(
        make_trainer,
        digits(good),
        digits(T.ToTensor(), "val"),
        num_sanity_val_steps=0,
        max_epochs=2,
        limit_val_batches=1,
    )
    [missing] = findings_of(trainer, "transform.normalize_missing")
    assert missing.count == 1 and missing.step == 0


def test_validation_loaded_only_later_is_compared_when_it_is(make_trainer: Any) -> None:
    good = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    trainer = fit(
        make_trainer,
        digits(good),
        digits(T.ToTensor(), "val"),
        num_sanity_val_steps=0,
        check_val_every_n_epoch=2,
        max_epochs=2,
    )
    assert codes(trainer, Severity.WARNING) == {"transform.normalize_missing"}
    [missing] = findings_of(trainer, "transform.normalize_missing")
    assert missing.step == 4 and missing.stage == "val"


# ---------------------------------------------------------------- overlap between splits


def test_split_overlap_same_dataset_object(make_trainer: Any) -> None:
    data = digits(T.ToTensor())
    trainer = fit(make_trainer, data, data)
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert overlap.severity is Severity.ERROR
    assert overlap.evidence["fraction"] == 1.0 and overlap.evidence["how"] == "the same dataset object"


def test_split_overlap_subsets_with_intersecting_indices(make_trainer: Any) -> None:
    data = digits(T.ToTensor(), "all")
    trainer = fit(make_trainer, Subset(data, range(0, 1200)), Subset(data, range(1000, 1400)))
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert (overlap.evidence["shared"], overlap.evidence["total"]) == (200, 400)
    assert "shares 200 of its 400 samples (50%)" in overlap.message


def test_disjoint_subsets_and_random_split_are_silent(make_trainer: Any) -> None:
    data = digits(T.ToTensor(), "all")
    train, val = random_split(data, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    assert problems(fit(make_trainer, train, val)) == []
    assert problems(fit(make_trainer, Subset(data, range(0, 1400)), Subset(data, range(1400, 1797)))) == []


def test_same_raw_data_with_different_transforms_overlaps_by_content(make_trainer: Any) -> None:
    train = digits(T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]))
    same_file = digits(T.ToTensor(), "train")
    trainer = fit(make_trainer, train, same_file)
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert overlap.evidence["how"] == "identical raw samples" and overlap.evidence["fraction"] == 1.0


def test_case_3_test_set_is_the_training_set(make_trainer: Any) -> None:
    pipeline = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    trainer = fit(make_trainer, digits(pipeline), digits(pipeline, "val"))
    assert problems(trainer) == []
    with sanity_warnings():
        trainer.test(trainer.lightning_module, DataLoader(digits(pipeline, "train"), batch_size=64))
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert overlap.subject == "train|test" and overlap.stage == "test"
    healthy = fit(make_trainer, digits(pipeline), digits(pipeline, "val"))
    healthy.test(healthy.lightning_module, DataLoader(digits(pipeline, "val"), batch_size=64))
    assert problems(healthy) == []


def test_tensor_datasets_compare_by_content(make_trainer: Any) -> None:
    train = TensorDataset(*wine_tensors("train"))
    for val, expected in (
        (TensorDataset(*wine_tensors("val")), set()),
        (TensorDataset(*wine_tensors("train")), {"data.split_overlap"}),
    ):
        trainer = make_trainer(callbacks=[TransformParityCallback()], limit_train_batches=1)
        with sanity_warnings():
            trainer.fit(Classifier(mlp(13, 3)), DataLoader(train, batch_size=16), DataLoader(val, batch_size=16))
        assert codes(trainer, Severity.WARNING) == expected


class DigitsDataModule(pl.LightningDataModule):
    def __init__(self, test_split: str) -> None:
        super().__init__()
        self.pipeline = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
        self.test_split = test_split

    def setup(self, stage: str) -> None:
        self.train = digits(self.pipeline, "train")
        self.test = digits(self.pipeline, self.test_split)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=32)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=64)


@pytest.mark.parametrize(("test_split", "expected"), [("train", {"data.split_overlap"}), ("val", set())])
def test_test_alone_with_a_datamodule_compares_against_its_train_loader(
    make_trainer: Any, test_split: str, expected: set[str]
) -> None:
    trainer = make_trainer(callbacks=[TransformParityCallback()], limit_test_batches=1)
    with sanity_warnings():
        trainer.test(Classifier(SmallCNN(10, width=8)), datamodule=DigitsDataModule(test_split))
    assert codes(trainer, Severity.WARNING) == expected


def test_validate_alone_runs_single_split_checks(make_trainer: Any) -> None:
    val = T.Compose([T.RandomResizedCrop(32), T.ToTensor(), T.Normalize(MEAN_255, STD_255)])
    trainer = make_trainer(callbacks=[TransformParityCallback()], limit_val_batches=1)
    with sanity_warnings():
        trainer.validate(Classifier(SmallCNN(10, width=8)), DataLoader(digits(val, "val"), batch_size=64))
    assert codes(trainer, Severity.WARNING) == {"transform.random_in_eval", "transform.normalize_scale"}


def test_concat_of_subsets_of_wrapped_datasets(make_trainer: Any) -> None:
    data = digits(T.ToTensor(), "all")
    train = ConcatDataset([Subset(data, range(0, 600)), Subset(data, range(900, 1500))])
    trainer = fit(make_trainer, train, Subset(data, range(500, 1000)))
    [overlap] = findings_of(trainer, "data.split_overlap")
    assert (overlap.evidence["shared"], overlap.evidence["total"]) == (200, 500)


# ---------------------------------------------------------------- configuration and pure helpers


@pytest.mark.parametrize(
    ("option", "value"),
    [("num_samples", -1), ("num_samples", 1.5), ("min_content_overlap", 0.0), ("max_fingerprint_items", -3)],
)
def test_bad_configuration_fails_fast(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        TransformParityCallback(**{option: value})


def test_pipeline_model_follows_scale_through_v1_and_v2_steps() -> None:
    v1_pipeline = Pipeline.of([T.Compose([T.RandomResizedCrop(8), T.ToTensor()]), T.Normalize(MEAN, STD)])
    assert [s.produces for s in v1_pipeline.steps] == [Scale.RAW, Scale.UNIT, Scale.NORMALIZED]
    v2_pipeline = Pipeline.of(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=False),
            v2.ToDtype(torch.uint8),
            v2.ToDtype({v2.Transform: None}),
        ]
    )
    assert [s.produces for s in v2_pipeline.steps][:3] == [Scale.BYTE, Scale.BYTE, Scale.BYTE]
    assert Pipeline.of([T.PILToTensor(), T.ConvertImageDtype(torch.float32)]).output_scale is Scale.UNIT
    assert Pipeline.of([T.ToTensor(), T.ToPILImage(), T.RandomApply([T.ColorJitter(0.1)])]).output_scale is Scale.PIL
    assert Pipeline.of([T.ToTensor(), T.Lambda(lambda x: x)]).output_scale is Scale.UNKNOWN
    assert Pipeline.of([T.ToTensor()]).output_scaled_by == "ToTensor at position 0"


def test_random_steps_by_class_not_by_guess() -> None:
    assert is_random(T.RandomCrop(8)) and is_random(v2.AugMix()) and is_random(T.GaussianBlur(3))
    assert not is_random(T.RandomHorizontalFlip(p=0.0)) and not is_random(T.ColorJitter())
    assert not is_random(T.GaussianBlur(3, sigma=0.5)) and not is_random(T.CenterCrop(8))


def test_constants_scale_rule() -> None:
    assert constants_scale(MEAN_255, STD_255) is Scale.BYTE
    assert constants_scale([0.0], [255.0]) is Scale.BYTE
    assert constants_scale(MEAN, STD) is Scale.UNIT
    assert constants_scale([0.5], [0.5]) is Scale.UNIT
    assert constants_scale([1.5], [1.5]) is Scale.UNKNOWN


def test_normalization_gap_in_train_std_units() -> None:
    assert normalization_gap(([0.1307], [0.3081]), ([0.1325], [0.3104])) == pytest.approx((0.0058, 1.0075), abs=1e-3)
    assert normalization_gap((MEAN, STD), ([0.5], [0.5]))[1] == pytest.approx(0.5 / 0.224)  # type: ignore[index]
    assert normalization_gap(([0.1, 0.2], [1.0, 1.0]), (MEAN, STD)) is None


def test_find_normalize_for_figures() -> None:
    loader = DataLoader(Subset(digits(T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])), [0, 1]))
    assert find_normalize(loader) == (tuple(MEAN), tuple(STD))
    assert find_normalize([DataLoader(digits(T.ToTensor()))]) is None


def test_index_segments_through_subset_of_concat() -> None:
    a, b = TensorDataset(torch.zeros(5)), TensorDataset(torch.zeros(5))
    segments = index_segments(Subset(ConcatDataset([a, b]), [1, 6, 7]))
    assert segments is not None
    assert [(base is a, indices.tolist()) for base, indices in segments] == [(True, [1]), (False, [1, 2])]
    overlap = index_overlap(index_segments(b) or [], segments)
    assert overlap is not None and (overlap.shared, overlap.total) == (2, 3)


def test_sample_indices_are_deterministic_and_spread() -> None:
    assert sample_indices(100, 4) == [0, 33, 66, 99]
    assert sample_indices(2, 4) == [0, 1]
    assert sample_indices(0, 4) == []
