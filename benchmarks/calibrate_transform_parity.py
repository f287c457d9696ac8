"""Calibrate TransformParityCallback's thresholds with the library's own functions on healthy and broken pipelines.

Prints one table per threshold (variant | statistic | kind | value | threshold | verdict) and a final line per table
asserting that the threshold separates the healthy extreme from the broken one:

- constants scale (``pipelines.constants_scale``): the largest Normalize mean/std, ``BYTE`` above 2, ``UNIT`` <= 1;
- scale model (``Pipeline.of(...).output_scale``) against the range measured on real items (``measured_scale``);
- ``transform.normalize_mismatch`` (``transform_parity.normalization_gap``): mean shift in train std and std ratio,
  quiet while shift <= 0.1 and ratio <= 1.1;
- case 1 ranges: what ``Normalize`` received (``received_range``) and what it produced, on ``DigitImages``;
- ``data.split_overlap`` (``content_overlap`` / ``index_overlap``): shared share of an eval split, against
  ``min_content_overlap``.

    python benchmarks/calibrate_transform_parity.py
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Subset, TensorDataset
from torchvision import transforms as T
from torchvision.transforms import v2

from lightning_sanity.demos import DigitImages, digits_tensors, wine_tensors
from lightning_sanity.pipelines import (
    Pipeline,
    Scale,
    constants_scale,
    content_overlap,
    draw_inputs,
    index_overlap,
    index_segments,
    measured_scale,
    raw_fingerprints,
    received_range,
    scale_of_range,
    value_range,
)
from lightning_sanity.transform_parity import TransformParityCallback, normalization_gap

torch.set_num_threads(1)

BYTE_CONSTANTS = 2.0  # constants_scale: a mean or std above this is written for 0-255 pixels
UNIT_CONSTANTS = 1.0  # ... and all within this, for [0, 1] pixels
# _check_normalize_constants stays quiet while both hold (literals in lightning_sanity/transform_parity.py):
MAX_SHIFT, MAX_RATIO = 0.1, 1.1
MIN_CONTENT_OVERLAP = inspect.signature(TransformParityCallback).parameters["min_content_overlap"].default

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_255 = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
MNIST_TRAIN, MNIST_TEST = ((0.1307,), (0.3081,)), ((0.1325,), (0.3104,))
HALF = ((0.5,) * 3, (0.5,) * 3)

Row = tuple[str, str, str, float, str, str]  # variant, statistic, kind, value, threshold, verdict


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}\n\n| variant | statistic | kind | value | threshold | verdict |\n|---|---|---|---|---|---|")
    for variant, statistic, kind, value, threshold, verdict in rows:
        print(f"| {variant} | {statistic} | {kind} | {value:.4g} | {threshold} | {verdict} |")


def digit_split_constants(seed: int) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]:
    """Per-split mean/std of the digits' [0, 1] pixels for a random 75/25 split: what users compute per split."""
    pixels = load_digits().images.astype(np.float64) / 16.0
    order = np.random.default_rng(seed).permutation(len(pixels))
    cut = len(pixels) // 4
    return tuple(((float(part.mean()),), (float(part.std()),)) for part in (pixels[order[cut:]], pixels[order[:cut]]))


def constants(seeds: Sequence[int]) -> list[Row]:
    unit = {"ImageNet 0-1": IMAGENET, "CIFAR-10": CIFAR, "MNIST": MNIST_TRAIN, "0.5/0.5": HALF}
    unit |= {"identity 0/1": ((0.0,), (1.0,))}
    byte = {"ImageNet 0-255": IMAGENET_255, "MNIST x255": ((33.33,), (78.57,)), "0.5/0.5 x255": ((127.5,), (127.5,))}
    for seed in seeds:
        train, _ = digit_split_constants(seed)
        unit[f"digits train split seed {seed}, 0-1"] = train
        byte[f"digits train split seed {seed}, x255"] = (
            tuple(255 * m for m in train[0]),
            tuple(255 * s for s in train[1]),
        )
    rows: list[Row] = []
    for kind, family in (("healthy", unit), ("broken", byte)):
        for name, (mean, std) in family.items():
            largest = max(max(abs(m) for m in mean), max(std))
            scale = constants_scale(mean, std)
            verdict = {Scale.BYTE: "0-255 constants", Scale.UNIT: "0-1 constants"}.get(scale, "not judged")
            rows.append(
                (name, "max(|mean|, std)", kind, largest, f"> {BYTE_CONSTANTS:g} / <= {UNIT_CONSTANTS:g}", verdict)
            )
    return rows


