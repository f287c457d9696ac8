"""The default figures carry the measured numbers, fit their labels inside the image, and land as PNGs of a fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

import lightning_sanity as ls
from lightning_sanity.demos import Classifier, DigitImages, SmallCNN
from lightning_sanity.figures import (
    confusion_figure,
    gradient_flow_figure,
    input_histogram_figure,
    sample_grid_figure,
)
from lightning_sanity.loggers import new_figure, save_png


def drawn_texts(figure: Figure) -> list[Text]:
    """Every non-empty text that is drawn (not the labels of an axes switched off or of ticks outside the view)."""
    hidden: set[Text] = set()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            if not axes.axison:
                hidden |= set(axis.findobj(Text))
            low, high = sorted(axis.get_view_interval())
            hidden |= {tick.label1 for tick in axis.get_major_ticks() if not low <= tick.get_loc() <= high}
    found = figure.findobj(lambda artist: isinstance(artist, Text) and artist.get_visible() and bool(artist.get_text()))
    return [text for text in found if isinstance(text, Text) and text not in hidden]


def texts_of(figure: Figure) -> list[str]:
    return [text.get_text() for text in drawn_texts(figure)]


def assert_all_text_inside(figure: Figure) -> None:
    """No label is cut off: the margins are computed from label lengths, not measured by a layout engine."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # places the axis labels
    renderer = canvas.get_renderer()
    width, height = figure.bbox.width, figure.bbox.height
    for text in drawn_texts(figure):
        box = text.get_window_extent(renderer)
        inside = box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1
        assert inside, f"{text.get_text()!r} at {box} is cut off by the figure's edge ({width} x {height})"


def test_confusion_figure_shows_every_count_in_its_cell_and_the_class_names() -> None:
    matrix = torch.tensor([[50, 2, 0], [7, 41, 3], [0, 12345, 9]])
    names = ["airplane", "automobile with a long name", "bird"]
    figure = confusion_figure(matrix, names, "val confusion matrix, epoch 3")
    [axes] = figure.axes
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
        for t in axes.texts
        if t.get_text().isdigit()
    }
    assert cells == {(row, column): str(int(matrix[row, column])) for row in range(3) for column in range(3)}
    floats = confusion_figure(matrix.float(), names)
    assert sorted(t.get_text() for t in floats.axes[0].texts if t.get_text().isdigit()) == sorted(cells.values())
    assert texts_of(figure).count("automobile with a long name") == 2  # labels a row (true) and a column (predicted)
    assert {"true class", "predicted class", "val confusion matrix, epoch 3"} <= set(texts_of(figure))
    np.testing.assert_array_equal(axes.images[0].get_array(), matrix.numpy())
    assert_all_text_inside(figure)


@pytest.mark.parametrize(
    "names", [None, ["cat", "dog", "a much longer class name", "w"], ["AIRPLANE", "WWW MMM WWW MMM WWW", "HEAD", "x"]]
)
def test_confusion_figure_axis_titles_clear_the_class_names(names: list[str] | None) -> None:
    figure = confusion_figure(torch.arange(16).reshape(4, 4), names)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    [axes] = figure.axes
    labels = [
        text.get_window_extent(canvas.get_renderer()) for text in axes.texts if text.get_transform() != axes.transData
    ]
    assert len(labels) == 8
    for title in (axes.xaxis.label, axes.yaxis.label):
        box = title.get_window_extent(canvas.get_renderer())
        assert not any(box.overlaps(label) for label in labels), title.get_text()
    assert_all_text_inside(figure)


def test_confusion_figure_for_many_classes_keeps_the_matrix_without_unreadable_text() -> None:
    matrix = torch.randint(0, 9, (60, 60))
    figure = confusion_figure(matrix, [f"class {index}" for index in range(60)])
    [axes] = figure.axes
    assert len(axes.texts) == 0  # 3600 counts and 120 names are unreadable at any size: index ticks instead
    assert 2 <= len(axes.get_xticks()) <= 12
    np.testing.assert_array_equal(axes.images[0].get_array(), matrix.numpy())
    assert_all_text_inside(figure)


