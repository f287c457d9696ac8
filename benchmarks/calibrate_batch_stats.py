"""Calibrate BatchStatsCallback's thresholds with the module's own statistics on healthy and broken inputs.

Inputs are whole epochs of the bundled digits rendered as 32x32 RGB PIL images (``DigitImages``) through real
torchvision pipelines, and sklearn wine. For each check the table lists the statistic behind the threshold per
variant, and a final line per check asserts that the threshold separates the healthy extreme from the broken one:

- ``input.split_shift``: per-channel mean gap (pooled std) and std ratio, and the share of shifted channels
  (fires when >= 0.5; a channel is shifted beyond ``SHIFT_MEAN`` or ``SHIFT_STD_RATIO``);
- ``input.collapsed``: ``min over channels of std / |mean|`` (fires when every channel is <= ``COLLAPSE_RATIO``);
- ``input.unscaled``: ``max(|mean|, std)`` per feature (fires above ``FEATURE_SCALE``) and the 0-255 image signature;
- ``target.single_class_batches``: the chance a shuffled loader yields the single-class batches seen
  (fires below ``SINGLE_CLASS_ALPHA``).

    python benchmarks/calibrate_batch_stats.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T
from torchvision.transforms import v2

from lightning_sanity.batch_stats import (
    COLLAPSE_RATIO,
    FEATURE_SCALE,
    SHIFT_MEAN,
    SHIFT_STD_RATIO,
    SINGLE_CLASS_ALPHA,
    is_collapsed,
    looks_like_raw_pixels,
    shift_between,
    single_class_probability,
    unscaled_channels,
)
from lightning_sanity.channel_stats import ChannelSummary, batch_moments, channel_view
from lightning_sanity.demos import DigitImages, wine_tensors

torch.set_num_threads(1)

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
IMAGENET_255 = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
SHIFTED_FRACTION = 0.5  # the callback reports a split shift when at least half of the channels shifted

Row = tuple[str, str, str, float, str, str]  # variant, statistic, kind, value, threshold, verdict


def imagenet(*augment: Any) -> T.Compose:
    return T.Compose([*augment, T.ToTensor(), T.Normalize(*IMAGENET)])


def healthy_pipelines() -> dict[str, tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]]:
    """16 train/val pipeline pairs whose deterministic preprocessing agrees: only the augmentation differs."""
    val = imagenet()
    pairs: dict[str, tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]] = {
        "RandomResizedCrop(32)": (imagenet(T.RandomResizedCrop(32)), val),
        "RandomResizedCrop(32, scale=(0.05, 1))": (imagenet(T.RandomResizedCrop(32, scale=(0.05, 1.0))), val),
        "flips": (imagenet(T.RandomHorizontalFlip(), T.RandomVerticalFlip()), val),
        "ColorJitter(0.8, 0.8, 0.8, 0.2)": (imagenet(T.ColorJitter(0.8, 0.8, 0.8, 0.2)), val),
        "Pad(4)+RandomCrop(32)": (imagenet(T.Pad(4), T.RandomCrop(32)), val),
        "AutoAugment": (imagenet(T.AutoAugment()), val),
        "RandAugment": (imagenet(T.RandAugment()), val),
        "TrivialAugmentWide": (imagenet(T.TrivialAugmentWide()), val),
        "AugMix": (imagenet(T.AugMix()), val),
        "RandomRotation(30)+RandomAffine": (
            imagenet(T.RandomRotation(30), T.RandomAffine(0, (0.1, 0.1), (0.8, 1.2))),
            val,
        ),
        "Grayscale(3)+GaussianBlur": (imagenet(T.Grayscale(3), T.GaussianBlur(3)), val),
        "RandomInvert+RandomSolarize": (imagenet(T.RandomInvert(), T.RandomSolarize(128)), val),
        "RandomErasing(p=1)": (
            T.Compose([T.ToTensor(), T.Normalize(*IMAGENET), T.RandomErasing(p=1.0)]),
            val,
        ),
        "v2 RandomResizedCrop+Flip": (
            v2.Compose(
                [
                    v2.ToImage(),
                    v2.RandomResizedCrop(32, antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(*IMAGENET),
                ]
            ),
            v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*IMAGENET)]),
        ),
        "unnormalised 0-1, flip": (T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), T.ToTensor()),
        "0.5/0.5 both splits, crop": (
            T.Compose([T.RandomResizedCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]),
            T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]),
        ),
    }
    return pairs


def broken_pipelines() -> dict[str, tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]]:
    to_byte_floats = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)])
    return {
        "case 1: train Normalize(0-255 constants) after ToTensor, val ToTensor": (
            T.Compose([T.ToTensor(), T.Normalize(*IMAGENET_255)]),
            T.ToTensor(),
        ),
        "val missing ImageNet Normalize": (imagenet(T.RandomHorizontalFlip()), T.ToTensor()),
        "val 0-255 floats vs train 0-1": (T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), to_byte_floats),
    }


def epoch_summary(dataset: Any, batch_size: int = 64, batches: int | None = None) -> ChannelSummary:
    """Merged :func:`batch_moments` over the loader's batches (all of them, or the first ``batches``)."""
    summary: ChannelSummary | None = None
    for index, (inputs, _) in enumerate(DataLoader(dataset, batch_size=batch_size)):
        if batches is not None and index >= batches:
            break
        view = channel_view(inputs)
        assert view is not None
        moments = batch_moments(view)
        summary = moments if summary is None else summary.merge(moments)
    assert summary is not None
    return summary


