"""A real DDP fit (2 CPU processes, gloo) run by tests/test_distributed.py; each rank writes what it saw.

Usage: python tests/ddp_fit.py OUT_DIR DEVICES [--one-rank-error] [--logger]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

import lightning_sanity as ls
from lightning_sanity.demos import Classifier, mlp, wine_tensors


class ErrorOnLastRank(ls.SanityCallback):
    """Records an ERROR on the highest rank only: the other ranks must neither hang nor miss it."""

    name = "last_rank"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == trainer.world_size - 1:
            self.record(trainer, "test.one_rank", ls.Severity.ERROR, "only on the last rank", "none")


def main(out_dir: Path, devices: int, one_rank_error: bool, logger: bool) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    # every batch feeds BatchStats' epoch statistics: the last validation's synchronised count is the whole val set
    callbacks: list[Any] = ls.default_callbacks(batch_stats={"stats_every_n_batches": 1})
    if one_rank_error:
        callbacks.append(ErrorOnLastRank())
    train = DataLoader(TensorDataset(*wine_tensors("train")), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(*wine_tensors("val")), batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=4,
        logger=CSVLogger(out_dir, name="logs") if logger else False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    trainer.fit(Classifier(mlp(13, 3), lr=1e-2), train, val)
    confusion = next(cb for cb in callbacks if isinstance(cb, ls.ConfusionCallback))
    batch_stats = next(cb for cb in callbacks if isinstance(cb, ls.BatchStatsCallback))
    result = {
        "rank": trainer.global_rank,
        "findings": sorted((f.code, f.subject, str(f.severity)) for f in ls.collect_findings(trainer)),
        "matrix": confusion.confusion_matrix.tolist() if confusion.confusion_matrix is not None else None,
        "val_samples": len(val.dataset),
        # the last validation's input statistics as synchronised across ranks (queued batches folded before the sync)
        "val_inputs_seen": batch_stats._stats["val"].summary().samples,
    }
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, default=str))
    # Lightning destroys only NCCL process groups at exit. A gloo group left to interpreter shutdown is destructed
    # with its threads still joinable now and then: "terminate called without an active exception", exit -6.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), "--one-rank-error" in sys.argv, "--logger" in sys.argv)
