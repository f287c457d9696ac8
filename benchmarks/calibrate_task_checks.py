"""Calibrate the step-zero target checks of ModelChecksCallback: ``target.unscaled``, ``loss.softmax_multilabel`` and
``data.target_in_input``, on healthy and broken programs.

Each variant builds a freshly initialised model, takes the first shuffled batch, computes the loss the way the program
would, and applies the library's own functions (``read_loss``, then the rules of ``lightning_sanity.targets``) as the
callback does on the first training step.

- ``target.unscaled``: regression data (diabetes, wine alcohol from the other 12 features, friedman1, a linear
  make_regression) with targets put on scales ``std`` x offsets ``mean / std`` (as many units as a price, a
  temperature in kelvin, an elevation); trained for 40 epochs by Adam, AdamW and SGD, two MLPs, two seeds. A run
  *learns* when its held-out R2 (in the targets' own units) reaches half the R2 of the same run on standardised
  targets. The tables are the step-0 ratio (RMS distance from the untrained outputs to the targets over the outputs'
  own scale, at least 1) against how many runs learned, overall and per optimizer and offset, and the step-0 ratio
  of healthy programs with moderately scaled targets, which must stay below the threshold.
- ``loss.softmax_multilabel``: multi-label targets (2-12 classes, 1.2-4 labels per row on average) under softmax
  cross-entropy (broken) vs one-hot, label-smoothed, mixup, distillation and row-normalised multi-hot targets under
  softmax cross-entropy and multi-hot targets under BCE with logits (healthy).
- ``data.target_in_input``: causal LMs (GRU, a small Transformer) on generated token sequences with an unshifted loss
  (broken) vs the shifted loss, a model that shifts inside, a masked LM, a denoiser (healthy); tabular data
  (digits, wine, breast_cancer, diabetes, friedman1) with the target copied into a feature column, plain or
  standardised (broken) vs the data as it is (healthy), at batch sizes 16-128.

    python benchmarks/calibrate_task_checks.py            # about 3 CPU-minutes
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import datasets
from torch import Tensor, nn

from lightning_sanity.losses import LossContext, read_loss
from lightning_sanity.targets import (
    MIN_BINARY_LABEL_SAMPLES,
    TARGET_SCALE_RATIO,
    softmax_multilabel,
    target_in_input,
    target_scale,
    unscaled_targets,
)

torch.set_num_threads(1)

# ---- target.unscaled ------------------------------------------------------------------------------------------------


def regression_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "diabetes":
        return datasets.load_diabetes(return_X_y=True)
    if name == "wine_alcohol":
        features = datasets.load_wine().data
        return features[:, 1:], features[:, 0]
    if name == "friedman1":
        return datasets.make_friedman1(n_samples=600, noise=0.5, random_state=0)
    return datasets.make_regression(n_samples=600, n_features=10, n_informative=6, noise=10.0, random_state=0)


def standardised(train: np.ndarray, other: np.ndarray) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0), train.std(0) + 1e-12
    return torch.tensor((train - mean) / std, dtype=torch.float32), torch.tensor(
        (other - mean) / std, dtype=torch.float32
    )


def mlp(features: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if seed % 2:
        return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-3),
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
}


@dataclass
class RegressionRun:
    data: str
    std: float
    offset: float
    optimizer: str
    seed: int
    ratio: float
    r2: float


def train_regression(
    x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, optimizer: str, seed: int, loss_fn: Callable[..., Tensor]
) -> tuple[float, float]:
    """The step-0 ratio of the first shuffled batch, and the held-out R2 after 40 epochs."""
    model = mlp(x.shape[1], seed)
    opt = OPTIMIZERS[optimizer](list(model.parameters()))
    generator = torch.Generator().manual_seed(seed)
    ratio = math.nan
    for _ in range(40):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 32):
            index = order[start : start + 32]
            output = model(x[index])
            if math.isnan(ratio):
                scale = target_scale(output, y[index])
                ratio = scale.ratio if scale is not None else math.nan
            loss = loss_fn(output, y[index])
            if not torch.isfinite(loss):
                return ratio, -math.inf
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        predicted = model(x_val)
    residual = float((predicted - y_val).square().sum())
    total = float((y_val - y_val.mean()).square().sum())
    return ratio, 1 - residual / total


def unscaled_runs() -> list[RegressionRun]:
    runs = []
    for data in ("diabetes", "wine_alcohol", "friedman1", "linear"):
        features, target = regression_data(data)
        order = np.random.default_rng(0).permutation(len(target))
        cut = int(0.75 * len(target))
        x, x_val = standardised(features[order[:cut]], features[order[cut:]])
        z, z_val = standardised(target[order[:cut], None], target[order[cut:], None])
        for optimizer, seed in itertools.product(OPTIMIZERS, (0, 1)):
            for std, offset in itertools.product((1, 3, 10, 30, 100, 300, 1000), (0, 3, -8)):
                y, y_val = z * std + offset * std, z_val * std + offset * std
                ratio, r2 = train_regression(x, y, x_val, y_val, optimizer, seed, F.mse_loss)
                runs.append(RegressionRun(data, std, offset, optimizer, seed, ratio, r2))
    return runs


def report_unscaled() -> None:
    runs = unscaled_runs()
    reference = {(r.data, r.optimizer, r.seed): r.r2 for r in runs if r.std == 1 and r.offset == 0}
    buckets = [(0, 3), (3, 10), (10, 20), (20, 30), (30, 60), (60, 100), (100, 300), (300, 1e9)]
    print("target.unscaled: step-0 ratio vs learning (R2 >= half the R2 on standardised targets)")
    print(f"{'ratio':>14} {'runs':>5} {'learned':>8}  {'lowest R2 / reference':>22}")
    learned_above, stuck_below = [], []
    for low, high in buckets:
        inside = [r for r in runs if low <= r.ratio < high]
        if not inside:
            continue
        learns = [r for r in inside if r.r2 >= 0.5 * reference[(r.data, r.optimizer, r.seed)]]
        worst = min(r.r2 / reference[(r.data, r.optimizer, r.seed)] for r in inside)
        print(f"{low:>6g}-{high:<7g} {len(inside):>5} {len(learns):>8}  {worst:>22.2f}")
        learned_above += [r.ratio for r in learns if r.ratio >= TARGET_SCALE_RATIO]
        stuck_below += [r.ratio for r in inside if r not in learns and r.ratio < TARGET_SCALE_RATIO]
    print("by optimizer and offset (mean / std): learned / runs, below | above the threshold")
    for optimizer, offset in itertools.product(OPTIMIZERS, (0, 3, -8)):
        group = [r for r in runs if r.optimizer == optimizer and r.offset == offset]
        cells = []
        for above in (False, True):
            side = [r for r in group if (r.ratio >= TARGET_SCALE_RATIO) == above]
            learns = sum(r.r2 >= 0.5 * reference[(r.data, r.optimizer, r.seed)] for r in side)
            cells.append(f"{learns:>3} / {len(side):<3}")
        print(f"  {optimizer:<6} offset {offset:>3} std: {cells[0]} | {cells[1]}")
    print(
        f"runs that learned above the threshold {TARGET_SCALE_RATIO:g}: {len(learned_above)} of "
        f"{sum(r.ratio >= TARGET_SCALE_RATIO for r in runs)}; runs that did not learn below it: {len(stuck_below)} of "
        f"{sum(r.ratio < TARGET_SCALE_RATIO for r in runs)}"
    )
    healthy = healthy_regression_ratios()
    print("healthy regression programs (step-0 ratio, must stay below the threshold):")
    for name, ratio in healthy.items():
        print(f"  {name:<44} {ratio:8.2f}")
    assert max(healthy.values()) < TARGET_SCALE_RATIO


def healthy_regression_ratios() -> dict[str, float]:
    """Programs that learn as they are: wine quality-like 3..9 scores, standardised targets, a model whose head adds
    the target mean, counts (read by MSE here; a Poisson loss is not read at all)."""
    features, target = regression_data("diabetes")
    x, _ = standardised(features, features)
    ratios = {}
    quality = torch.tensor(np.clip(np.round(5.8 + 0.8 * (target - target.mean()) / target.std()), 3, 9))[:, None]
    cases = {
        "quality scores 3..9 (wine quality-like)": quality.float(),
        "standardised targets": standardised(target[:, None], target[:, None])[0],
        "targets in 100k units (california-like 0.15..5)": torch.tensor(target[:, None] / 150, dtype=torch.float32),
        "counts 0..40": torch.tensor(np.round(target[:, None] / 8), dtype=torch.float32),
    }
    for seed in range(5):
        batch = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:32]
        for name, y in cases.items():
            scale = target_scale(mlp(x.shape[1], seed)(x[batch]), y[batch])
            assert scale is not None
            ratios[name] = max(ratios.get(name, 0.0), scale.ratio)
        head = mlp(x.shape[1], seed)
        raw = torch.tensor(target[:, None], dtype=torch.float32)
        output = head(x[batch]) * float(raw.std()) + float(raw.mean())
        name = "raw diabetes targets, head * std + mean"
        ratios[name] = max(ratios.get(name, 0.0), target_scale(output, raw[batch]).ratio)  # type: ignore[union-attr]
    return ratios


def unscaled_verdicts() -> tuple[int, int]:
    """The rule itself (through read_loss) on the broken -2700-style program of the issue: (fired, of)."""
    fired = 0
    for seed in range(10):
        torch.manual_seed(seed)
        x = torch.rand(32, 8) * 2 - 1
        y = -2700 + 300 * (x @ torch.randn(8, 1))
        output = mlp(8, seed)(x).detach()
        loss = float(F.mse_loss(output, y))
        reading = read_loss(output, y, loss, LossContext())
        fired += reading is not None and unscaled_targets(reading, output, y, loss, "net") is not None
    return fired, 10


# ---- loss.softmax_multilabel -----------------------------------------------------------------------------------------


def multilabel_cases(seed: int) -> dict[str, tuple[bool, Tensor, Tensor, float]]:
    generator = torch.Generator().manual_seed(seed)
    cases: dict[str, tuple[bool, Tensor, Tensor, float]] = {}
    for classes, cardinality in ((2, 1.2), (5, 1.5), (12, 2.0), (12, 4.0)):
        batch = (16, 32, 64)[seed % 3]
        logits = torch.randn(batch, classes, generator=generator)
        multi_hot = (torch.rand(batch, classes, generator=generator) < cardinality / classes).float()
        one_hot = F.one_hot(torch.randint(0, classes, (batch,), generator=generator), classes).float()
        smoothed = one_hot * 0.9 + 0.1 / classes
        lam = float(torch.rand(1, generator=generator))
        mixed = lam * one_hot + (1 - lam) * one_hot.roll(1, 0)
        teacher = (torch.randn(batch, classes, generator=generator) * 2).softmax(dim=1)
        normalised = multi_hot / multi_hot.sum(1, keepdim=True).clamp_min(1)
        tag = f"C={classes},labels/row={cardinality}"
        cases[f"broken: softmax CE on multi-hot {tag}"] = (
            True,
            logits,
            multi_hot,
            float(F.cross_entropy(logits, multi_hot)),
        )
        hand = float(-(multi_hot * logits.log_softmax(1)).sum(1).mean())
        cases[f"broken: NLL of log_softmax on multi-hot {tag}"] = (True, logits, multi_hot, hand)
        cases[f"healthy: BCE with logits on multi-hot {tag}"] = (
            False,
            logits,
            multi_hot,
            float(F.binary_cross_entropy_with_logits(logits, multi_hot)),
        )
        for name, soft in (("one-hot", one_hot), ("smoothed", smoothed), ("mixup", mixed), ("distillation", teacher)):
            cases[f"healthy: softmax CE on {name} {tag}"] = (False, logits, soft, float(F.cross_entropy(logits, soft)))
        # Rows with no label make a row-normalised multi-hot not a distribution everywhere: only the 0 rows differ.
        cases[f"healthy: softmax CE on row-normalised multi-hot {tag}"] = (
            False,
            logits,
            normalised,
            float(F.cross_entropy(logits, normalised)),
        )
    return cases


def report_multilabel() -> None:
    print("\nloss.softmax_multilabel: fired / variants (5 seeds, batch 16-64)")
    counts: dict[str, list[int]] = {}
    for seed in range(5):
        for name, (broken, logits, targets, loss) in multilabel_cases(seed).items():
            reading = read_loss(logits, targets, loss, LossContext())
            fired = reading is not None and softmax_multilabel(reading, loss, "net") is not None
            key = name.split(" C=")[0]
            counts.setdefault(key, [0, 0, int(broken)])
            counts[key][0] += fired
            counts[key][1] += 1
    for key, (fired, total, broken) in counts.items():
        print(f"  {key:<52} {fired:>3} / {total}")
        assert fired == (total if broken else 0), key


# ---- data.target_in_input --------------------------------------------------------------------------------------------

VOCAB, LENGTH = 50, 32


def token_sequences(batch: int, seed: int) -> Tensor:
    """Repeating patterns with a random period and phase: the next token is learnable."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        period = int(torch.randint(2, 7, (1,), generator=generator))
        pattern = torch.randint(1, VOCAB, (period,), generator=generator)
        rows.append(pattern.repeat(LENGTH // period + 1)[:LENGTH])
    return torch.stack(rows)


class GruLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.gru, self.head = (
            nn.Embedding(VOCAB, 32),
            nn.GRU(32, 32, batch_first=True),
            nn.Linear(32, VOCAB),
        )

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.gru(self.embed(ids))[0])


class TransformerLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(VOCAB, 32), nn.Embedding(LENGTH, 32)
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.body, self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        hidden = self.embed(ids) + self.position(torch.arange(ids.shape[1]))
        return self.head(self.body(hidden, mask=mask, is_causal=True))


def token_cases(seed: int) -> dict[str, tuple[bool, Tensor, Tensor, Tensor, float]]:
    """name -> (broken, model input, targets as the batch holds them, logits, returned loss)."""
    torch.manual_seed(seed)
    model = (GruLM, TransformerLM)[seed % 2]().eval()
    ids = token_sequences((8, 16, 32)[seed % 3], seed)
    cases = {}
    with torch.no_grad():
        logits = model(ids)
        flat = logits.reshape(-1, VOCAB)
        cases["broken: labels = input_ids, unshifted loss"] = (
            True,
            ids,
            ids,
            logits,
            float(F.cross_entropy(flat, ids.reshape(-1))),
        )
        padded = ids.clone()
        padded[:, -4:] = -100
        cases["broken: labels = input_ids with padding -100, unshifted"] = (
            True,
            ids,
            padded,
            logits,
            float(F.cross_entropy(flat, padded.reshape(-1))),
        )
        shifted = float(F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))
        cases["healthy: labels = input_ids, the step shifts"] = (False, ids, ids, logits, shifted)
        cases["healthy: labels = input_ids, the model shifts inside"] = (False, ids, ids, logits, shifted)
        source, target = ids[:, :-1], ids[:, 1:]
        pre = model(source)
        cases["healthy: dataset pairs (ids[:-1], ids[1:])"] = (
            False,
            source,
            target,
            pre,
            float(F.cross_entropy(pre.reshape(-1, VOCAB), target.reshape(-1))),
        )
        chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.15
        masked = torch.where(chosen, torch.zeros_like(ids), ids)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        out = model(masked)
        cases["healthy: masked LM (labels -100 off the mask)"] = (
            False,
            masked,
            labels,
            out,
            float(F.cross_entropy(out.reshape(-1, VOCAB), labels.reshape(-1))),
        )
        noisy = torch.where(torch.rand(ids.shape) < 0.1, torch.randint(1, VOCAB, ids.shape), ids)
        out = model(noisy)
        cases["healthy: denoiser (10% of the input tokens replaced)"] = (
            False,
            noisy,
            ids,
            out,
            float(F.cross_entropy(out.reshape(-1, VOCAB), ids.reshape(-1))),
        )
    return cases


