"""Calibrate ``eval.loss_at_prior`` (ConfusionCallback) on real fits of models that compute their own loss.

Every run is a real ``Trainer.fit`` of a tiny random-init Hugging Face GPT-2 (``labels=input_ids``, shifted inside
the model) with ``ConfusionCallback``. Healthy runs learn from text with structure: a sparse Markov chain (each token
has two successors) and a repeating pattern with noise; broken runs can learn nothing beyond the token frequencies:
labels drawn at random, and ``input_ids`` shuffled across the dataset while the labels are kept (the model never
sees the history of the tokens it must predict). Positional text: phrases of 4 tokens at fixed offsets, healthy with
``labels=input_ids``, broken with the labels of another sequence (each target depends on its position only: the
model beats the unigram entropy, and the bar is the held-out position prior).
Seeds, learning rates (AdamW 1e-3 to 1e-2), dataset sizes (64 to
256 sequences) and model widths vary; every run has 128 to 256 optimizer steps (4 to 8 epochs). An all-zero
``attention_mask`` was tried as a third bug and dropped: GPT-2 still learns the chain with it (each position still
attends to itself), so it is no broken program.

For each run it prints the epoch-mean training and validation losses, the priors' entropies and noise floors and the
verdict; then the table of docs/findings.md: how far below the floor the healthy runs' losses went, how far above it
the broken runs' stayed.

    python benchmarks/calibrate_internal_loss.py            # about 8 minutes on 2 CPU cores
    python benchmarks/calibrate_internal_loss.py --quick    # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_sanity import ConfusionCallback, collect_findings
from lightning_sanity.learnability import prior_loss_floor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_clients import SEQ_LEN, VOCAB, DictDataset, HFModule
from test_internal_loss import LM_BUGS, POSITIONAL_BUGS, gpt2, lm_data, phrase_data

BUGS = LM_BUGS + POSITIONAL_BUGS


def pattern_data(n: int, seed: int, bug: str | None) -> DictDataset:
    """A repeating pattern of 4 tokens from a per-sequence start, 10 % of tokens replaced by noise."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(1, VOCAB - 4, (n, 1), generator=generator)
    ids = start + torch.arange(SEQ_LEN) % 4
    noise = torch.rand(n, SEQ_LEN, generator=generator) < 0.1
    ids = torch.where(noise, torch.randint(1, VOCAB, (n, SEQ_LEN), generator=generator), ids)
    return DictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)


def data(text: str, n: int, seed: int, bug: str | None) -> DictDataset:
    if text == "pattern":
        return pattern_data(n, seed, bug)
    if text == "phrase" and bug is None:
        return phrase_data(n, seed)
    return lm_data(n, seed, bug)


def fit(text: str, bug: str | None, seed: int, lr: float, n: int, width: int, epochs: int) -> dict[str, object]:
    pl.seed_everything(seed, verbose=False)
    train = DataLoader(data(text, n, seed + 1, bug), batch_size=4, shuffle=True)
    val = DataLoader(data(text, max(n // 4, 32), seed + 2, bug), batch_size=16)
    callback = ConfusionCallback(figure_every_n_epochs=0)
    trainer = pl.Trainer(
        callbacks=[callback],
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(HFModule(gpt2(seed, width), lr=lr), train, val)
    watch = callback.internal_loss
    assert watch is not None and watch.train_prior is not None
    train_floor = prior_loss_floor(watch.train_prior.summary, callback.train_losses.epoch_noise[-1])
    val_prior = watch.val_prior  # None when no validation loss was read (the run is then judged on training only)
    val_floor = prior_loss_floor(val_prior.summary) if val_prior else math.nan  # same targets as the loss: no noise
    verdicts = [f for f in collect_findings(trainer) if f.code == "eval.loss_at_prior" and f.standing]
    return {
        "train": callback.train_losses.epoch_losses,
        "val": watch.val_losses,
        "train_prior": watch.train_prior.entropy,
        "val_prior": val_prior.entropy if val_prior else math.nan,
        # relative distance of the best epoch below the floor (> 0: below, learned beyond the frequencies)
        "train_margin": (train_floor - min(callback.train_losses.epoch_losses)) / watch.train_prior.entropy,
        "val_margin": (val_floor - min(watch.val_losses)) / val_prior.entropy if val_prior else math.nan,
        "verdict": ",".join(f.subject for f in verdicts),
        "bar": "position" if watch.train_prior.by_position else "unigram",
        "position": watch.train_prior.position,
        "steps": trainer.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    seeds = (0,) if args.quick else (0, 1, 2)
    settings = [(3e-3, 128, 32, 4), (1e-2, 64, 32, 8), (1e-3, 256, 48, 4)]
    healthy = [(text, None) for text in ("markov", "pattern", "phrase")]
    broken = [("phrase" if "phrase" in bug else "markov", bug) for bug in BUGS]
    rows = []
    start = time.time()
    for (text, bug), seed, (lr, n, width, epochs) in itertools.product(healthy + broken, seeds, settings):
        result = fit(text, bug, seed, lr, n, width, epochs)
        rows.append((bug, result))
        losses = " ".join(f"{v:.3f}" for v in result["train"])  # type: ignore[attr-defined]
        val = " ".join(f"{v:.3f}" for v in result["val"])  # type: ignore[attr-defined]
        print(
            f"{'broken ' if bug else 'healthy'} {text:7} {bug or '-':16} seed {seed} lr {lr:g} n {n:3} "
            f"steps {result['steps']:3} | train {losses} (H {result['train_prior']:.3f}, margin "
            f"{result['train_margin']:+.3f}) | val {val} (H {result['val_prior']:.3f}, margin "
            f"{result['val_margin']:+.3f}) | bar {result['bar']} {_position(result['position'])} | verdict "
            f"{result['verdict'] or '-'}",
            flush=True,
        )
    healthy_rows = [r for bug, r in rows if bug is None]
    broken_rows = [r for bug, r in rows if bug is not None]
    print(f"\n{len(rows)} runs, {time.time() - start:.0f} s")
    standing = sum(bool(r["verdict"]) for r in healthy_rows)
    print(f"healthy runs with a standing eval.loss_at_prior: {standing} of {len(healthy_rows)}")
    print(f"broken runs without one: {sum(not r['verdict'] for r in broken_rows)} of {len(broken_rows)}")
    print("\n| statistic | healthy | broken |\n|---|---|---|")
    for key, name in (("train_margin", "training"), ("val_margin", "validation")):
        print(
            f"| best epoch-mean {name} loss below the prior's noise floor, / prior entropy (> 0: below) | min "
            f"{min(_measured(healthy_rows, key)):+.3f} (n={len(healthy_rows)}) | max "
            f"{max(_measured(broken_rows, key)):+.3f} (n={len(broken_rows)}) |"
        )
    for bug in BUGS:
        caught = [r for b, r in rows if b == bug]
        subjects = sorted({str(r["verdict"]) for r in caught})
        print(f"| {bug} | caught {sum(bool(r['verdict']) for r in caught)}/{len(caught)} | subjects {subjects} |")


def _measured(rows: list[dict[str, object]], key: str) -> list[float]:
    """The finite values of ``key`` (a run without a validation prior has none)."""
    return [value for value in (float(r[key]) for r in rows) if math.isfinite(value)]  # type: ignore[arg-type]


def _position(prior: object) -> str:
    """The position prior's held-out entropy, its noise bound and the Miller-Madow plug-in it improves on."""
    if prior is None:
        return "(no position prior)"
    return f"(held-out {prior.entropy:.3f} +- {prior.noise:.3f}, Miller-Madow {prior.corrected:.3f})"  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
