"""Normalize given 0-255 mean/std after ToTensor() in train, and no Normalize at all in val.

ToTensor() already scales pixels to [0, 1], so Normalize([123.675, ...], [58.395, ...]) turns every
training pixel into about -2.1 with a spread of a few thousandths: the model sees nearly constant
inputs. The validation pipeline forgot Normalize, so it sees a different distribution altogether.

    python examples/normalize_bug.py           # the bug and its diagnosis
    python examples/normalize_bug.py --fixed   # the digits' own statistics on the 0-1 scale, in both splits
"""

from __future__ import annotations

from common import make_trainer, parse_args
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages, SmallCNN

IMAGENET_MEAN_255, IMAGENET_STD_255 = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
DIGITS_MEAN, DIGITS_STD = [0.30] * 3, [0.32] * 3  # measured on the training split, on the 0-1 scale of ToTensor()
SIZE = 12  # the 8x8 digits, slightly upscaled: SmallCNN's 3x3 convolutions then see whole strokes


def pipelines(fixed: bool) -> tuple[T.Compose, T.Compose]:
    augment = [T.RandomResizedCrop(SIZE, scale=(0.8, 1.0)), T.RandomRotation(10)]
    if fixed:
        normalize = T.Normalize(DIGITS_MEAN, DIGITS_STD)
        return T.Compose([*augment, T.ToTensor(), normalize]), T.Compose([T.Resize(SIZE), T.ToTensor(), normalize])
    train = T.Compose([*augment, T.ToTensor(), T.Normalize(IMAGENET_MEAN_255, IMAGENET_STD_255)])
    return train, T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor()])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=8)
    train_transform, val_transform = pipelines(args.fixed)
    train = DataLoader(DigitImages(train_transform, split="train", size=SIZE), batch_size=32, shuffle=True)
    val = DataLoader(DigitImages(val_transform, split="val", size=SIZE), batch_size=128)
    trainer = make_trainer(args)
    trainer.fit(Classifier(SmallCNN(num_classes=10), lr=1e-2), train, val)


if __name__ == "__main__":
    main()
