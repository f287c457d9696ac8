"""Small real datasets and a plain classifier for examples, tests and benchmarks.

Like ``lightning.pytorch.demos``: the data is bundled with scikit-learn (``pip install
lightning-sanity[examples]``), so everything here runs offline in seconds.

Example::

    from torchvision import transforms as T
    train = DigitImages(transform=T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), split="train")
    model = Classifier(SmallCNN(num_classes=10))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

Split = Literal["train", "val", "all"]


def _split_indices(n: int, split: Split, val_fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(n * val_fraction)
    return {"train": order[n_val:], "val": order[:n_val], "all": np.arange(n)}[split]


class DigitImages(Dataset):
    """scikit-learn's 8x8 digits rendered as RGB PIL images (``size`` x ``size``), for torchvision pipelines.

    Args:
        transform: Applied to each PIL image, like a torchvision dataset's ``transform``.
        split: A fixed, disjoint 75/25 ``"train"``/``"val"`` split, or ``"all"``.
        size: Side of the rendered image in pixels.
        sort_by_class: Order samples by label (to reproduce the unshuffled sorted-data bug).
    """

    classes = [str(digit) for digit in range(10)]

    def __init__(
        self,
        transform: Callable[[Image.Image], Any] | None = None,
        split: Split = "train",
        size: int = 32,
        sort_by_class: bool = False,
    ) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        indices = _split_indices(len(digits.target), split)
        if sort_by_class:
            indices = indices[np.argsort(digits.target[indices], kind="stable")]
        pixels = (digits.images[indices] * (255.0 / 16.0)).astype(np.uint8)
        resample = Image.Resampling.BILINEAR
        self.images = [Image.fromarray(p).resize((size, size), resample).convert("RGB") for p in pixels]
        self.targets = digits.target[indices].astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


def _tabular(bunch: Any, split: Split, standardize: bool) -> tuple[Tensor, Tensor]:
    features = bunch.data.astype(np.float32)
    if standardize:
        train = features[_split_indices(len(features), "train")]
        std = train.std(0)
        features = (features - train.mean(0)) / np.where(std > 0, std, 1.0)
    indices = _split_indices(len(features), split)
    return torch.from_numpy(features[indices]), torch.from_numpy(bunch.target[indices].astype(np.int64))


def wine_tensors(split: Split = "train", standardize: bool = True) -> tuple[Tensor, Tensor]:
    """scikit-learn's wine data (13 features, 3 classes) as float32 features and int64 labels.

    ``standardize`` uses the mean and std of the training split, as a correct pipeline does.
    """
    from sklearn.datasets import load_wine

    return _tabular(load_wine(), split, standardize)


def digits_tensors(split: Split = "train", standardize: bool = True) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as flat 64-feature float32 rows and int64 labels 0-9 (see :func:`wine_tensors`)."""
    from sklearn.datasets import load_digits

    return _tabular(load_digits(), split, standardize)


class WineDataModule(pl.LightningDataModule):
    """Standardised wine data (see :func:`wine_tensors`) as a datamodule, e.g. for LightningCLI."""

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*wine_tensors("train")), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*wine_tensors("val")), batch_size=self.batch_size)


class SmallCNN(nn.Sequential):
    """Conv-BN-ReLU x2, dropout, linear head: a typical small image classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * width, num_classes),
        )


def mlp(in_features: int, num_classes: int, hidden: int = 32, dropout: float = 0.1) -> nn.Sequential:
    """A two-layer MLP for tabular data."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class Classifier(pl.LightningModule):
    """Cross-entropy classifier around ``net``, written the common way.

    ``validation_step`` computes ``self(x)`` and logs the loss, returning nothing.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-2, optimizer: str = "adam") -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.optimizer_name = optimizer

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class GAN(pl.LightningModule):
    """A small GAN on wine features: manual optimisation with two optimizers, stepping in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 13))
        self.discriminator = nn.Sequential(nn.Linear(13, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()  # type: ignore[attr-defined]
        noise = torch.randn(real.shape[0], 8)
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        self.toggle_optimizer(opt_d)
        fake = self.generator(noise).detach()
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones) + (
            F.binary_cross_entropy_with_logits(self.discriminator(fake), zeros)
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self.generator(noise)), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        ]
