"""BatchStatsCallback: what enters the model, judged on real fits over small bundled data."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from support import codes, problems, sanity_warnings
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms as T
from torchvision.transforms import v2

from lightning_sanity import BatchStatsCallback, Severity
from lightning_sanity.batch_stats import is_collapsed, shift_between, single_class_probability
from lightning_sanity.channel_stats import ChannelStats, ClassCounts, batch_moments, channel_view
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN, mlp, wine_tensors

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGENET_MEAN_255, IMAGENET_STD_255 = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
FAST = {"limit_train_batches": 6, "limit_val_batches": 3, "num_sanity_val_steps": 2}


def digits(transform: Any, split: str = "train", **kwargs: Any) -> DigitImages:
    return DigitImages(transform, split=split, **kwargs)  # type: ignore[arg-type]


def fit(make_trainer: Any, model: pl.LightningModule, train: Any, val: Any = None, **options: Any) -> pl.Trainer:
    callback = BatchStatsCallback(**options.pop("callback", {}))
    trainer = make_trainer(callbacks=[callback], **{**FAST, **options})
    with sanity_warnings():
        trainer.fit(model, train, val)
    assert "sanity.internal_error" not in codes(trainer)  # a crashed check would make every quiet test pass
    return trainer


def cnn() -> Classifier:
    return Classifier(SmallCNN(10, width=4), lr=1e-2)


def image_loaders(train_transform: Any, val_transform: Any, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(digits(train_transform), batch_size=batch_size, shuffle=True)
    return train, DataLoader(digits(val_transform, "val"), batch_size=64)


def finding(trainer: pl.Trainer, code: str, subject: str = "train") -> Any:
    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, BatchStatsCallback)]
    [found] = [f for cb in callbacks for f in cb.findings if f.code == code and f.subject == subject]
    return found


# Case 1: Normalize with 0-255 constants after ToTensor in train, no Normalize in val ---------------------------


def test_case1_collapsed_train_inputs_and_split_shift_before_first_step(make_trainer: Any) -> None:
    train = T.Compose(
        [
            T.RandomResizedCrop(32),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN_255, IMAGENET_STD_255),
        ]
    )
    val = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    trainer = fit(make_trainer, cnn(), *image_loaders(train, val))
    assert {"input.collapsed", "input.split_shift"} <= codes(trainer, Severity.ERROR)
    collapsed = finding(trainer, "input.collapsed")
    assert collapsed.subject == "train" and collapsed.stage == "train" and collapsed.step == 0
    assert all(-2.2 < m < -1.7 for m in collapsed.evidence["mean"])
    assert collapsed.evidence["max_std_over_abs_mean"] < 0.005
    shift = finding(trainer, "input.split_shift", "val")
    assert shift.subject == "val" and shift.step == 0  # judged from the first batches, before any optimizer step
    assert min(shift.evidence["std_ratio"]) > 20


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_standard_pipelines_with_asymmetric_augmentation_stay_quiet(make_trainer: Any, version: str) -> None:
    if version == "v1":
        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train = T.Compose(
            [T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4), T.ToTensor(), normalize]
        )
        val = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), normalize])
    else:
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        train = v2.Compose([v2.RandomResizedCrop(32), v2.RandomHorizontalFlip(), v2.TrivialAugmentWide(), *to_float])
        val = v2.Compose([v2.Resize(32), v2.CenterCrop(32), *to_float])
    trainer = fit(make_trainer, cnn(), *image_loaders(train, val), max_epochs=2)
    assert problems(trainer) == []


# Case 2: raw 0-255 pixels ------------------------------------------------------------------------------------


def raw_pixels(split: str) -> TensorDataset:
    data = digits(T.PILToTensor(), split)
    images = torch.stack([data[i][0] for i in range(len(data))]).float()
    return TensorDataset(images, torch.as_tensor(data.targets))


def test_case2_raw_pixels_warn_unscaled(make_trainer: Any) -> None:
    train = DataLoader(raw_pixels("train"), batch_size=32, shuffle=True)
    trainer = fit(make_trainer, cnn(), train, DataLoader(raw_pixels("val"), batch_size=64))
    assert "input.unscaled" in codes(trainer, Severity.WARNING)
    unscaled = finding(trainer, "input.unscaled")
    assert unscaled.step == 0 and max(unscaled.evidence["max"]) > 200
    assert "input.split_shift" not in codes(trainer)  # both splits share the (wrong) scale


def test_unnormalised_but_scaled_images_stay_quiet(make_trainer: Any) -> None:
    trainer = fit(
        make_trainer, cnn(), *image_loaders(T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), T.ToTensor())
    )
    assert problems(trainer) == []


# Tabular: wine -----------------------------------------------------------------------------------------------


def wine_loaders(standardize: bool, shuffle: bool = True, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    train = TensorDataset(*wine_tensors("train", standardize))
    val = TensorDataset(*wine_tensors("val", standardize))
    return DataLoader(train, batch_size=batch_size, shuffle=shuffle), DataLoader(val, batch_size=batch_size)


def test_unstandardised_wine_warns_unscaled_naming_proline(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), *wine_loaders(standardize=False))
    unscaled = finding(trainer, "input.unscaled")
    assert unscaled.severity is Severity.WARNING
    assert 12 in unscaled.evidence["channels"]  # proline, ~750
    assert "input.collapsed" not in codes(trainer)


def test_standardised_wine_stays_quiet_over_epochs(make_trainer: Any) -> None:
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), *wine_loaders(standardize=True), max_epochs=3)
    assert problems(trainer) == []


def test_one_hot_small_integer_and_constant_features_stay_quiet(make_trainer: Any) -> None:
    features, labels = wine_tensors("train")
    one_hot = F.one_hot(labels.roll(7), 3).float()
    counts = torch.randint(0, 30, (len(labels), 2), generator=torch.Generator().manual_seed(0)).float()
    constant = torch.ones(len(labels), 1)
    data = TensorDataset(torch.cat([features, one_hot, counts, constant], 1), labels)
    loader = DataLoader(data, batch_size=16, shuffle=True)
    trainer = fit(make_trainer, Classifier(mlp(19, 3)), loader, loader, max_epochs=2)
    assert problems(trainer) == []


# Non-finite and constant inputs ------------------------------------------------------------------------------


def test_nan_inputs_are_an_error_naming_split_and_fraction(make_trainer: Any) -> None:
    features, labels = wine_tensors("train")
    features[::5, 2] = math.nan
    train = DataLoader(TensorDataset(features, labels), batch_size=16, shuffle=True)
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), train, wine_loaders(True)[1])
    nan = finding(trainer, "input.non_finite")
    assert nan.severity is Severity.ERROR and nan.subject == "train" and nan.evidence["channels"] == [2]
    assert 0 < nan.evidence["fraction"] < 0.05


def test_after_the_first_epoch_one_batch_in_n_feeds_the_epoch_statistics(
    make_trainer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split's first epoch counts every sample, later ones (the same samples again) one batch in N: training and
    validation alike; a later test run counts every test batch again."""
    fed: list[tuple[int, str, int]] = []
    callback = BatchStatsCallback(stats_every_n_batches=4)
    update = ChannelStats.update

    def spy(metric: ChannelStats, view: Tensor) -> None:
        label = next(key for key, stats in callback._stats.items() if stats is metric)
        fed.append((trainer.current_epoch, label, view.shape[0]))
        update(metric, view)

    monkeypatch.setattr(ChannelStats, "update", spy)
    train, _ = wine_loaders(standardize=True)  # 134 samples: 8 training batches of 16 and one of 6
    val = DataLoader(train.dataset, batch_size=16)  # the same 134 samples, unshuffled: 9 validation batches
    trainer = make_trainer(callbacks=[callback], max_epochs=3, num_sanity_val_steps=0)
    model = Classifier(mlp(13, 3))
    trainer.fit(model, train, val)
    for label in ("train", "val"):  # later epochs: batches 0, 4 and 8
        assert [sum(n for e, where, n in fed if (e, where) == (epoch, label)) for epoch in range(3)] == [134, 38, 38]
    assert problems(trainer) == []
    for _ in range(2):
        fed.clear()
        trainer.test(model, val)
        assert sum(n for _, label, n in fed if label == "test") == 134