def test_gradient_flow_figure_draws_the_norms_of_every_layer_in_order_and_marks_dead_ones() -> None:
    norms = {"backbone.0": (0.0, 0.0), "backbone.layer3.0.downsample.0": (1e-5, 4e-5), "HEAD_MMM": (0.1, 0.3)}
    figure = gradient_flow_figure(norms)
    [axes] = figure.axes
    assert axes.get_yscale() == "log"
    assert [t.get_text() for t in axes.texts] == list(norms)
    tops = {
        collection.get_label(): [path.vertices[:, 1].max() for path in collection.get_paths()]
        for collection in axes.collections
        if isinstance(collection, PolyCollection)
    }
    assert tops["mean"] == pytest.approx([1e-5, 0.1]) and tops["max"] == pytest.approx([4e-5, 0.3])
    [dead] = [c for c in axes.collections if c.get_label() == "zero / no gradient"]
    assert dead.get_offsets()[:, 0].tolist() == [0]
    assert axes.get_ylim()[0] < 1e-5 < 0.3 < axes.get_ylim()[1]
    assert_all_text_inside(figure)


def test_gradient_flow_figure_reads_on_a_short_range_and_marks_non_finite_layers() -> None:
    figure = gradient_flow_figure(
        {"encoder": (2e-3, 3e-3), "decoder": (float("nan"), float("inf")), "head": (3e-3, 4e-3)}
    )
    [axes] = figure.axes
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    low, high = axes.get_ylim()
    labelled = [tick for tick in axes.yaxis.get_major_locator()() if low <= tick <= high]
    assert len(labelled) >= 3  # values readable although the norms span less than a decade
    [broken] = [c for c in axes.collections if c.get_label() == "NaN / Inf"]
    assert broken.get_offsets()[:, 0].tolist() == [1]
    assert_all_text_inside(figure)


def test_input_histogram_figure_overlays_the_splits_per_channel() -> None:
    generator = torch.Generator().manual_seed(0)
    samples = {
        "train": torch.randn(4096, 3, generator=generator) * 0.01 - 2.1,
        "val": torch.rand(4096, 3, generator=generator),
    }
    figure = input_histogram_figure(samples)
    assert [axes.get_title() for axes in figure.axes] == ["channel 0", "channel 1", "channel 2"]
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["train", "val"]
    low, high = figure.axes[0].get_xlim()
    assert low < -2.1 and high > 0.99  # both splits on one x range: the shift is visible
    assert_all_text_inside(figure)


def test_sample_grid_figure_states_what_the_model_receives() -> None:
    images = {"train": torch.full((8, 3, 16, 16), -2.1), "val": torch.rand(8, 1, 16, 16)}
    figure = sample_grid_figure(images, {"train": ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)), "val": None})
    titles = [axes.get_title(loc="left") for axes in figure.axes]
    assert titles[0].startswith("train (de-normalised); model input range [-2.1, -2.1]")
    assert titles[1].startswith("val (raw)")
    assert figure.axes[0].images[0].get_array().shape[:2] == (16, 8 * 16 + 7)  # 8 samples, 7 gaps
    assert_all_text_inside(figure)


def test_save_png_writes_the_figure_at_its_size(tmp_path: Path) -> None:
    figure = new_figure(3.0, 2.0, layout=None)
    figure.add_axes((0.1, 0.1, 0.8, 0.8)).plot([0, 1])
    path = save_png(figure, str(tmp_path), "sanity/test/train/line", 2)
    assert path.endswith("sanity/test_train_line_epoch002.png")
    with Image.open(path) as image:
        assert image.size == (300, 200)
    assert len(new_figure().axes) == 0


def test_a_fit_with_a_csv_logger_writes_the_four_default_figures(make_trainer: Any, tmp_path: Path) -> None:
    normalize = T.Normalize((0.1,) * 3, (0.25,) * 3)
    train = DataLoader(DigitImages(T.Compose([T.ToTensor(), normalize]), "train"), batch_size=64, shuffle=True)
    val = DataLoader(DigitImages(T.Compose([T.ToTensor(), normalize]), "val"), batch_size=128)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(callbacks=ls.default_callbacks(), logger=logger, limit_train_batches=4, max_epochs=3)
    trainer.fit(Classifier(SmallCNN(), lr=1e-3), train, val)
    written = {path.name.rsplit("_epoch", 1)[0]: path for path in (Path(logger.log_dir) / "sanity").glob("*.png")}
    # the files show the run's final state (epoch 2), not the last epoch an image logger was sent one (epoch 0)
    assert {path.name.rsplit("_epoch", 1)[1] for path in written.values()} == {"002.png"}
    assert set(written) == {
        "confusion_val_confusion_matrix",
        "gradient_flow_train_layers",
        "batch_stats_train_vs_val_histograms",
        "batch_stats_train_vs_val_samples",
    }
    for path in written.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200