def tabular_cases(seed: int) -> dict[str, tuple[bool, Tensor, Tensor]]:
    """name -> (broken, features of the first batch, targets)."""
    cases = {}
    loaders = {
        "digits": datasets.load_digits(return_X_y=True),
        "wine": datasets.load_wine(return_X_y=True),
        "breast_cancer": datasets.load_breast_cancer(return_X_y=True),
        "diabetes": datasets.load_diabetes(return_X_y=True),
        "friedman1": datasets.make_friedman1(n_samples=600, random_state=seed),
    }
    batch = (16, 32, 64, 128)[seed % 4]
    for name, (features, target) in loaders.items():
        order = np.random.default_rng(seed).permutation(len(target))[:batch]
        x = torch.tensor(features[order], dtype=torch.float32)
        y = torch.tensor(target[order])
        cases[f"healthy: {name}"] = (False, x, y)
        copied = torch.cat([x, y.float()[:, None]], dim=1)
        cases[f"broken: {name} + the target as a column"] = (True, copied, y)
        z = (y.double() - y.double().mean()) / y.double().std()
        cases[f"broken: {name} + the standardised target"] = (True, torch.cat([z.float()[:, None], x], dim=1), y)
    return cases


def tabular_loss(features: Tensor, targets: Tensor, seed: int) -> tuple[Tensor, float]:
    torch.manual_seed(seed)
    if targets.is_floating_point():
        output = nn.Linear(features.shape[1], 1)(features).squeeze(1).detach()
        return output, float(F.mse_loss(output, targets.float()))
    output = nn.Linear(features.shape[1], int(targets.max()) + 1)(features).detach()
    return output, float(F.cross_entropy(output, targets))