def test_all_zero_inputs_are_collapsed(make_trainer: Any) -> None:
    images = torch.zeros(64, 3, 16, 16)
    train = DataLoader(TensorDataset(images, torch.arange(64) % 10), batch_size=16)
    trainer = fit(make_trainer, cnn(), train)
    assert "input.collapsed" in codes(trainer, Severity.ERROR)
    assert "data.identical_samples" not in codes(trainer)  # constant inputs are input.collapsed's story


class OneItem(Dataset):
    """A Dataset whose __getitem__ ignores its index (a stale variable): every item is the same image and label."""

    def __init__(self, split: str) -> None:
        self.data = digits(T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), split)
        self.offset = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.data[self.offset]


def test_getitem_ignoring_its_index_is_identical_samples(make_trainer: Any) -> None:
    train = DataLoader(OneItem("train"), batch_size=32, shuffle=True)
    trainer = fit(make_trainer, cnn(), train, DataLoader(OneItem("val"), batch_size=64))
    found = finding(trainer, "data.identical_samples")
    assert found.severity is Severity.ERROR and found.stage == "train" and found.step == 2  # the 3rd checked batch
    assert found.evidence["batches"] == 3 and found.evidence["batch_sizes"] == [32, 32, 32]
    assert found.evidence["distinct_samples"] == 1 and found.evidence["targets_identical"] is True


