"""The pictures: pure functions from measured numbers to matplotlib figures (see ``loggers.log_figure``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.utilities.plot import plot_confusion_matrix

from lightning_sanity.loggers import new_figure

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def confusion_figure(matrix: Tensor, class_names: Sequence[str] | None = None, title: str = "") -> Figure:
    """The confusion matrix (rows = true class, columns = predicted), drawn by torchmetrics.

    Example::

        figure = confusion_figure(callback.confusion_matrix, ["cat", "dog"])
    """
    size = min(4.0 + 0.35 * matrix.shape[0], 14.0)
    figure = new_figure(size, size)
    axes = figure.add_subplot()
    labels = list(class_names) if class_names is not None and len(class_names) == matrix.shape[0] else None
    plot_confusion_matrix(matrix.detach().cpu(), ax=axes, add_text=matrix.shape[0] <= 20, labels=labels)
    axes.set_title(title or "confusion matrix (rows: true, columns: predicted)")
    return figure


def gradient_flow_figure(layer_norms: Mapping[str, tuple[float, float]], title: str = "") -> Figure:
    """Per-layer gradient norm (mean and max over the layer's parameters) from input to output, log scale.

    Vanishing layers show as a slope down towards the input; dead or cut-off layers drop out of the
    plot (a zero norm has no logarithm) and are marked at the bottom.
    """
    names = list(layer_norms)
    means = np.array([layer_norms[name][0] for name in names], dtype=float)
    maxima = np.array([layer_norms[name][1] for name in names], dtype=float)
    figure = new_figure(max(6.0, 0.3 * len(names)), 4.5)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.bar(positions, np.where(maxima > 0, maxima, np.nan), color="tab:cyan", alpha=0.5, label="max")
    axes.bar(positions, np.where(means > 0, means, np.nan), color="tab:blue", label="mean")
    dead = positions[maxima <= 0]
    if len(dead):
        floor = means[means > 0].min() / 10 if (means > 0).any() else 1e-12
        axes.scatter(dead, np.full(len(dead), floor), marker="x", color="tab:red", label="zero / no gradient")
    axes.set_yscale("log")
    axes.set_xticks(positions, names, rotation=90, fontsize=7)
    axes.set_ylabel("gradient norm")
    axes.set_title(title or "gradient flow (input → output)")
    axes.legend(loc="upper left")
    return figure


def input_histogram_figure(samples: Mapping[str, Tensor], max_channels: int = 4, title: str = "") -> Figure:
    """Per-channel histograms of model inputs, splits overlaid, so a train/val shift is obvious.

    Args:
        samples: split name → float tensor ``[N, C]`` of input values per channel.
    """
    channels = min(max_channels, *(int(values.shape[1]) for values in samples.values()))
    figure = new_figure(3.2 * channels, 3.0)
    for channel in range(channels):
        axes = figure.add_subplot(1, channels, channel + 1)
        values = {split: v[:, channel].float().cpu().numpy() for split, v in samples.items()}
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        bins = np.linspace(low, high if high > low else low + 1e-6, 50)
        for split, v in values.items():
            # One filled step patch per split (not one bar patch per bin): a quarter of the rendering time.
            density, edges = np.histogram(v[np.isfinite(v)], bins=bins, density=True)
            axes.stairs(density, edges, fill=True, alpha=0.5, label=split, color=SPLIT_COLOURS.get(split))
        axes.set_title(f"channel {channel}", fontsize=9)
    figure.axes[0].legend()
    figure.suptitle(title or "input distributions")
    return figure


def sample_grid_figure(
    images: Mapping[str, Tensor],
    normalization: Mapping[str, tuple[Sequence[float], Sequence[float]] | None],
    per_split: int = 8,
    title: str = "",
) -> Figure:
    """Sample inputs per split as the model sees them, de-normalised where the pipeline's Normalize is known.

    A split without known normalisation is min-max scaled per image and labelled "raw", so a
    collapsed or mis-normalised pipeline is visible at once next to a healthy one.

    Args:
        images: split name → tensor ``[N, C, H, W]`` (C = 1 or 3).
        normalization: split name → Normalize ``(mean, std)`` found in its pipeline, or None.
    """
    figure = new_figure(1.2 * per_split, 1.5 * len(images))
    for row, (split, batch) in enumerate(images.items()):
        shown = batch[:per_split].detach().float().cpu()
        stats = normalization.get(split)
        # One image per split (the samples side by side, white gaps) instead of one axes per sample: far cheaper
        # to lay out and render.
        tiles = [_displayable(image, stats) for image in shown]
        gap = np.ones((tiles[0].shape[0], max(1, tiles[0].shape[1] // 16), *tiles[0].shape[2:]))
        axes = figure.add_subplot(len(images), 1, row + 1)
        axes.imshow(np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1), cmap="gray")
        axes.set_axis_off()
        # De-normalising hides a mis-normalised pipeline, so say what the model really receives.
        low, high, spread = float(shown.min()), float(shown.max()), float(shown.std())
        kind = "de-normalised" if stats else "raw"
        seen = f"model input range [{low:.3g}, {high:.3g}], std {spread:.3g}"
        axes.set_title(f"{split} ({kind}); {seen}", fontsize=8, loc="left")
    figure.suptitle(title or "inputs as the model sees them")
    return figure


def _displayable(image: Tensor, stats: tuple[Sequence[float], Sequence[float]] | None) -> np.ndarray:
    if stats is not None and len(stats[0]) in (1, image.shape[0]):
        mean = torch.tensor(stats[0]).view(-1, 1, 1)
        std = torch.tensor(stats[1]).view(-1, 1, 1)
        image = (image * std + mean).clamp(0, 1)
    else:
        low, high = image.min(), image.max()
        image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
    pixels = image.permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3]
