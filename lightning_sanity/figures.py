"""The pictures: pure functions from measured numbers to matplotlib figures (see ``loggers.log_figure``).

They are drawn for every fit that has a logger, so they are built to render in one cheap pass: axes are placed at
fixed margins computed from the label lengths (no layout engine and its extra measuring pass), bars are one
collection rather than one patch each, and no axis carries ticks that say nothing (minor log ticks, histogram
densities). ``python benchmarks/overhead.py --skip-overhead`` prints what each one costs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from matplotlib.transforms import offset_copy
from torch import Tensor

from lightning_sanity.loggers import new_figure

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}

_POINTS_PER_INCH = 72.0
# Character widths in em, a little above DejaVu Sans' (matplotlib's default: lower case and digits 0.3-0.65, capitals
# and m/w up to 1.0): margins sized with them fit the labels without measuring them, which would cost a draw.
_CHARACTER_EM = 0.62
_WIDE_CHARACTER_EM = 0.85
# Every class gets a labelled row and column up to this many classes; above, the labels cannot be read anyway and
# the axes get a few index ticks instead of thousands of text objects.
_MAX_LABELLED_CLASSES = 40
_MAX_ANNOTATED_CLASSES = 20
_LABEL_GAP = 3.0  # points between an axes and the texts labelling its rows or columns


def _text_inches(text: str, fontsize: float) -> float:
    """Estimated width of ``text`` set at ``fontsize`` points (at least its width in DejaVu Sans)."""
    wide = sum(character.isupper() or character in "mw" for character in text)
    return (wide * _WIDE_CHARACTER_EM + (len(text) - wide) * _CHARACTER_EM) * fontsize / _POINTS_PER_INCH


def _axes_at(figure: Figure, left: float, bottom: float, right: float, top: float) -> Axes:
    """Axes filling ``figure`` but for the given margins (inches)."""
    width, height = figure.get_size_inches()
    return figure.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))


def _label_below(axes: Axes, positions: Iterable[float], labels: Iterable[str], **text: Any) -> None:
    """Label x positions with plain texts under the axes: a tick per label costs five artists and a measuring pass."""
    below = offset_copy(axes.get_xaxis_transform(), axes.get_figure(root=True), y=-_LABEL_GAP, units="points")
    for position, label in zip(positions, labels, strict=True):
        axes.text(position, 0, label, transform=below, va="top", **text)


def _label_left(axes: Axes, positions: Iterable[float], labels: Iterable[str], **text: Any) -> None:
    """Label y positions with plain texts left of the axes (see :func:`_label_below`)."""
    left = offset_copy(axes.get_yaxis_transform(), axes.get_figure(root=True), x=-_LABEL_GAP, units="points")
    for position, label in zip(positions, labels, strict=True):
        axes.text(0, position, label, transform=left, ha="right", va="center", **text)


def confusion_figure(matrix: Tensor, class_names: Sequence[str] | None = None, title: str = "") -> Figure:
    """The confusion matrix (rows = true class, columns = predicted), with each cell's count up to 20 classes.

    Example::

        figure = confusion_figure(callback.confusion_matrix, ["cat", "dog"])
    """
    counts = matrix.detach().cpu().numpy()
    classes = counts.shape[0]
    names = [str(name) for name in class_names] if class_names is not None and len(class_names) == classes else None
    labels = names or [str(index) for index in range(classes)]
    labelled = classes <= _MAX_LABELLED_CLASSES
    tick_size = 9.0
    label_width = max(_text_inches(label, tick_size) for label in labels) if labelled else _text_inches("00000", 9)
    side = min(2.5 + 0.3 * classes, 10.0)
    # Column labels are rotated by 45 degrees: they reach sin(45°) of their width and height below the axes.
    column_labels = 0.71 * (label_width + tick_size / _POINTS_PER_INCH) + _LABEL_GAP / _POINTS_PER_INCH
    row_labels = label_width + _LABEL_GAP / _POINTS_PER_INCH
    left, bottom, right, top = 0.35 + row_labels, 0.35 + column_labels, 0.2, 0.4
    figure = new_figure(left + side + right, bottom + side + top, layout=None)
    axes = _axes_at(figure, left, bottom, right, top)
    axes.imshow(counts, cmap="viridis", interpolation="nearest")
    if labelled:
        axes.set_xticks([])
        axes.set_yticks([])
        _label_below(axes, range(classes), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size)
        _label_left(axes, range(classes), labels, fontsize=tick_size)
    else:
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    if classes <= _MAX_ANNOTATED_CLASSES:
        whole = counts.dtype.kind in "iub" or bool(np.all(np.mod(counts, 1) == 0))  # counts kept as floats, too
        texts = [f"{count:.0f}" if whole else f"{count:.3g}" for count in counts.flat]
        # The widest count fills at most 70% of its cell (a digit is about 0.6 em wide).
        fontsize = min(12.0, 0.7 * side / classes * _POINTS_PER_INCH / (0.6 * max(2, *map(len, texts))))
        bright = counts > (counts.min() + counts.max()) / 2  # upper half of viridis: dark text reads better
        for (row, column), text in zip(np.ndindex(counts.shape), texts, strict=True):
            colour = "black" if bright[row, column] else "white"
            axes.text(column, row, text, ha="center", va="center", fontsize=fontsize, color=colour)
    axes.set_xlabel("predicted class", labelpad=column_labels * _POINTS_PER_INCH + 4 if labelled else 4)
    axes.set_ylabel("true class", labelpad=row_labels * _POINTS_PER_INCH + 6 if labelled else 4)
    axes.set_title(title or "confusion matrix (rows: true, columns: predicted)", fontsize=10)
    return figure


def gradient_flow_figure(layer_norms: Mapping[str, tuple[float, float]], title: str = "") -> Figure:
    """Per-layer gradient norm (mean and max over the layer's parameters) from input to output, log scale.

    Vanishing layers show as a slope down towards the input; dead or cut-off layers drop out of the
    plot (a zero norm has no logarithm) and are marked at the bottom, layers with NaN or Inf at the top.
    """
    names = list(layer_norms)
    means = np.array([layer_norms[name][0] for name in names], dtype=float)
    maxima = np.array([layer_norms[name][1] for name in names], dtype=float)
    tick_size = 7.0
    left, right, top = 0.8, 0.15, 0.35
    bottom = 0.15 + max((_text_inches(name, tick_size) for name in names), default=0.0)
    width = left + right + max(4.5, 0.17 * len(names))
    figure = new_figure(width, bottom + 3.2 + top, layout=None)
    axes = _axes_at(figure, left, bottom, right, top)
    axes.set_yscale("log")
    values = np.concatenate([means, maxima])
    positive = values[np.isfinite(values) & (values > 0)]
    low, high = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    floor, ceiling = low / 10, high * 2
    positions = np.arange(len(names))
    for values, colour, label, alpha in ((maxima, "tab:cyan", "max", 0.5), (means, "tab:blue", "mean", 1.0)):
        shown = np.isfinite(values) & (values > 0)
        bars = [
            [(x - 0.4, floor), (x - 0.4, v), (x + 0.4, v), (x + 0.4, floor)]
            for x, v in zip(positions[shown], values[shown], strict=True)
        ]
        axes.add_collection(PolyCollection(bars, facecolors=colour, alpha=alpha, label=label))
    dead = positions[maxima <= 0]
    if len(dead):
        axes.scatter(dead, np.full(len(dead), floor * 2), marker="x", color="tab:red", label="zero / no gradient")
    broken = positions[~np.isfinite(means) | ~np.isfinite(maxima)]
    if len(broken):
        axes.scatter(broken, np.full(len(broken), ceiling / 2), marker="^", color="tab:red", label="NaN / Inf")
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(floor, ceiling)
    # No minor ticks (dozens of artists, unlabelled); over a short range 2 and 5 times a power of ten are labelled.
    axes.yaxis.set_minor_locator(NullLocator())
    if np.log10(ceiling / floor) < 3:
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    # 1e-03 rather than the default mathtext 10^{-3}: typesetting mathtext costs more than the rest of the axis.
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))
    axes.set_xticks([])
    _label_below(axes, positions, names, rotation=90, ha="center", fontsize=tick_size)
    axes.set_ylabel("gradient norm")
    axes.set_title(title or "gradient flow (input → output)", fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    return figure


def input_histogram_figure(samples: Mapping[str, Tensor], max_channels: int = 4, title: str = "") -> Figure:
    """Per-channel histograms of model inputs, splits overlaid, so a train/val shift is obvious.

    The y axis is a density with no ticks: the shapes and the x range carry the information.

    Args:
        samples: split name → float tensor ``[N, C]`` of input values per channel.
    """
    channels = min(max_channels, *(int(values.shape[1]) for values in samples.values()))
    panel, gap, left, bottom, top = 2.6, 0.35, 0.25, 0.4, 0.55
    figure = new_figure(left + channels * (panel + gap), bottom + 2.2 + top, layout=None)
    width, height = figure.get_size_inches()
    for channel in range(channels):
        rectangle = ((left + channel * (panel + gap)) / width, bottom / height, panel / width, 2.2 / height)
        axes = figure.add_axes(rectangle)
        values = {split: v[:, channel].float().cpu().numpy() for split, v in samples.items()}
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        bins = np.linspace(low, high if high > low else low + 1e-6, 50)
        for split, v in values.items():
            # One filled step patch per split (not one bar patch per bin): a quarter of the rendering time.
            density, edges = np.histogram(v[np.isfinite(v)], bins=bins, density=True)
            axes.stairs(density, edges, fill=True, alpha=0.5, label=split, color=SPLIT_COLOURS.get(split))
        axes.set_yticks([])
        axes.xaxis.set_major_locator(MaxNLocator(5))
        axes.tick_params(labelsize=8)
        axes.set_title(f"channel {channel}", fontsize=9)
    figure.axes[0].legend(fontsize=8)
    figure.suptitle(title or "input distributions", fontsize=10)
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
    row_height, caption, top = 1.1, 0.25, 0.35
    figure = new_figure(1.2 * per_split, top + len(images) * (row_height + caption), layout=None)
    width, height = figure.get_size_inches()
    for row, (split, batch) in enumerate(images.items()):
        shown = batch[:per_split].detach().float().cpu()
        stats = normalization.get(split)
        # One image per split (the samples side by side, white gaps) instead of one axes per sample: far cheaper
        # to lay out and render.
        tiles = [_displayable(image, stats) for image in shown]
        gap = np.ones((tiles[0].shape[0], max(1, tiles[0].shape[1] // 16), *tiles[0].shape[2:]))
        bottom = height - top - (row + 1) * (row_height + caption)
        axes = figure.add_axes((0.01, bottom / height, 0.98, row_height / height))
        strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
        axes.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes.set_axis_off()
        # De-normalising hides a mis-normalised pipeline, so say what the model really receives.
        low, high, spread = float(shown.min()), float(shown.max()), float(shown.std())
        kind = "de-normalised" if stats else "raw"
        seen = f"model input range [{low:.3g}, {high:.3g}], std {spread:.3g}"
        axes.set_title(f"{split} ({kind}); {seen}", fontsize=8, loc="left")
    figure.suptitle(title or "inputs as the model sees them", fontsize=10)
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