def test_real_data_with_duplicate_rows_is_not_identical_samples(make_trainer: Any) -> None:
    features, labels = wine_tensors()
    half = len(features) // 2
    duplicated = torch.cat([features[:half], features[:half]]), torch.cat([labels[:half], labels[:half]])
    for data in ((features, labels), duplicated):
        train = DataLoader(TensorDataset(*data), batch_size=16, shuffle=True)
        trainer = fit(make_trainer, Classifier(mlp(13, 3)), train)
        assert "data.identical_samples" not in codes(trainer)


def test_one_constant_channel_in_varied_images_stays_quiet(make_trainer: Any) -> None:
    class WithAlpha(Dataset):
        def __init__(self, split: str) -> None:
            self.data = digits(T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), split)

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, index: int) -> tuple[Tensor, int]:
            image, label = self.data[index]
            return torch.cat([image, torch.ones(1, 32, 32)]), label

    model = Classifier(SmallCNN(10, in_channels=4, width=4))
    train = DataLoader(WithAlpha("train"), batch_size=32, shuffle=True)
    trainer = fit(make_trainer, model, train, DataLoader(WithAlpha("val"), batch_size=64))
    assert problems(trainer) == []


# Case 4: class-sorted, unshuffled training data --------------------------------------------------------------


def test_case4_sorted_unshuffled_training_data_warns(make_trainer: Any) -> None:
    transform = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train = DataLoader(digits(transform, sort_by_class=True), batch_size=32, shuffle=False)
    val = DataLoader(digits(transform, "val"), batch_size=64)
    trainer = fit(make_trainer, cnn(), train, val, limit_train_batches=10)
    single = finding(trainer, "target.single_class_batches")
    assert single.severity is Severity.WARNING
    assert single.evidence["single_class_batches"] > single.evidence["batches"] / 2
    assert single.evidence["chance_if_shuffled"] < 1e-6
    assert "input.split_shift" not in codes(trainer)


