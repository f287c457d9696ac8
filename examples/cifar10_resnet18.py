"""The classic ResNet-18 on CIFAR-10, with the sanity callbacks and a TensorBoard or CSV logger.

Uses the real torchvision loader (downloads to --data-dir when online). Offline, --fake-data runs
the same pipeline on torchvision's FakeData so the callbacks can be seen on a realistic model.

    python examples/cifar10_resnet18.py --data-dir ~/data --epochs 30
    python examples/cifar10_resnet18.py --fake-data --epochs 1 --limit-batches 5
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, models
from torchvision import transforms as T

import lightning_sanity
from lightning_sanity.demos import Classifier

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 with the usual CIFAR stem: a 3x3 first convolution and no max-pool."""
    model = models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class ResNetClassifier(Classifier):
    """The demos' plain classifier with the usual CIFAR recipe: SGD, momentum, weight decay, cosine schedule."""

    def __init__(self, lr: float = 0.1, epochs: int = 30) -> None:
        super().__init__(resnet18_cifar(), lr=lr)
        self.epochs = epochs

    def configure_optimizers(self) -> dict:  # type: ignore[override]
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def cifar10(args: argparse.Namespace, train: bool) -> Dataset:
    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    transform = T.Compose([*augment, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    if args.fake_data:
        size = 512 if train else 256
        return datasets.FakeData(size, (3, 32, 32), 10, transform=transform, random_offset=0 if train else size)
    return datasets.CIFAR10(args.data_dir, train=train, transform=transform, download=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--fake-data", action="store_true", help="torchvision FakeData instead of CIFAR-10")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (quick look)")
    parser.add_argument("--log-dir", default="lightning_logs_cifar10")
    args = parser.parse_args()

    pl.seed_everything(0)
    train = DataLoader(cifar10(args, train=True), batch_size=args.batch_size, shuffle=True, num_workers=2)
    val = DataLoader(cifar10(args, train=False), batch_size=256, num_workers=2)
    try:
        logger: pl.loggers.Logger = pl.loggers.TensorBoardLogger(args.log_dir, name="cifar10_resnet18")
    except ModuleNotFoundError:
        logger = pl.loggers.CSVLogger(args.log_dir, name="cifar10_resnet18")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=lightning_sanity.default_callbacks(),
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
    )
    trainer.fit(ResNetClassifier(epochs=args.epochs), train, val)


if __name__ == "__main__":
    main()
