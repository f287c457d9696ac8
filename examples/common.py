"""Command-line plumbing shared by the examples: every example takes --fixed and --epochs."""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any

import lightning.pytorch as pl

import lightning_sanity


def parse_args(description: str, epochs: int = 3) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fixed", action="store_true", help="run the corrected program")
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    parser.add_argument("--log-dir", default=None, help="write CSV logs, figures and sanity_report_fit.json here")
    return parser.parse_args()


def make_trainer(args: argparse.Namespace, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer with the default sanity callbacks; the run report prints when it ends."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|log_every_n_steps).*")
    pl.seed_everything(0, verbose=False)
    logger: Any = pl.loggers.CSVLogger(args.log_dir, name="sanity_example") if args.log_dir else False
    options: dict[str, Any] = {
        "max_epochs": args.epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "callbacks": lightning_sanity.default_callbacks(),
    }
    options.update(kwargs)
    print(f"--- {'fixed' if args.fixed else 'buggy'} program ---", flush=True)
    return pl.Trainer(**options)
