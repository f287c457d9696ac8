"""Calibrate ModeGuardCallback's tolerances with the module's own statistics on healthy and broken models.

- ``mode.stochastic_eval``: ``relative_difference`` of two eval-mode passes on the same inputs (fires above
  ``_DIFFERENT_OUTPUTS``), and of a replay with the first pass's RNG state (must stay <= ``_SAME_OUTPUTS``), for
  healthy models (SmallCNN, MLP, ResNet-18, EfficientNet-B0 with stochastic depth, a 2-layer LSTM and a
  TransformerEncoder with dropout, a small ViT) and for models calling ``F.dropout(training=True)`` at several p,
  at a hidden or at the input layer, on 1 or 4 samples, plus VAE-style sampling in ``forward``.
- parameter/statistics checksums (``Checksums``, per-tensor sum and L2 norm): relative change of either between two
  reads with nothing changed (eval forwards, a state_dict round trip) and after the smallest real changes (one Adam
  step at lr 1e-6, one train-mode BatchNorm forward), against ``_CHECKSUM_TOLERANCE``; and its cost on ResNet-50.

    python benchmarks/calibrate_mode_guard.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models

from lightning_sanity.demos import SmallCNN, mlp
from lightning_sanity.mode_guard import (
    _CHECKSUM_TOLERANCE,
    _DIFFERENT_OUTPUTS,
    _SAME_OUTPUTS,
    Checksums,
    mode_dependent_modules,
    named_parameters_to_watch,
    named_running_stats,
    output_tensors,
    relative_difference,
)

torch.set_num_threads(1)

Row = tuple[str, str, str, float, str, str]  # variant, statistic, kind, value, threshold, verdict


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, 32)
        self.lstm = nn.LSTM(32, 32, num_layers=2, dropout=0.3, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        output, _ = self.lstm(self.embedding(tokens))
        return self.head(output[:, -1])


class TransformerClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.3, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embedding(tokens)).mean(1))


class AlwaysDropout(nn.Module):
    """The bug: ``F.dropout(x, p, training=True)`` at the input or after the hidden layer."""

    def __init__(self, p: float, where: str) -> None:
        super().__init__()
        self.p, self.where = p, where
        self.hidden = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        if self.where == "input":
            x = F.dropout(x, self.p, training=True)
        h = F.relu(self.hidden(x))
        if self.where == "hidden":
            h = F.dropout(h, self.p, training=True)
        return self.head(h)


class SamplingVAE(nn.Module):
    """The bug: reparameterised sampling in ``forward`` without ``if self.training``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(64, 2 * 8)
        self.decoder = nn.Linear(8, 64)

    def forward(self, x: Tensor) -> Tensor:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return self.decoder(mu + torch.randn_like(mu) * (0.5 * log_var).exp())


def small_vit() -> nn.Module:
    return models.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, dropout=0.1)


HEALTHY: dict[str, tuple[Callable[[], nn.Module], Callable[[int], Tensor]]] = {
    "SmallCNN (dropout 0.2, BatchNorm)": (SmallCNN, lambda n: torch.rand(n, 3, 32, 32)),
    "MLP (dropout 0.1)": (lambda: mlp(64, 10), lambda n: torch.randn(n, 64)),
    "ResNet-18": (lambda: models.resnet18(num_classes=10), lambda n: torch.rand(n, 3, 32, 32)),
    "EfficientNet-B0 (stochastic depth 0.2)": (
        lambda: models.efficientnet_b0(num_classes=10),
        lambda n: torch.rand(n, 3, 64, 64),
    ),
    "2-layer LSTM (dropout 0.3)": (LSTMClassifier, lambda n: torch.randint(0, 100, (n, 12))),
    "TransformerEncoder (dropout 0.3)": (TransformerClassifier, lambda n: torch.randint(0, 100, (n, 12))),
    "ViT 32px patch 8 (dropout 0.1)": (small_vit, lambda n: torch.rand(n, 3, 32, 32)),
}