def test_case4_sorted_wine_warns_within_the_window(make_trainer: Any) -> None:
    train, val = wine_loaders(standardize=True, shuffle=False)
    order = torch.argsort(train.dataset.tensors[1], stable=True)  # type: ignore[attr-defined]
    train = DataLoader(TensorDataset(*(t[order] for t in train.dataset.tensors)), batch_size=16)  # type: ignore[attr-defined]
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), train, val, limit_train_batches=None)
    assert "target.single_class_batches" in codes(trainer, Severity.WARNING)
    assert "input.split_shift" not in codes(trainer)


def test_sorted_val_loader_and_shuffled_imbalanced_train_stay_quiet(make_trainer: Any) -> None:
    features, labels = wine_tensors("train")
    keep = (labels != 2) | (torch.arange(len(labels)) % 8 == 0)  # class 2 becomes rare
    train = DataLoader(TensorDataset(features[keep], labels[keep]), batch_size=8, shuffle=True)
    val_x, val_y = wine_tensors("val")
    order = torch.argsort(val_y, stable=True)
    val = DataLoader(TensorDataset(val_x[order], val_y[order]), batch_size=8)
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), train, val, max_epochs=2, limit_train_batches=None)
    assert problems(trainer) == []


def test_single_class_batches_explained_by_shuffled_imbalance_stay_quiet(make_trainer: Any) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(800, 6, generator=generator)
    labels = (torch.rand(800, generator=generator) < 0.05).long()  # most batches of 4 hold only class 0
    # a seeded shuffle: unseeded, about one run in a few hundred draws 8 or fewer single-class batches of 16
    train = DataLoader(TensorDataset(features, labels), batch_size=4, shuffle=True, generator=generator)
    callback = {"single_class_window": 16}
    trainer = fit(make_trainer, Classifier(mlp(6, 2)), train, limit_train_batches=40, callback=callback)
    stats = trainer.callbacks[0]
    assert stats._window_single > 8  # type: ignore[attr-defined]
    assert problems(trainer) == []


# Case 5: (N, 1) class-index targets --------------------------------------------------------------------------


class SqueezingClassifier(Classifier):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y.view(-1))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y.view(-1)))


def test_case5_column_targets_warn(make_trainer: Any) -> None:
    features, labels = wine_tensors("train")
    train = DataLoader(TensorDataset(features, labels[:, None]), batch_size=16, shuffle=True)
    trainer = fit(make_trainer, SqueezingClassifier(mlp(13, 3)), train)
    shape = finding(trainer, "target.shape")
    assert shape.severity is Severity.WARNING and shape.evidence["shape"] == [16, 1]


def test_float_column_targets_for_bce_stay_quiet(make_trainer: Any) -> None:
    class Binary(Classifier):
        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.binary_cross_entropy_with_logits(self(x), y)

    features, labels = wine_tensors("train")
    train = DataLoader(TensorDataset(features, (labels == 0).float()[:, None]), batch_size=16, shuffle=True)
    trainer = fit(make_trainer, Binary(mlp(13, 1)), train)
    assert problems(trainer) == []


# Other healthy shapes of programs ----------------------------------------------------------------------------


