"""Dropout and BatchNorm in the wrong mode: `self.train()` inside `validation_step`, and a probe that
leaves the model in eval mode for the rest of training.

Validation then runs with dropout active and lets BatchNorm absorb the validation data into its
running statistics; training after the probe runs without dropout and with frozen statistics.

    python examples/mode_bug.py           # the bugs and their diagnosis
    python examples/mode_bug.py --fixed   # no mode changes in the steps; the probe restores train()
"""

from __future__ import annotations

import torch
from common import make_trainer, parse_args
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import transforms as T

from lightning_sanity.demos import Classifier, DigitImages, SmallCNN


class ModeBugs(Classifier):
    def __init__(self, fixed: bool) -> None:
        super().__init__(SmallCNN(num_classes=10), lr=3e-3)
        self.fixed = fixed

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if not self.fixed:
            self.train()  # the bug: "make sure the model is ready" copied from a training script
        super().validation_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        """A probe measuring the weight-norm-free output scale on a fixed batch."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self.log("probe_scale", self(torch.ones(2, 3, 32, 32)).abs().mean())
        if self.fixed:
            self.train(was_training)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=3)
    transform = T.Compose([T.ToTensor(), T.Normalize([0.2] * 3, [0.3] * 3)])
    train = DataLoader(DigitImages(transform, split="train"), batch_size=64, shuffle=True)
    val = DataLoader(DigitImages(transform, split="val"), batch_size=128)
    trainer = make_trainer(args)
    trainer.fit(ModeBugs(args.fixed), train, val)


if __name__ == "__main__":
    main()