def two_passes(model: nn.Module, inputs: Tensor) -> tuple[float, float]:
    """``relative_difference`` of two eval passes, and of a replay from the first pass's RNG state."""
    with torch.no_grad():
        state = torch.get_rng_state()
        first = output_tensors(model(inputs))
        second = output_tensors(model(inputs))
        torch.set_rng_state(state)
        replay = output_tensors(model(inputs))
    return relative_difference(first, second), relative_difference(first, replay)


def stochastic_eval(seeds: Sequence[int], trials: int) -> tuple[list[Row], list[Row]]:
    different, reproduced = f"> {_DIFFERENT_OUTPUTS:g}", f"<= {_SAME_OUTPUTS:g}"
    rows: list[Row] = []
    replays: list[Row] = []
    for name, (build, inputs) in HEALTHY.items():
        for seed in seeds:
            torch.manual_seed(seed)
            model = build().eval()
            for samples in (1, 4):
                difference, replay = two_passes(model, inputs(samples))
                verdict = "flagged" if difference > _DIFFERENT_OUTPUTS else "quiet"
                rows.append(
                    (
                        f"{name}, {samples} sample(s), seed {seed}",
                        "two-pass difference",
                        "healthy",
                        difference,
                        different,
                        verdict,
                    )
                )
                replays.append(
                    (
                        f"{name}, {samples} sample(s), seed {seed}",
                        "replay difference",
                        "healthy",
                        replay,
                        reproduced,
                        "",
                    )
                )
    broken: dict[str, Callable[[], nn.Module]] = {"VAE sampling in forward": SamplingVAE}
    for where in ("hidden", "input"):
        for p in (0.01, 0.05, 0.1, 0.2, 0.5):
            broken[f"F.dropout(training=True) p={p} at the {where} layer"] = lambda p=p, where=where: AlwaysDropout(
                p, where
            )
    for name, build in broken.items():
        for samples in (1, 4):
            differences = []
            worst_replay = 0.0
            for trial in range(trials):
                torch.manual_seed(trial)
                difference, replay = two_passes(build().eval(), torch.randn(samples, 64))
                differences.append(difference)
                worst_replay = max(worst_replay, replay)
            missed = sum(d <= _DIFFERENT_OUTPUTS for d in differences)
            label = f"{name}, {samples} sample(s), {trials} trials ({missed} missed)"
            kind = "broken, weak" if "p=0.01" in name else "broken"
            rows.append(
                (
                    label,
                    "two-pass difference, min",
                    kind,
                    min(differences),
                    different,
                    "flagged" if missed == 0 else "missed some",
                )
            )
            rows.append((label, "two-pass difference, median", kind, statistics.median(differences), different, ""))
            replays.append(
                (
                    label,
                    "replay difference, max",
                    kind,
                    worst_replay,
                    reproduced,
                    "reproduced" if worst_replay <= _SAME_OUTPUTS else "NOT reproduced",
                )
            )
    return rows, replays


def checksum_change(before: Checksums, after: Checksums) -> list[float]:
    """Per tensor, the larger relative change of its sum and its L2 norm (what ``Checksums.changed`` compares)."""
    changes: list[float] = []
    for (_, first), (_, second) in zip(before.groups, after.groups, strict=True):
        # as torch.isclose(rtol) reads it; a zero that becomes non-zero (zero-initialised biases) counts as 1
        relative = (second - first).abs() / torch.maximum(first.abs(), second.abs()).clamp_min(1e-300)
        changes.extend(relative.max(1).values.tolist())
    return changes