class Segmenter(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Conv2d(3, 2, 3, padding=1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.net(batch["image"]), batch["mask"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self.net(batch["image"]), batch["mask"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class DigitMasks(Dataset):
    """Dict samples: a normalised digit image and its foreground mask."""

    def __init__(self, split: str) -> None:
        self.data = digits(T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), split)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, _ = self.data[index]
        return {"image": image, "mask": (image[0] > 0).long()}


def test_dict_batches_with_segmentation_masks_stay_quiet(make_trainer: Any) -> None:
    train = DataLoader(DigitMasks("train"), batch_size=16, shuffle=True)
    trainer = fit(make_trainer, Segmenter(), train, DataLoader(DigitMasks("val"), batch_size=32))
    assert problems(trainer) == []
    assert trainer.callbacks[0]._stats["train"].count.numel() == 3  # type: ignore[attr-defined]


class TokenClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(300, 8)
        self.head = nn.Linear(8, 2)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.head(self.embed(batch["input_ids"])), batch["labels"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_token_id_inputs_are_never_judged_by_float_rules(make_trainer: Any) -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (128, 12), generator=generator) + 0  # values far above 1, like raw pixels
    ids[:, 0] = 299
    rows = [{"input_ids": ids[i], "labels": torch.tensor(i % 2)} for i in range(128)]
    trainer = fit(make_trainer, TokenClassifier(), DataLoader(rows, batch_size=16, shuffle=True))  # type: ignore[arg-type]
    assert problems(trainer) == []
    assert trainer.callbacks[0]._stats == {}  # type: ignore[attr-defined]


def test_imbalanced_but_correct_data_is_info_only(make_trainer: Any) -> None:
    features, labels = (t.repeat(3, *[1] * (t.ndim - 1)) for t in wine_tensors("train"))
    keep = (labels == 0) | (torch.arange(len(labels)) % 12 == 0)
    train = DataLoader(TensorDataset(features[keep], labels[keep]), batch_size=16, shuffle=True)
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), train, wine_loaders(True)[1], limit_train_batches=None)
    assert problems(trainer) == []
    imbalance = finding(trainer, "target.imbalance")
    assert imbalance.severity is Severity.INFO
    assert imbalance.evidence["dominant"] == [0] and imbalance.evidence["rare"] == [1, 2]
    assert "balanced accuracy" in imbalance.hint


class MultiVal(Classifier):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), add_dataloader_idx=True)


def test_multiple_val_dataloaders_are_compared_to_train_one_by_one(make_trainer: Any) -> None:
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(32, scale=(0.5, 1.0)), T.ToTensor(), normalize])
    healthy = DataLoader(digits(T.Compose([T.ToTensor(), normalize]), "val"), batch_size=64)
    forgot_normalize = DataLoader(digits(T.ToTensor(), "val"), batch_size=64)
    loaders = image_loaders(train, T.ToTensor())
    trainer = fit(make_trainer, MultiVal(SmallCNN(10, width=4)), loaders[0], [healthy, healthy], max_epochs=2)
    assert problems(trainer) == []
    trainer = fit(make_trainer, MultiVal(SmallCNN(10, width=4)), loaders[0], [healthy, forgot_normalize])
    [shift] = [f for f in problems(trainer) if f.code == "input.split_shift"]
    assert shift.subject == "val/dataloader_idx_1" and "val/dataloader_idx_1" in shift.message


def test_validate_after_fit_compares_with_the_training_epoch(make_trainer: Any) -> None:
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train, _ = image_loaders(T.Compose([T.ToTensor(), normalize]), T.ToTensor())
    callback = BatchStatsCallback()
    trainer = make_trainer(callbacks=[callback], limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0)
    model = cnn()
    with sanity_warnings():
        trainer.fit(model, train)
        assert problems(trainer) == []
        trainer.validate(model, DataLoader(digits(T.ToTensor(), "val"), batch_size=64))
    assert "input.split_shift" in codes(trainer, Severity.ERROR)
    assert "sanity.internal_error" not in codes(trainer)


# Logging, configuration, pure rules --------------------------------------------------------------------------


