"""Shared runner for the QA programs: fit with the default pack and a CSVLogger, then print what the pack said.

Each program calls :func:`run` with its model and loaders and says whether it is healthy or broken and what the
bug is; the runner prints the findings (severity, code, message), the triage and the final logged metrics,
and checks the report files were written. Verdicts are judged by a human from that output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

import lightning_sanity

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


def run(
    model: pl.LightningModule,
    train: Any,
    val: Any = None,
    *,
    kind: str,
    bug: str = "",
    max_epochs: int = 5,
    extra_callbacks: list[Any] | None = None,
    **trainer_kwargs: Any,
) -> None:
    """Fit ``model`` and print the sanity report in a compact form (``kind`` is "healthy" or "broken")."""
    name = Path(sys.argv[0]).stem
    print(f"=== {name} (lightning_sanity from {os.path.dirname(lightning_sanity.__file__)})")
    print(f"=== {name}: {kind}{' -- ' + bug if bug else ''}", flush=True)
    start = time.perf_counter()
    keep = os.environ.get("QA_KEEP")  # a directory to keep the logs and report in, for a closer look
    with tempfile.TemporaryDirectory() if keep is None else _kept(keep) as tmpdir:
        trainer = pl.Trainer(
            callbacks=[*lightning_sanity.default_callbacks(), *(extra_callbacks or [])],
            max_epochs=max_epochs,
            logger=CSVLogger(tmpdir, name="qa"),
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in extra_callbacks or []),
            **trainer_kwargs,
        )
        trainer.fit(model, train, val)
        elapsed = time.perf_counter() - start
        log_dir = Path(trainer.log_dir or tmpdir)
        report_json = log_dir / "sanity_report_fit.json"
        report_md = log_dir / "sanity_report_fit.md"
        missing = [p.name for p in (report_json, report_md) if not p.exists()]
        print(f"--- elapsed {elapsed:.1f}s; report files missing: {missing or 'none'}")
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(f"--- final metrics: {metrics}")
        if report_json.exists():
            data = json.loads(report_json.read_text())
            print(f"--- summary: {data['summary']} status={data['status']} exception={data['exception']}")
            for f in data["findings"]:
                standing = "" if f.get("resolved_epoch") is None else f" (resolved at epoch {f['resolved_epoch']})"
                print(f"  {f['severity'].upper():7} {f['code']}{standing} [{f.get('subject')}] x{f['count']}")
                print(f"          {f['message']}")
            if data.get("triage"):
                print("--- triage:")
                for row in data["triage"]:
                    print(f"    {row['check']}: {row['status']} {row.get('code') or ''}")
        files = sorted(os.path.relpath(p, log_dir) for p in log_dir.rglob("*") if p.is_file())
        print(f"--- files: {files}")


@contextlib.contextmanager
def _kept(path: str) -> Iterator[str]:
    os.makedirs(path, exist_ok=True)
    yield path


def tabular(loader_name: str, standardize: bool = True, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """An sklearn bundled dataset as train/val float32 features and int64 targets, split 75/25 with ``seed``."""
    import numpy as np
    import sklearn.datasets
    import torch

    bunch = getattr(sklearn.datasets, loader_name)()
    x, y = bunch.data.astype(np.float32), bunch.target
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = len(x) // 4
    train_idx, val_idx = order[n_val:], order[:n_val]
    if standardize:
        mean, std = x[train_idx].mean(0), x[train_idx].std(0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    t = torch.from_numpy
    return t(x[train_idx]), t(y[train_idx]), t(x[val_idx]), t(y[val_idx])