def report_target_in_input() -> None:
    print("\ndata.target_in_input: fired / variants (6 seeds; tokens: GRU and Transformer LMs, batch 8-32)")
    counts: dict[str, list[int]] = {}

    def count(name: str, broken: bool, fired: bool) -> None:
        counts.setdefault(name, [0, 0, int(broken)])
        counts[name][0] += fired
        counts[name][1] += 1

    for seed in range(6):
        for name, (broken, inputs, targets, logits, loss) in token_cases(seed).items():
            reading = read_loss(logits, targets, loss, LossContext())
            verdict = reading and target_in_input(reading, [("ids", inputs)], logits, targets, loss, "lm")
            count(name, broken, verdict is not None)
        for name, (broken, features, targets) in tabular_cases(seed).items():
            output, loss = tabular_loss(features, targets, seed)
            reading = read_loss(output, targets, loss, LossContext())
            verdict = reading and target_in_input(reading, [("x", features)], output, targets, loss, "net")
            binary_too_small = targets.unique().numel() == 2 and len(targets) < MIN_BINARY_LABEL_SAMPLES
            count(
                name + (" (binary, batch < 64)" if binary_too_small else ""),
                broken and not binary_too_small,
                verdict is not None,
            )
    for name, (fired, total, broken) in counts.items():
        print(f"  {name:<58} {fired:>3} / {total}")
        assert fired == (total if broken else 0), name


def main() -> None:
    report_multilabel()
    report_target_in_input()
    fired, total = unscaled_verdicts()
    print(
        f"\ntarget.unscaled on the issue's program (targets around -2700, inputs in [-1, 1]): fired {fired} / {total}"
    )
    assert fired == total
    report_unscaled()


if __name__ == "__main__":
    main()