def collapse_ratio(summary: ChannelSummary) -> float:
    """``min over channels of std / |mean|``: ``is_collapsed`` fires when it is <= ``COLLAPSE_RATIO``."""
    return float((summary.std / summary.mean.abs().clamp_min(1e-12)).min())


def shift_rows(variant: str, kind: str, train: ChannelSummary, other: ChannelSummary) -> list[Row]:
    shift = shift_between(train, other)
    assert shift is not None
    flagged = "flagged" if shift.fraction >= SHIFTED_FRACTION else "quiet"
    return [
        (variant, "max mean gap (pooled std)", kind, float(shift.mean_gap.max()), f"> {SHIFT_MEAN:g}", flagged),
        (variant, "max std ratio", kind, float(shift.std_ratio.max()), f"> {SHIFT_STD_RATIO:g}", flagged),
        (variant, "shifted channel share", kind, shift.fraction, f">= {SHIFTED_FRACTION:g}", flagged),
    ]


def split_shift(seeds: Sequence[int]) -> list[Row]:
    rows: list[Row] = []
    for kind, pairs in (("healthy", healthy_pipelines()), ("broken", broken_pipelines())):
        for variant, (train_tf, val_tf) in pairs.items():
            for seed in seeds:
                torch.manual_seed(seed)
                train = epoch_summary(DigitImages(train_tf, "train"))
                val = epoch_summary(DigitImages(val_tf, "val"))
                rows += shift_rows(f"digits {variant} (seed {seed})", kind, train, val)
    # Not caught on purpose: a 0.5/0.5 Normalize missing in val is a 2x std ratio, left to TransformParityCallback.
    torch.manual_seed(0)
    train = epoch_summary(DigitImages(T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]), "train"))
    val = epoch_summary(DigitImages(T.ToTensor(), "val"))
    rows += shift_rows("digits val missing 0.5/0.5 Normalize", "below threshold", train, val)
    # The first two batches of a class-sorted val loader against the first two training batches.
    train = epoch_summary(DigitImages(imagenet(), "train"), batch_size=32, batches=2)
    val = epoch_summary(DigitImages(imagenet(), "val", sort_by_class=True), batch_size=32, batches=2)
    rows += shift_rows("digits first 2 batches, class-sorted val", "healthy", train, val)
    # Standardised wine: train vs val, and each single-class subset of train vs the whole train split.
    wine_train, wine_labels = wine_tensors("train")
    whole = epoch_summary(TensorDataset(wine_train, wine_labels))
    rows += shift_rows(
        "wine standardised train vs val", "healthy", whole, epoch_summary(TensorDataset(*wine_tensors("val")))
    )
    for label in range(3):
        subset = TensorDataset(wine_train[wine_labels == label], wine_labels[wine_labels == label])
        rows += shift_rows(f"wine class-{label} subset vs train", "healthy", whole, epoch_summary(subset))
    return rows


