"""One adapter between the sanity callbacks and whatever Lightning loggers the user attached."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
from matplotlib import rc_context
from matplotlib.figure import Figure
from torch import Tensor


def scalar_key(callback: str, split: str, metric: str) -> str:
    """The one naming scheme for logged scalars: ``sanity/<callback>/<split>/<metric>``."""
    return f"sanity/{callback}/{split}/{metric}"


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float | Tensor]) -> None:
    """Send ``metrics`` to every attached logger at the current global step (rank zero only).

    Written to the loggers directly rather than through ``LightningModule.log`` so that our
    scalars never enter ``callback_metrics`` (where they could collide with a monitored key or
    the progress bar) and can be logged from any hook. Tensors are read to the host here, so
    call this only on the steps that log.
    """
    if trainer.global_rank != 0 or not trainer.loggers or not metrics:
        return
    values = {key: float(value) for key, value in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)


def figure_file_name(tag: str, epoch: int) -> str:
    """``sanity/confusion/val/matrix`` at epoch 3 → ``confusion_val_matrix_epoch003.png``."""
    stem = tag.removeprefix("sanity/").replace("/", "_")
    return f"{stem}_epoch{epoch:03d}.png"


def save_png(figure: Figure, directory: str, tag: str, epoch: int) -> str:
    """Render ``figure`` to ``<directory>/sanity/<tag>_epochNNN.png`` at 100 dpi.

    Text is rendered unhinted and the PNG compressed at zlib level 1: glyph hinting and the default level 6 add
    20-30% to the rendering time of a figure, for no visible difference at this resolution.
    """
    folder = os.path.join(directory, "sanity")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, figure_file_name(tag, epoch))
    with rc_context({"text.hinting": "no_hinting"}):
        figure.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    return path


_IMAGE_LOGGERS = frozenset({"TensorBoardLogger", "WandbLogger", "MLFlowLogger", "CometLogger", "NeptuneLogger"})


def takes_images(logger: Any) -> bool:
    """Whether ``logger`` has an image API we use (TensorBoard, W&B, MLflow, Comet, Neptune)."""
    return type(logger).__name__ in _IMAGE_LOGGERS


def _send_to_image_logger(logger: Any, figure: Figure, tag: str, step: int, epoch: int) -> str | None:
    """Send ``figure`` through the logger's native image API, which keeps one image per step."""
    kind = type(logger).__name__
    if kind == "TensorBoardLogger":
        logger.experiment.add_figure(tag, figure, global_step=step, close=False)
    elif kind == "WandbLogger":
        logger.log_image(key=tag, images=[figure], step=step)
    elif kind == "MLFlowLogger":
        artifact = f"sanity/{figure_file_name(tag, epoch)}"
        logger.experiment.log_figure(logger.run_id, figure, artifact)
        return artifact
    elif kind == "CometLogger":
        logger.experiment.log_figure(figure_name=tag, figure=figure, step=step)
    elif kind == "NeptuneLogger":
        logger.experiment[tag].append(figure)
    return None


def png_directories(trainer: pl.Trainer, save_dir: str | None = None) -> list[str]:
    """Where figures go as PNG files: the directory of each logger without an image API, and ``save_dir``."""
    directories = [
        getattr(logger, "log_dir", None) or logger.save_dir for logger in trainer.loggers if not takes_images(logger)
    ]
    return [d for d in directories if d] + ([save_dir] if save_dir is not None else [])


def has_figure_destination(trainer: pl.Trainer, save_dir: str | None = None) -> bool:
    """Whether a figure drawn now would go anywhere (rank zero with a logger or a ``save_dir``)."""
    return trainer.global_rank == 0 and (bool(trainer.loggers) or save_dir is not None)


def new_figure(
    width: float = 6.0, height: float = 4.0, layout: Literal["constrained"] | None = "constrained"
) -> Figure:
    """A figure outside pyplot's registry: no GUI backend is touched and nothing needs closing.

    Building figures this way (rather than ``plt.subplots``) keeps memory flat over hundreds of
    epochs and leaves the user's interactive matplotlib backend alone. ``layout=None`` is for figures that place
    their axes themselves: constrained layout measures every text in an extra pass over the figure.
    """
    return Figure(figsize=(width, height), layout=layout)


def log_figure(trainer: pl.Trainer, tag: str, figure: Figure, save_dir: str | None = None) -> list[str]:
    """Send ``figure`` (from :func:`new_figure`) to every attached logger now, on rank zero only.

    TensorBoard, Weights & Biases, MLflow, Comet and Neptune get it through their image APIs;
    other loggers (CSVLogger, ...) get a PNG under ``<log_dir>/sanity/``. With no logger nothing is
    written unless ``save_dir`` is given. Returns the PNG paths / artifact names written.
    (:meth:`SanityCallback.log_figure` sends to image loggers now but writes PNG files once, at the run's end.)

    Example::

        figure = new_figure()
        figure.add_subplot().plot(norms)
        log_figure(trainer, "sanity/gradient_flow/train/layers", figure)
    """
    if trainer.global_rank != 0:
        return []
    written = send_to_image_loggers(trainer, tag, figure)
    written += [
        save_png(figure, directory, tag, trainer.current_epoch) for directory in png_directories(trainer, save_dir)
    ]
    return written


def send_to_image_loggers(trainer: pl.Trainer, tag: str, figure: Figure) -> list[str]:
    """Send ``figure`` to the loggers with an image API (rank zero only); returns artifact names written."""
    if trainer.global_rank != 0:
        return []
    step, epoch = trainer.global_step, trainer.current_epoch
    sent = [
        _send_to_image_logger(logger, figure, tag, step, epoch) for logger in trainer.loggers if takes_images(logger)
    ]
    return [artifact for artifact in sent if artifact]
