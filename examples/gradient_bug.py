"""A backbone cut off by `.detach()`, and an optimizer built without some trainable parameters.

The backbone never receives a gradient, so it stays at its random initialisation; the projection
layer gets gradients but is missing from the optimizer, so it never changes either. The loss still
falls a little (the head learns), which is why nobody notices.

    python examples/gradient_bug.py           # the bugs and their diagnosis
    python examples/gradient_bug.py --fixed   # gradients flow everywhere, every parameter is optimised
"""

from __future__ import annotations

import torch
from common import make_trainer, parse_args
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, digits_tensors


class GradientBugs(Classifier):
    def __init__(self, fixed: bool) -> None:
        super().__init__(nn.Identity(), lr=1e-3)
        self.fixed = fixed
        self.backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.projection = nn.Linear(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        if not self.fixed:
            features = features.detach()  # the bug: left over from a feature-extraction experiment
        return self.head(torch.relu(self.projection(features)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.fixed:
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        # the bug: the projection layer was added later and never put in the optimizer
        return torch.optim.Adam([*self.backbone.parameters(), *self.head.parameters()], lr=self.lr)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=3)
    train = DataLoader(TensorDataset(*digits_tensors("train")), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*digits_tensors("val")), batch_size=128)
    trainer = make_trainer(args)
    trainer.fit(GradientBugs(args.fixed), train, val)


if __name__ == "__main__":
    main()