def test_epoch_statistics_are_logged_for_each_split(make_trainer: Any, tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="run")
    trainer = fit(make_trainer, Classifier(mlp(13, 3)), *wine_loaders(True), logger=logger, max_epochs=2)
    header = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for split in ("train", "val"):
        assert {f"sanity/batch_stats/{split}/{m}_c{c}" for m in ("mean", "std", "min", "max") for c in range(3)} <= set(
            header
        )
        assert f"sanity/batch_stats/{split}/non_finite_fraction" in header
    assert "sanity/batch_stats/train/mean_c3" not in header
    assert "sanity/batch_stats/train/classes_seen" in header
    assert problems(trainer) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("check_batches", 0),
        ("single_class_window", 1),
        ("log_channels", -1),
        ("max_classes", 1),
        ("check_batches", True),
        ("stats_every_n_batches", 0),
    ],
)
def test_bad_configuration_fails_fast(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        BatchStatsCallback(**{option: value})


def test_channel_stats_metric_is_exact_and_skips_mismatched_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 3, 4, 4, generator=generator) * 0.004 - 2.1 for _ in range(3)]
    stats = ChannelStats()
    for batch in batches:
        stats.update(channel_view(batch))  # type: ignore[arg-type]
    stats.update(channel_view(torch.randn(5, 4, 2, 2)))  # type: ignore[arg-type]
    summary = stats.summary()
    every = torch.cat(batches).double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(summary.mean, every.mean(1))
    torch.testing.assert_close(summary.std, every.std(1, correction=0), rtol=1e-5, atol=0)
    assert summary.samples == 15 and is_collapsed(summary)
    single = ChannelStats()
    single.update(channel_view(torch.tensor([1.0, 3.0])))  # type: ignore[arg-type]
    assert single.summary().mean.tolist() == [2.0] and single.summary().std.tolist() == [1.0]


def test_channel_stats_of_large_batches_sample_values_but_see_every_non_finite_one() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 64, 64, generator=generator) * torch.tensor([1.0, 0.5, 0.1]).view(1, 3, 1, 1)
    stats = ChannelStats(values_per_channel=4096)
    stats.update(channel_view(images))  # type: ignore[arg-type]
    summary = stats.summary()
    assert summary.count.tolist() == [4096] * 3 and summary.samples == 32  # 128 positions of each of 32 images
    torch.testing.assert_close(summary.mean, torch.tensor([0.5, 0.25, 0.05], dtype=torch.float64), rtol=0.03, atol=0)
    torch.testing.assert_close(
        summary.std, torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64) / 12**0.5, rtol=0.03, atol=0
    )
    sampled = stats._positions[(32, 3, 64 * 64, 128, images.device)][:128]  # flat indices: image 0, channel 0 first
    outside = next(position for position in range(64 * 64) if position not in set(sampled.tolist()))
    images[7, 1].view(-1)[outside] = math.nan
    stats.reset()
    stats.update(channel_view(images))  # type: ignore[arg-type]
    assert stats.summary().non_finite.tolist() == [0, 1, 0]