def collapse() -> list[Row]:
    rows: list[Row] = []
    variants = {
        "digits 0-1 (ToTensor)": ("healthy", T.ToTensor()),
        "digits ImageNet-normalised": ("healthy", imagenet()),
        "digits 0.5/0.5-normalised": ("healthy", T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])),
        "case 1: ToTensor + Normalize(0-255 constants)": (
            "broken",
            T.Compose([T.ToTensor(), T.Normalize(*IMAGENET_255)]),
        ),
    }
    for variant, (kind, transform) in variants.items():
        for split in ("train", "val"):
            dataset = DigitImages(transform, split)
            for batch_size in (16, 64):
                for index, (inputs, _) in enumerate(DataLoader(dataset, batch_size=batch_size)):
                    if index >= 4:
                        break
                    summary = batch_moments(channel_view(inputs))  # type: ignore[arg-type]
                    flagged = "flagged" if is_collapsed(summary) else "quiet"
                    name = f"{variant} {split} bs{batch_size} batch {index}"
                    rows.append(
                        (name, "min std/|mean|", kind, collapse_ratio(summary), f"<= {COLLAPSE_RATIO:g}", flagged)
                    )
    # The worst case for [0, 1] data with 0-255 constants: std 0.5 / 58.4 against |mean| (0.5 - 123.7) / 58.4.
    worst = 0.5 / abs(0.5 - IMAGENET_255[0][2])
    rows.append(
        (
            "bound: any [0,1] data with 0-255 constants",
            "min std/|mean|",
            "broken",
            worst,
            f"<= {COLLAPSE_RATIO:g}",
            "flagged",
        )
    )
    return rows


def scale(seeds: Sequence[int]) -> list[Row]:
    rows: list[Row] = []
    images = {
        "digits ImageNet-normalised": ("healthy", imagenet()),
        "digits 0-1 (ToTensor)": ("healthy", T.ToTensor()),
    }
    for variant, (kind, transform) in images.items():
        summary = epoch_summary(DigitImages(transform, "train"))
        flagged = "flagged" if unscaled_channels(summary) or looks_like_raw_pixels(summary) else "quiet"
        rows.append((variant, "max(|mean|, std)", kind, float(summary.scale.max()), f"> {FEATURE_SCALE:g}", flagged))
    raw = epoch_summary(DigitImages(v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)]), "train"))
    signature = "flagged" if looks_like_raw_pixels(raw) else "quiet"
    rows.append(
        (
            "raw 0-255 digits (caught by the image rule)",
            "max(|mean|, std)",
            "broken, image rule",
            float(raw.scale.max()),
            f"> {FEATURE_SCALE:g}",
            signature,
        )
    )
    mean = float(raw.total.sum() / raw.count.sum())
    rows.append(("raw 0-255 digits: 0-255 signature (min 0, max > 50)", "mean", "broken", mean, "> 2", signature))
    wine = epoch_summary(TensorDataset(*wine_tensors("train")))
    flagged = "flagged" if unscaled_channels(wine) else "quiet"
    rows.append(
        (
            "wine standardised, epoch",
            "max(|mean|, std)",
            "healthy",
            float(wine.scale.max()),
            f"> {FEATURE_SCALE:g}",
            flagged,
        )
    )
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        worst = 0.0
        for inputs, _ in DataLoader(
            TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True, generator=generator
        ):
            worst = max(worst, float(batch_moments(channel_view(inputs)).scale.max()))  # type: ignore[arg-type]
        flagged = "flagged" if worst > FEATURE_SCALE else "quiet"
        rows.append(
            (
                f"wine standardised, worst batch of 16 (seed {seed})",
                "max(|mean|, std)",
                "healthy",
                worst,
                f"> {FEATURE_SCALE:g}",
                flagged,
            )
        )
    from sklearn.datasets import load_wine

    names = load_wine().feature_names
    raw_wine = epoch_summary(TensorDataset(*wine_tensors("train", standardize=False)))
    for channel in torch.argsort(raw_wine.scale, descending=True)[:3].tolist():
        value = float(raw_wine.scale[channel])
        kind = "broken" if value > FEATURE_SCALE else "broken, below threshold"
        flagged = "flagged" if channel in unscaled_channels(raw_wine) else "quiet"
        rows.append(
            (f"wine unstandardised: {names[channel]}", "max(|mean|, std)", kind, value, f"> {FEATURE_SCALE:g}", flagged)
        )
    return rows


