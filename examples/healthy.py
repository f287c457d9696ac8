"""A correct program: the diagnostics stay quiet (INFO at most) and log what there is to look at.

Digits rendered as images, a standard augmented train pipeline and a plain val pipeline, both
normalised with the same statistics on the 0-1 scale, a small CNN with BatchNorm and dropout.

    python examples/healthy.py --log-dir logs   # then open logs/ (CSV metrics, figures, report)
"""

from __future__ import annotations

from common import make_trainer, parse_args
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages, SmallCNN

MEAN, STD = [0.30] * 3, [0.32] * 3  # measured on the training split


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=3)
    train_transform = T.Compose(
        [T.RandomResizedCrop(32, scale=(0.8, 1.0)), T.RandomRotation(10), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    val_transform = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train = DataLoader(DigitImages(train_transform, split="train"), batch_size=64, shuffle=True)
    val = DataLoader(DigitImages(val_transform, split="val"), batch_size=128)
    trainer = make_trainer(args)
    trainer.fit(Classifier(SmallCNN(num_classes=10), lr=3e-3), train, val)


if __name__ == "__main__":
    main()