def test_channel_stats_folding_queued_batches_equals_judging_them_one_by_one() -> None:
    """Batches are queued and folded 32 at a time (and before any read): the epoch numbers are those of a
    batch-by-batch accumulation, NaN/Inf included (inside and outside the sampled positions), whatever the sizes."""
    generator = torch.Generator().manual_seed(1)
    stats = ChannelStats(values_per_channel=64)
    expected: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]] = []
    read_midway = None
    for index in range(75):
        size = [16, 16, 16, 7][index % 4]
        images = torch.randn(size, 3, 6, 6, generator=generator) * torch.tensor([1.0, 0.01, 5.0]).view(1, 3, 1, 1) - 2
        if index in (5, 40):
            images[1, 0, 2, 3] = math.nan  # anywhere: seen by the full-batch check
        if index == 41:
            images[:, 2] = math.inf  # every value of a channel, sampled ones included
        view = channel_view(images)
        assert view is not None
        stats.update(view)
        positions = stats._positions[(size, 3, 36, max(1, 64 // size), view.device)][: max(1, 64 // size)]
        sampled = batch_moments(view[:, :, positions])
        missed = (~torch.isfinite(view).all(2).all(0)) & (sampled.non_finite == 0)
        expected.append(
            (
                sampled.count,
                sampled.total,
                sampled.total_sq,
                sampled.minimum,
                sampled.maximum,
                sampled.non_finite + missed,
            )
        )
        if index == 50:
            read_midway = stats.summary()
    assert read_midway is not None and read_midway.samples == sum([16, 16, 16, 7][i % 4] for i in range(51))
    summary = stats.summary()
    count, total, total_sq, minimum, maximum, non_finite = (
        torch.stack(column) for column in zip(*expected, strict=True)
    )
    assert summary.samples == sum([16, 16, 16, 7][i % 4] for i in range(75))
    assert summary.count.tolist() == count.sum(0).tolist() and summary.non_finite.tolist() == non_finite.sum(0).tolist()
    assert summary.non_finite.tolist()[0] >= 2 and summary.non_finite.tolist()[1] == 0
    torch.testing.assert_close(summary.total, total.sum(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(summary.total_sq, total_sq.sum(0), rtol=1e-6, atol=0)
    assert summary.minimum.tolist() == minimum.amin(0).tolist() and summary.maximum.tolist() == maximum.amax(0).tolist()
    stats.reset()
    stats.update(channel_view(torch.ones(4, 2, 3)))  # type: ignore[arg-type]
    stats.persistent(True)
    assert stats.state_dict()["count"].tolist() == [12.0, 12.0]  # a checkpoint holds the queued batch too
    assert stats.summary().mean.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_channel_stats_of_half_precision_batches_fold_without_overflow(dtype: torch.dtype) -> None:
    """32 queued batches of 4,096 values per channel around 2 sum far beyond float16's 65,504."""
    generator = torch.Generator().manual_seed(0)
    stats = ChannelStats()
    for _ in range(40):
        stats.update(channel_view((torch.randn(32, 3, 32, 32, generator=generator) * 0.5 + 2).to(dtype)))  # type: ignore[arg-type]
    summary = stats.summary()
    assert summary.samples == 40 * 32 and summary.non_finite.tolist() == [0, 0, 0]
    torch.testing.assert_close(summary.mean, torch.full((3,), 2.0, dtype=torch.float64), rtol=0.01, atol=0)
    torch.testing.assert_close(summary.std, torch.full((3,), 0.5, dtype=torch.float64), rtol=0.02, atol=0)


def test_class_counts_ignores_out_of_range_labels() -> None:
    counts = ClassCounts(capacity=4)
    counts.update(torch.tensor([0, 0, 3, -100, 7]))
    assert counts.compute().tolist() == [2, 0, 0, 1]


def test_non_finite_values_are_counted_and_excluded_from_moments() -> None:
    summary = batch_moments(channel_view(torch.tensor([[1.0, math.inf], [3.0, 2.0], [math.nan, 4.0]])))  # type: ignore[arg-type]
    assert summary.non_finite.tolist() == [1, 1] and summary.mean.tolist() == [2.0, 3.0]


def test_shift_rule_separates_case1_from_augmentation_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(64, 3, 8, 8, generator=generator)
    normalize = (base - 0.45) / 0.25
    augmented = batch_moments(channel_view(normalize * 1.1 + 0.2))  # type: ignore[arg-type]
    shift = shift_between(batch_moments(channel_view(normalize)), augmented)  # type: ignore[arg-type]
    assert shift is not None and shift.fraction == 0
    collapsed = batch_moments(channel_view((base - 123.675) / 58.395))  # type: ignore[arg-type]
    shift = shift_between(collapsed, batch_moments(channel_view(base)))  # type: ignore[arg-type]
    assert shift is not None and shift.fraction == 1


def test_single_class_probability_is_tiny_only_when_shuffling_cannot_explain_it() -> None:
    ten_classes = [100] * 10
    assert single_class_probability(7, [32] * 8, ten_classes) < 1e-12
    dominant = [95, 5]  # a shuffled loader with one 95% class gives single-class batches of 8 often
    assert single_class_probability(5, [8] * 8, dominant) > 0.01
    assert single_class_probability(8, [32] * 8, [256]) == 1.0