def window_chance(labels: Sequence[int], batch_size: int, window: int) -> tuple[int, float]:
    """The callback's verdict on the first ``window`` training batches: single-class batches, chance if shuffled.

    Like the callback, the class frequencies are those of the window, or of the whole epoch when the window shows
    fewer than 2 classes; fewer than half single-class batches is never judged (chance 1).
    """
    batches = [labels[i : i + batch_size] for i in range(0, len(labels), batch_size)][:window]
    single = sum(len(set(batch)) == 1 for batch in batches)
    counts = [c for c in np.bincount(np.concatenate(batches)).tolist() if c]
    if len(counts) < 2:
        counts = [c for c in np.bincount(labels).tolist() if c]
    if single * 2 <= len(batches):
        return single, 1.0
    return single, single_class_probability(single, [len(batch) for batch in batches], counts)


def single_class(seeds: Sequence[int]) -> list[Row]:
    rows: list[Row] = []
    threshold = f"< {SINGLE_CLASS_ALPHA:g}"

    def row(name: str, kind: str, labels: Sequence[int], batch_size: int, window: int) -> None:
        single, chance = window_chance(labels, batch_size, window)
        flagged = "flagged" if chance < SINGLE_CLASS_ALPHA else "quiet"
        rows.append(
            (
                f"{name} bs{batch_size} ({single}/{window} single-class)",
                "chance if shuffled",
                kind,
                chance,
                threshold,
                flagged,
            )
        )

    sorted_labels = DigitImages(None, "train", sort_by_class=True).targets.tolist()
    for batch_size in (16, 32, 64):
        row("case 4: sorted digits", "broken", sorted_labels, batch_size, 8)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        row(f"shuffled digits seed {seed}", "healthy", rng.permutation(sorted_labels).tolist(), 32, 8)
        binary = (rng.random(4000) < 0.05).astype(int).tolist()
        for window in (8, 16):
            row(f"shuffled 95/5 binary seed {seed}", "healthy", binary, 4, window)
        row(f"shuffled 99/1 binary seed {seed}", "healthy", (rng.random(4000) < 0.01).astype(int).tolist(), 8, 8)
    return rows


def report(title: str, rows: list[Row], statistic: str, threshold: float, higher_is_broken: bool) -> None:
    print(f"\n## {title}\n\n| variant | statistic | kind | value | threshold | verdict |\n|---|---|---|---|---|---|")
    for variant, stat, kind, value, limit, verdict in rows:
        print(f"| {variant} | {stat} | {kind} | {value:.4g} | {limit} | {verdict} |")
    healthy = [v for _, s, k, v, _, _ in rows if k == "healthy" and s == statistic]
    broken = [v for _, s, k, v, _, _ in rows if k == "broken" and s == statistic]
    if higher_is_broken:
        worst, caught = max(healthy), min(broken)
        ok = worst <= threshold < caught
        print(f"\n{statistic}: healthy max {worst:.4g} <= threshold {threshold:g} < broken min {caught:.4g}: {ok}")
    else:
        worst, caught = min(healthy), max(broken)
        ok = caught <= threshold < worst
        print(f"\n{statistic}: broken max {caught:.4g} <= threshold {threshold:g} < healthy min {worst:.4g}: {ok}")
    assert ok, f"{title}: the threshold does not separate healthy from broken"
    assert all(verdict == "quiet" for _, _, kind, _, _, verdict in rows if kind == "healthy"), "a healthy variant fired"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per randomly augmented variant")
    parser.add_argument("checks", nargs="*", default=["shift", "collapse", "scale", "single"])
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    if "shift" in args.checks:
        rows = split_shift(seeds)
        report("input.split_shift: train vs val per-channel shift", rows, "shifted channel share", 0.5 - 1e-9, True)
        for statistic, limit in (("max mean gap (pooled std)", SHIFT_MEAN), ("max std ratio", SHIFT_STD_RATIO)):
            images = [r for r in rows if r[1] == statistic and r[0].startswith("digits")]
            healthy = max(v for _, _, k, v, _, _ in images if k == "healthy")
            print(f"{statistic} on digit images: healthy max {healthy:.3g} (channel limit {limit:g})")
    if "collapse" in args.checks:
        report(
            "input.collapsed: min over channels of std/|mean| per batch",
            collapse(),
            "min std/|mean|",
            COLLAPSE_RATIO,
            False,
        )
    if "scale" in args.checks:
        report(
            "input.unscaled: largest per-feature max(|mean|, std)",
            scale(seeds),
            "max(|mean|, std)",
            FEATURE_SCALE,
            True,
        )
    if "single" in args.checks:
        rows = single_class(seeds)
        report(
            "target.single_class_batches: chance under shuffling", rows, "chance if shuffled", SINGLE_CLASS_ALPHA, False
        )
    print(f"\nrun time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
