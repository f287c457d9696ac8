"""Calibrate the position prior of dense tasks (ConfusionCallback's learnability verdicts on segmentation).

Every run is a real ``Trainer.fit`` of a small U-Net-ish conv net (zero padding: it can tell the borders from the
centre) on generated segmentation data: noise images with squares and discs of ``K - 1`` object classes, bright in
their class's channel, on a background. Objects are either centred (their centres near the image centre, so the
corners are always background: a strong position prior) or wrapped around the borders (every pixel equally likely
an object's: no position prior). Healthy runs pair each image with its own mask; broken ones with another image's
mask (train and val), so the model can learn only where objects tend to be. Varied: placement, 2-4 classes, two
seeds, two learning rates, 16 or 64 validation images.

Per run it prints the final validation cross-entropy against the class-prior entropy and the (bias-corrected)
position-prior entropy, whether the class prior alone would have vetoed a verdict ("beats class"), and the verdicts
standing at the end. The summary is the table in docs/findings.md: healthy runs with a standing verdict (false
alarms), broken runs without one (silent), with the class prior only and with the position prior.

    python benchmarks/calibrate_position_prior.py          # 96 fits, about 3 minutes on two CPU cores
    python benchmarks/calibrate_position_prior.py --quick  # 24 fits
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import ConfusionCallback, Severity
from lightning_sanity.learnability import PRIOR_MARGIN

SIZE = 16
VERDICTS = ("eval.prediction_collapse", "eval.imbalance_masked", "eval.chance_level", "eval.below_chance")


def shapes(n: int, classes: int, centred: bool, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` images of ``classes - 1`` channels with 1-2 objects (squares or discs; class ``k`` bright in channel
    ``k - 1``), centred near the middle or anywhere (wrapped around the borders)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, classes - 1, SIZE, SIZE, generator=generator) * 0.5
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for index in range(n):
        for _ in range(int(torch.randint(1, 3, (1,), generator=generator))):
            if centred:
                cy, cx = (SIZE / 2 + 1.5 * torch.randn(2, generator=generator)).round().tolist()
            else:
                cy, cx = torch.randint(0, SIZE, (2,), generator=generator).tolist()
            dy = (yy - cy + SIZE // 2) % SIZE - SIZE // 2 if not centred else yy - cy
            dx = (xx - cx + SIZE // 2) % SIZE - SIZE // 2 if not centred else xx - cx
            radius = int(torch.randint(2, 4, (1,), generator=generator))
            label = int(torch.randint(1, classes, (1,), generator=generator))
            square = bool(torch.randint(0, 2, (1,), generator=generator))
            inside = (dy.abs() <= radius) & (dx.abs() <= radius) if square else dy**2 + dx**2 <= radius**2
            masks[index][inside] = label
            images[index, label - 1][inside] += 1.5
    return images, masks


class Segmenter(pl.LightningModule):
    def __init__(self, classes: int, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.down = nn.Sequential(nn.Conv2d(classes - 1, 8, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.down(x)
        return self.head(torch.cat([skip, self.up(self.bottom(skip))], 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def run(centred: bool, classes: int, seed: int, lr: float, val_size: int, broken: bool) -> dict[str, object]:
    pl.seed_everything(seed, verbose=False)
    images, masks = shapes(256, classes, centred, seed=10 * seed + 1)
    val_images, val_masks = shapes(val_size, classes, centred, seed=10 * seed + 2)
    if broken:
        generator = torch.Generator().manual_seed(seed)
        masks = masks[torch.randperm(len(masks), generator=generator)]
        val_masks = val_masks[torch.randperm(len(val_masks), generator=generator)]
    callback = ConfusionCallback()
    trainer = pl.Trainer(
        callbacks=[callback], max_epochs=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # the run's sanity report
        trainer.fit(
            Segmenter(classes, lr),
            DataLoader(TensorDataset(images, masks), batch_size=16, shuffle=True),
            DataLoader(TensorDataset(val_images, val_masks), batch_size=16),
        )
    latest = callback.history["val"][-1]
    summary = latest.summary
    standing = sorted(
        f.code
        for f in callback.findings
        if f.code in VERDICTS and f.severity >= Severity.WARNING and f.resolved_epoch is None
    )
    loss = latest.eval_loss if latest.eval_loss is not None else float("nan")
    return {
        "loss": loss,
        "class": summary.prior_entropy,
        "position": summary.position_entropy,
        "noise": summary.position_noise,
        "beats_class": loss < (1 - PRIOR_MARGIN) * summary.prior_entropy,
        "beats_input_free": loss < (1 - PRIOR_MARGIN) * summary.input_free_entropy,
        "standing": standing,
        "miou": summary.miou,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, one learning rate")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    seeds, lrs = ((0,), (3e-2,)) if args.quick else ((0, 1), (3e-3, 3e-2))
    rows = []
    start = time.perf_counter()
    for broken, centred, classes, seed, lr, val_size in itertools.product(
        (False, True), (True, False), (2, 3, 4), seeds, lrs, (16, 64)
    ):
        result = run(centred, classes, seed, lr, val_size, broken)
        rows.append((broken, centred, result))
        print(
            f"{'broken ' if broken else 'healthy'} {'centred' if centred else 'wrapped'} K={classes} seed={seed} "
            f"lr={lr:g} val={val_size:3d}: val CE {result['loss']:.3f} class {result['class']:.3f} position "
            f"{result['position']:.3f} +- {result['noise']:.3f} mIoU {result['miou']:.2f} "
            f"beats class {result['beats_class']!s:5} beats input-free {result['beats_input_free']!s:5} "
            f"standing {result['standing']}",
            flush=True,
        )
    print(f"\n{len(rows)} fits in {time.perf_counter() - start:.0f}s")
    print("| runs | fits | beat the class prior | beat min(class, position) | a verdict standing |")
    print("|---|---|---|---|---|")
    for broken, centred in itertools.product((False, True), (True, False)):
        group = [r for b, c, r in rows if b == broken and c == centred]
        name = f"{'broken (masks of other images)' if broken else 'healthy'}, {'centred' if centred else 'wrapped'}"
        beats_class = sum(bool(r["beats_class"]) for r in group)
        beats = sum(bool(r["beats_input_free"]) for r in group)
        standing = sum(bool(r["standing"]) for r in group)
        print(f"| {name} | {len(group)} | {beats_class} | {beats} | {standing} |")
    healthy = [r for b, _, r in rows if not b]
    broken_rows = [r for b, _, r in rows if b]
    ratio = [float(r["loss"]) / min(float(r["class"]), float(r["position"])) for r in healthy]
    broken_ratio = [float(r["loss"]) / min(float(r["class"]), float(r["position"])) for r in broken_rows]
    print(f"val CE / input-free entropy: healthy max {max(ratio):.3f}, broken min {min(broken_ratio):.3f}")


if __name__ == "__main__":
    main()