def scale_model() -> list[Row]:
    pipelines: dict[str, Any] = {
        "ToTensor": T.Compose([T.ToTensor()]),
        "RandomCrop+ToTensor": T.Compose([T.RandomCrop(28), T.ToTensor()]),
        "PILToTensor": T.Compose([T.PILToTensor()]),
        "v2 ToImage": v2.Compose([v2.ToImage()]),
        "v2 ToImage+ToDtype(scale=True)": v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]),
        "v2 ToImage+ToDtype(scale=False)": v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)]),
        "PILToTensor+ConvertImageDtype(float)": T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float32)]),
        "ToTensor+GaussianBlur+Grayscale": T.Compose([T.ToTensor(), T.GaussianBlur(3), T.Grayscale(3)]),
    }
    rows: list[Row] = []
    for name, transform in pipelines.items():
        modelled = Pipeline.of([transform]).output_scale
        measured, span = measured_scale(draw_inputs(DigitImages(transform, "val"), 4))
        verdict = "agree" if measured is modelled else f"model {modelled}, measured {measured}"
        rows.append((f"{name} → {modelled}", "measured max", "healthy", span[1] if span else float("nan"), "", verdict))
    return rows


def normalize_mismatch(seeds: Sequence[int]) -> list[Row]:
    pairs: dict[str, tuple[str, Any, Any]] = {
        "MNIST train vs test statistics (0.1307/0.3081 vs 0.1325/0.3104)": ("healthy", MNIST_TRAIN, MNIST_TEST),
        "ImageNet 0-1 vs ImageNet 0-255 on a 0-255 pipeline": (
            "healthy",
            IMAGENET,
            tuple(tuple(v / 255 for v in part) for part in IMAGENET_255),
        ),
        "ImageNet vs 0.5/0.5": ("broken", IMAGENET, HALF),
        "ImageNet vs MNIST constants": ("broken", IMAGENET, MNIST_TRAIN),
        "0.5/0.5 vs MNIST constants": ("broken", HALF, MNIST_TRAIN),
        "ImageNet vs CIFAR-10 constants": ("broken", IMAGENET, CIFAR),
    }
    for seed in seeds:
        train, val = digit_split_constants(seed)
        pairs[f"digits per-split statistics, split seed {seed}"] = ("healthy", train, val)
    rows: list[Row] = []
    for name, (kind, train_constants, other_constants) in pairs.items():
        gap = normalization_gap(train_constants, other_constants)
        assert gap is not None
        shift, ratio = gap
        verdict = "quiet" if shift <= MAX_SHIFT and ratio <= MAX_RATIO else "flagged"
        rows.append((name, "mean shift (train std)", kind, shift, f"> {MAX_SHIFT:g}", verdict))
        rows.append((name, "std ratio", kind, ratio, f"> {MAX_RATIO:g}", verdict))
    return rows


def case_one() -> list[Row]:
    rows: list[Row] = []
    train_transform = T.Compose([T.ToTensor(), T.Normalize(*IMAGENET_255)])
    normalization = Pipeline.of([train_transform]).normalizations[0]
    outputs = draw_inputs(DigitImages(train_transform, "train"), 4)
    received = received_range(outputs, normalization)
    produced = value_range(outputs)
    assert received is not None and produced is not None
    rows.append(("case 1 train: Normalize received, min", "value", "broken", received[0], "", ""))
    rows.append(("case 1 train: Normalize received, max", "value", "broken", received[1], "[0, 1] = UNIT", ""))
    rows.append(("case 1 train: outputs, min", "value", "broken", produced[0], "", ""))
    rows.append(("case 1 train: outputs, max", "value", "broken", produced[1], "", ""))
    val = value_range(draw_inputs(DigitImages(T.ToTensor(), "val"), 4))
    assert val is not None
    rows.append(("case 1 val (ToTensor): outputs, min", "value", "healthy", val[0], "", ""))
    rows.append(("case 1 val (ToTensor): outputs, max", "value", "healthy", val[1], "", ""))
    return rows


def fraction(overlap: Any) -> float:
    return 0.0 if overlap is None else overlap.fraction


