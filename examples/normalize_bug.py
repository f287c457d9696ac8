"""Normalize given 0-255 mean/std after ToTensor() in train, and no Normalize at all in val.

ToTensor() already scales pixels to [0, 1], so Normalize([123.675, ...], [58.395, ...]) turns every
training pixel into about -2.1 with a spread of a few thousandths: the model sees nearly constant
inputs. The validation pipeline forgot Normalize, so it sees a different distribution altogether.

    python examples/normalize_bug.py           # the bug and its diagnosis
    python examples/normalize_bug.py --fixed   # ImageNet statistics on the 0-1 scale, in both splits
"""

from __future__ import annotations

from common import make_trainer, parse_args
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages, SmallCNN

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGENET_MEAN_255, IMAGENET_STD_255 = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def pipelines(fixed: bool) -> tuple[T.Compose, T.Compose]:
    augment = [T.RandomResizedCrop(32, scale=(0.8, 1.0)), T.RandomRotation(10)]
    if fixed:
        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        return T.Compose([*augment, T.ToTensor(), normalize]), T.Compose([T.Resize(32), T.ToTensor(), normalize])
    train = T.Compose([*augment, T.ToTensor(), T.Normalize(IMAGENET_MEAN_255, IMAGENET_STD_255)])
    return train, T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=2)
    train_transform, val_transform = pipelines(args.fixed)
    train = DataLoader(DigitImages(train_transform, split="train"), batch_size=64, shuffle=True)
    val = DataLoader(DigitImages(val_transform, split="val"), batch_size=128)
    trainer = make_trainer(args)
    trainer.fit(Classifier(SmallCNN(num_classes=10), lr=3e-3), train, val)


if __name__ == "__main__":
    main()
