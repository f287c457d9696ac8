"""A hand-written test loop that assigns instead of accumulating, evaluated on the training set.

`n_correct = (pred == y).sum()` keeps only the last batch's count while `n_total` grows, so the
reported test accuracy is far below what the model really achieves. And the "test" loader was
built from the training split, so even a correct number would say nothing about generalisation.

    python examples/eval_accumulator_bug.py           # the bugs and their diagnosis
    python examples/eval_accumulator_bug.py --fixed   # torchmetrics Accuracy on the held-out split
"""

from __future__ import annotations

from common import make_trainer, parse_args
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_sanity.demos import Classifier, mlp, wine_tensors


class HandWrittenTestLoop(Classifier):
    def on_test_epoch_start(self) -> None:
        self.n_correct, self.n_total = 0, 0

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = self(x).argmax(dim=1)
        self.n_correct = (pred == y).sum().item()  # the bug: `=` where `+=` was meant
        self.n_total += len(y)

    def on_test_epoch_end(self) -> None:
        self.log("test_acc", self.n_correct / self.n_total)


class TorchmetricsTestLoop(Classifier):
    def __init__(self) -> None:
        super().__init__(mlp(13, 3), lr=1e-2)
        self.test_acc = MulticlassAccuracy(num_classes=3, average="micro")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], epochs=10)
    train = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(*wine_tensors("val")), batch_size=16)
    model = TorchmetricsTestLoop() if args.fixed else HandWrittenTestLoop(mlp(13, 3), lr=1e-2)
    test = val if args.fixed else DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16)
    trainer = make_trainer(args)
    trainer.fit(model, train, val)
    trainer.test(model, test)


if __name__ == "__main__":
    main()