def checksums(seeds: Sequence[int]) -> list[Row]:
    tolerance = f"> {_CHECKSUM_TOLERANCE:g}"
    rows: list[Row] = []

    def row(name: str, kind: str, before: Checksums, after: Checksums, statistic: str) -> None:
        changes = checksum_change(before, after)
        value = max(changes)
        changed = len(before.changed(after))
        rows.append(
            (
                f"{name} ({changed}/{len(changes)} tensors changed)",
                statistic,
                kind,
                value,
                tolerance,
                "changed" if changed else "unchanged",
            )
        )

    for name, (build, inputs) in HEALTHY.items():
        for seed in seeds:
            torch.manual_seed(seed)
            model = build()
            watched = named_parameters_to_watch(model) + named_running_stats(mode_dependent_modules(model))
            before = Checksums.of(watched)
            model.eval()
            with torch.no_grad():
                model(inputs(4))
                model(inputs(4))
            row(
                f"{name} seed {seed}: two eval forwards",
                "healthy",
                before,
                Checksums.of(watched),
                "max checksum change",
            )
            model.load_state_dict(model.state_dict())
            row(
                f"{name} seed {seed}: state_dict round trip",
                "healthy",
                before,
                Checksums.of(watched),
                "max checksum change",
            )
            if seed == seeds[0]:
                model.train()
                for lr in (1e-5, 1e-6):
                    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
                    start = Checksums.of(named_parameters_to_watch(model))
                    output = output_tensors(model(inputs(4)))[0]
                    (output.float() - 1).square().mean().backward()  # not output**2: ViT's head starts at zero
                    optimizer.step()
                    optimizer.zero_grad()
                    after = Checksums.of(named_parameters_to_watch(model))
                    row(f"{name}: one Adam step at lr {lr:g}", "broken", start, after, "max checksum change")
                stats = named_running_stats(mode_dependent_modules(model))
                if stats:
                    start = Checksums.of(stats)
                    with torch.no_grad():
                        model(inputs(4))
                    row(
                        f"{name}: one train-mode forward (running stats)",
                        "broken",
                        start,
                        Checksums.of(stats),
                        "max checksum change",
                    )
    return rows


def checksum_cost() -> str:
    model = models.resnet50().eval()
    start = time.perf_counter()
    modules = mode_dependent_modules(model)
    listing = time.perf_counter() - start
    watched = named_parameters_to_watch(model) + named_running_stats(modules)
    before = Checksums.of(watched)
    start = time.perf_counter()
    for _ in range(5):
        before.changed(Checksums.of(watched))
    per_comparison = (time.perf_counter() - start) / 5
    return (
        f"ResNet-50: {len(modules)} mode-dependent modules listed in {1e3 * listing:.1f} ms; "
        f"a checksum of {len(watched)} tensors and its comparison {1e3 * per_comparison:.0f} ms on CPU"
    )


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}\n\n| variant | statistic | kind | value | threshold | verdict |\n|---|---|---|---|---|---|")
    for variant, statistic, kind, value, threshold, verdict in rows:
        print(f"| {variant} | {statistic} | {kind} | {value:.4g} | {threshold} | {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per healthy model")
    parser.add_argument("--trials", type=int, default=40, help="random dropout masks per broken variant")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    start = time.perf_counter()

    rows, replays = stochastic_eval(seeds, args.trials)
    print_table("mode.stochastic_eval: relative difference of two eval passes", rows)
    healthy = max(r[3] for r in rows if r[2] == "healthy")
    caught = min(r[3] for r in rows if r[2] == "broken" and r[1].endswith("min"))
    medians = [r[3] for r in rows if r[1].endswith("median") and "dropout" in r[0]]
    vae = max(r[3] for r in rows if r[0].startswith("VAE") and r[1].endswith("median"))
    print(
        f"\nhealthy max {healthy:.3g} <= {_DIFFERENT_OUTPUTS:g} < broken min {caught:.3g} (dropout p >= 0.05, "
        f"VAE sampling); dropout medians {min(medians):.3g}-{max(medians):.3g}, VAE median {vae:.3g}"
    )
    assert healthy <= _DIFFERENT_OUTPUTS < caught
    print_table("mode.stochastic_eval: replay with the first pass's RNG state", replays)
    worst_replay = max(r[3] for r in replays)
    print(f"\nreplay max {worst_replay:.3g} <= {_SAME_OUTPUTS:g} (every random forward is reproduced)")
    assert worst_replay <= _SAME_OUTPUTS

    rows = checksums(seeds)
    print_table("parameter/statistics checksums: relative change of per-tensor sums and L2 norms", rows)
    unchanged = max(r[3] for r in rows if r[2] == "healthy")
    smallest = min(r[3] for r in rows if r[2] == "broken")
    print(f"\nunchanged max {unchanged:.3g} <= {_CHECKSUM_TOLERANCE:g} < smallest real change {smallest:.3g}")
    assert unchanged <= _CHECKSUM_TOLERANCE < smallest
    print(checksum_cost())
    print(f"\nrun time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
