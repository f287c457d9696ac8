"""Per-step cost of GradientFlowCallback on a ~1M-parameter model (CPU).

Times whole training steps (``on_train_batch_start`` to ``on_train_batch_end``) in three runs of the
same seeded fit: without the callback, with the callback on steps it does not check, and with it
checking every step. Prints the median over many steps.

    python benchmarks/gradient_flow_cost.py [--steps 300]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity import GradientFlowCallback


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.durations.append(time.perf_counter() - self._start)


class Mlp(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.LayerNorm(512), nn.ReLU(),
            nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10),
        )  # fmt: skip

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def median_step_ms(steps: int, callbacks: list[pl.Callback]) -> float:
    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(4096, 256, generator=generator), torch.randint(0, 10, (4096,), generator=generator)
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer, *callbacks],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(Mlp(), DataLoader(data, batch_size=64, shuffle=True))
    return 1000 * statistics.median(timer.durations[10:])  # skip warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    parameters = sum(p.numel() for p in Mlp().parameters())
    print(
        f"model: MLP with {parameters / 1e6:.2f}M parameters, batch 64, AdamW, 1 CPU thread, torch {torch.__version__}"
    )
    runs = {
        "no callback": [],
        "callback, non-check step": [GradientFlowCallback(dense_steps=3, every_n_steps=10**9)],
        "callback, check step": [GradientFlowCallback(dense_steps=10**9)],
    }
    baseline = None
    for name, callbacks in runs.items():
        ms = median_step_ms(args.steps, callbacks)
        baseline = baseline or ms
        print(f"{name:28s} median step {ms:7.2f} ms  ({ms - baseline:+.2f} ms, {100 * (ms / baseline - 1):+.1f}%)")


if __name__ == "__main__":
    main()
