"""A binary classifier stuck at 50 % accuracy and loss 0.69 = ln 2.

Three bugs together: the labels were permuted separately from the features (no signal left), the
training data is sorted by class and never shuffled (every batch holds one class), and a ReLU sits
on the logits. The confusion matrix shows nearly every validation sample predicted as one class.

    python examples/stuck_at_chance.py           # the bugs and their diagnosis
    python examples/stuck_at_chance.py --fixed   # aligned labels, shuffled batches, raw logits
"""

from __future__ import annotations

import torch
from common import make_trainer, parse_args
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, digits_tensors


def binary_digits(split: str, fixed: bool) -> TensorDataset:
    """Digits 0-4 against 5-9, sorted by class as exported by a database query."""
    features, digits = digits_tensors(split)  # type: ignore[arg-type]
    labels = (digits >= 5).long()
    order = torch.argsort(labels, stable=True)
    features, labels = features[order], labels[order]
    if not fixed:
        features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))]
    return TensorDataset(features, labels)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=6)
    trainer = make_trainer(args)  # seeds everything: build the model after it, for a reproducible run
    layers: list[nn.Module] = [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2)]
    if not args.fixed:
        layers.append(nn.ReLU())
    train = DataLoader(binary_digits("train", args.fixed), batch_size=32, shuffle=args.fixed)
    val = DataLoader(binary_digits("val", args.fixed), batch_size=128)
    trainer.fit(Classifier(nn.Sequential(*layers), lr=1e-3), train, val)


if __name__ == "__main__":
    main()