def overlap() -> list[Row]:
    threshold = f">= {MIN_CONTENT_OVERLAP:g}"

    def content(name: str, kind: str, train: Any, other: Any) -> Row:
        train_segments, other_segments = index_segments(train), index_segments(other)
        assert train_segments is not None and other_segments is not None
        share = fraction(content_overlap(train_segments, other_segments, raw_fingerprints))
        return (
            name,
            "identical raw samples share",
            kind,
            share,
            threshold,
            "flagged" if share >= MIN_CONTENT_OVERLAP else "quiet",
        )

    rows = [
        content(
            "digits images (DigitImages) train vs val", "healthy", DigitImages(None, "train"), DigitImages(None, "val")
        ),
        content(
            "digits tensors train vs val",
            "healthy",
            TensorDataset(*digits_tensors("train")),
            TensorDataset(*digits_tensors("val")),
        ),
        content(
            "wine tensors train vs val",
            "healthy",
            TensorDataset(*wine_tensors("train")),
            TensorDataset(*wine_tensors("val")),
        ),
        content(
            "case 3: test built from the train file",
            "broken",
            DigitImages(None, "train"),
            DigitImages(T.ToTensor(), "train"),
        ),
    ]
    base = TensorDataset(*wine_tensors("all"))
    for train_range, other_range in ((range(0, 100), range(50, 150)), (range(0, 100), range(60, 160))):
        train_segments, other_segments = (
            index_segments(Subset(base, list(train_range))),
            index_segments(Subset(base, list(other_range))),
        )
        assert train_segments is not None and other_segments is not None
        share = fraction(index_overlap(train_segments, other_segments))
        name = f"intersecting Subsets {train_range.start}-{train_range.stop} / {other_range.start}-{other_range.stop}"
        rows.append(
            (name, "same-index share (always reported)", "broken", share, "> 0", "flagged" if share > 0 else "quiet")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seeds", type=int, default=3, help="random digits splits whose per-split statistics are compared"
    )
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    start = time.perf_counter()

    rows = constants(seeds)
    print_table("constants scale: largest Normalize constant (pipelines.constants_scale)", rows)
    unit_max = max(v for _, _, k, v, _, _ in rows if k == "healthy")
    byte_min = min(v for _, _, k, v, _, _ in rows if k == "broken")
    print(
        f"\n0-1 constants max {unit_max:.4g} <= {UNIT_CONSTANTS:g} < {BYTE_CONSTANTS:g} "
        f"< 0-255 constants min {byte_min:.4g}"
    )
    assert unit_max <= UNIT_CONSTANTS < BYTE_CONSTANTS < byte_min
    assert all(r[5] == ("0-1 constants" if r[2] == "healthy" else "0-255 constants") for r in rows)

    rows = scale_model()
    print_table("scale model: modelled output scale vs range measured on 4 DigitImages items", rows)
    agree = sum(r[5] == "agree" for r in rows)
    print(f"\nmodel and measurement agree on {agree} of {len(rows)} pipelines")
    assert agree == len(rows)

    rows = normalize_mismatch(seeds)
    print_table("transform.normalize_mismatch: normalization_gap(train, other)", rows)
    healthy_shift = max(r[3] for r in rows if r[2] == "healthy" and r[1].startswith("mean shift"))
    healthy_ratio = max(r[3] for r in rows if r[2] == "healthy" and r[1] == "std ratio")
    broken = [r for r in rows if r[2] == "broken"]
    broken_shift = min(r[3] for r in broken if r[1].startswith("mean shift"))
    broken_ratio = min(r[3] for r in broken if r[1] == "std ratio")
    print(
        f"\nhealthy max shift {healthy_shift:.3g} <= {MAX_SHIFT:g} and ratio {healthy_ratio:.4g} <= {MAX_RATIO:g}; "
        f"broken min shift {broken_shift:.3g}, min ratio {broken_ratio:.3g}, every broken pair beyond one of them"
    )
    assert healthy_shift <= MAX_SHIFT and healthy_ratio <= MAX_RATIO
    assert all(r[5] == "flagged" for r in broken)

    rows = case_one()
    print_table("case 1 on DigitImages: what Normalize received and produced (4 items)", rows)
    received = scale_of_range(rows[0][3], rows[1][3])
    print(f"\ncase 1: Normalize received {received} pixels (read as UNIT within 1e-3), outputs all below -1.7")
    assert received is Scale.UNIT and rows[3][3] < -1.7

    rows = overlap()
    print_table("data.split_overlap: share of the eval split also in train", rows)
    healthy = max(r[3] for r in rows if r[2] == "healthy")
    broken_min = min(r[3] for r in rows if r[2] == "broken")
    print(f"\nhealthy max {healthy:.3g} < threshold {MIN_CONTENT_OVERLAP:g} < broken min {broken_min:.3g}")
    assert healthy < MIN_CONTENT_OVERLAP < broken_min
    print(f"\nrun time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
