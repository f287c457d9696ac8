"""Calibrate ModeGuardCallback's tolerances with the module's own statistics on healthy and broken models.

- ``mode.stochastic_eval``: ``relative_difference`` of two eval-mode passes on the same inputs (fires above
  ``_DIFFERENT_OUTPUTS``), and of a replay with the first pass's RNG state (must stay <= ``_SAME_OUTPUTS``), for
  healthy models (SmallCNN, MLP, ResNet-18, EfficientNet-B0 with stochastic depth, a 2-layer LSTM and a
  TransformerEncoder with dropout, a small ViT) and for models calling ``F.dropout(training=True)`` at several p,
  at a hidden or at the input layer, on 1 or 4 samples, plus VAE-style sampling in ``forward``.
- parameter/statistics checksums (``Checksums``, per-tensor sum and L2 norm): relative change of either between two
  reads with nothing changed (eval forwards, a state_dict round trip) and after the smallest real changes (one Adam
  step at lr 1e-6, one train-mode BatchNorm forward), against ``CHECKSUM_TOLERANCE``; and its cost on ResNet-50.
- re-masking replay (``mode.params_changed_in_eval``): a masked-conv net trained a few Adam steps, then an evaluation
  run of 3 batches; the changed weights are replayed (``OutermostCalls`` of the first batch, on the weights from
  before, ``private_state``) for every re-parametrisation form (a child's ``.data *=``, ``masked_fill_`` in a helper,
  a forward pre-hook, the root's forward, clamping, per-channel normalisation, prune, parametrize) and for leaks next
  to the masking (``add_`` in the step, ``mul_(0.5)`` in a hook, an Adam step at lr 1e-6, a drifting forward): the
  largest per-element relative difference between the replayed and the final weights against
  ``CHECKSUM_TOLERANCE``, the verdict of ``ModeGuardCallback._rewritten_by_forward``, and the cost on ResNet-50.

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
from torch.nn.utils import parametrize, prune
from torchvision import models

from lightning_sanity import ModeGuardCallback
from lightning_sanity.demos import SmallCNN, mlp
from lightning_sanity.eval_replay import OutermostCalls, host_copies, output_tensors, relative_difference
from lightning_sanity.isolation import private_state
from lightning_sanity.mode_guard import _DIFFERENT_OUTPUTS, _SAME_OUTPUTS
from lightning_sanity.modes import (
    CHECKSUM_TOLERANCE,
    Checksums,
    mode_dependent_modules,
    named_parameters_to_watch,
    named_running_stats,
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
    tolerance = f"> {CHECKSUM_TOLERANCE:g}"
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


def causal_mask(weight: Tensor) -> Tensor:
    mask = torch.ones_like(weight)
    mask[:, :, 2, 2:] = 0
    mask[:, :, 3:] = 0
    return mask


def _zero_masked(conv: nn.Conv2d, mask: Tensor) -> None:
    with torch.no_grad():
        conv.weight.masked_fill_(mask == 0, 0.0)


class Reparametrised(nn.Module):
    """A 5x5 convolution whose weight ``how`` re-parametrises at every call."""

    def __init__(self, channels_in: int, channels_out: int, how: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 5, padding=2)
        self.register_buffer("mask", causal_mask(self.conv.weight))
        self.how = how
        if how == "pre-hook":
            self.conv.register_forward_pre_hook(self._re_mask)
        elif how == "prune":
            prune.custom_from_mask(self.conv, "weight", self.mask)
        elif how == "parametrize":
            parametrize.register_parametrization(self.conv, "weight", Masking(self.mask))

    def _re_mask(self, conv: nn.Module, args: object) -> None:
        conv.weight.data.mul_(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "data":
            self.conv.weight.data *= self.mask
        elif self.how == "helper":
            _zero_masked(self.conv, self.mask)
        elif self.how == "clamp":
            self.conv.weight.data.clamp_(min=0)
        elif self.how == "normalise":
            self.conv.weight.data /= self.conv.weight.data.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return self.conv(x)


class Masking(nn.Module):
    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


class MaskedNet(nn.Module):
    """Two re-parametrised convolutions in a ModuleList and a head; ``how="root"``: the root's forward re-masks
    plain convolutions; ``leak="drift"``: the forward also moves the head's bias at every call."""

    def __init__(self, how: str, leak: str) -> None:
        super().__init__()
        layer = "none" if how == "root" else how
        self.layers = nn.ModuleList([Reparametrised(3, 8, layer), Reparametrised(8, 8, layer)])
        self.head = nn.Linear(8, 10)
        self.how, self.leak = how, leak

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "root":
            for layer in self.layers:
                layer.conv.weight.data = layer.conv.weight.data * layer.mask
        if self.leak == "drift":
            self.head.bias.data += 1e-2
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x.mean((2, 3)))


FORMS = {
    "data": "a child's `.data *= mask`",
    "helper": "`masked_fill_` under no_grad in a helper",
    "pre-hook": "a forward pre-hook's `.data.mul_`",
    "root": "the root's forward, `.data = w * mask`",
    "clamp": "`.data.clamp_(min=0)`",
    "normalise": "`.data /= ||w||` per output channel",
    "prune": "`prune.custom_from_mask`",
    "parametrize": "`parametrize` masking",
}
LEAKS = {
    "add": "`weight.add_(1e-3)` in the step, every batch",
    "scale": "`weight.mul_(0.5)` in a hook, first batch",
    "adam": "an Adam step at lr 1e-6 in the step, every batch",
    "drift": "forward moves a bias by 1e-2 at every call",
}


def replay_difference(model: nn.Module, calls: list, before: dict[str, Tensor]) -> float:
    """Largest ``|replayed - final| / |final|`` per element over the parameters (what ``_rewritten_by_forward``
    compares against ``CHECKSUM_TOLERANCE``), after the replay and after a second one."""
    live = {name: p.detach().clone() for name, p in named_parameters_to_watch(model)}
    worst = 0.0
    with torch.no_grad(), private_state(model, before):
        for _ in range(2):
            for call in calls:
                call.run()
            for name, p in named_parameters_to_watch(model):
                relative = ((p - live[name]).abs() / live[name].abs()).nan_to_num(nan=0.0)
                worst = max(worst, float(relative.max()))
    return worst


def evaluation_run(how: str, leak: str, seed: int) -> tuple[int, int, float]:
    """Train 3 Adam steps, evaluate 3 batches with ``leak``; ``(changed, unexplained, replay difference)``."""
    torch.manual_seed(seed)
    model = MaskedNet(how, leak)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = F.cross_entropy(model(torch.rand(16, 3, 16, 16)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # moves the masked entries
    model.eval()
    watched = named_parameters_to_watch(model)
    start, before = Checksums.of(watched), host_copies(watched)
    recorder = OutermostCalls(model, samples=4)
    for batch in range(3):
        x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
        with torch.no_grad():
            model(x)
        recorder.close()
        weight = model.layers[0].conv.weight
        if leak == "add":
            with torch.no_grad():
                weight.add_(1e-3)
        elif leak == "scale" and batch == 0:
            with torch.no_grad():
                weight.mul_(0.5)
        elif leak == "adam":
            step = torch.optim.Adam(model.parameters(), lr=1e-6)
            F.cross_entropy(model(x), y).backward()
            step.step()
            step.zero_grad()
    changed = start.changed(Checksums.of(watched))
    if not changed:
        return 0, 0, 0.0
    difference = replay_difference(model, recorder.calls, host_copies(list(before.items())))
    verdict = ModeGuardCallback()._rewritten_by_forward(model, recorder.calls, before, changed)
    return len(changed), len(verdict.unexplained), difference


def re_masking(seeds: Sequence[int]) -> list[Row]:
    tolerance = f"<= {CHECKSUM_TOLERANCE:g}"
    rows: list[Row] = []
    cases = [(how, "none", "healthy", FORMS[how]) for how in FORMS]
    cases += [("data", leak, "broken", f"{FORMS['data']} + {LEAKS[leak]}") for leak in LEAKS]
    cases += [("helper", "adam", "broken", f"{FORMS['helper']} + {LEAKS['adam']}")]
    for how, leak, kind, label in cases:
        runs = [evaluation_run(how, leak, seed) for seed in seeds]
        fired = sum(unexplained > 0 for _, unexplained, _ in runs)
        changed = max(c for c, _, _ in runs)
        unexplained = max(u for _, u, _ in runs)
        value = max(d for _, _, d in runs) if kind == "healthy" else min(d for _, _, d in runs)
        statistic = "replay difference, " + ("max" if kind == "healthy" else "min")
        rows.append(
            (
                f"{label} ({changed} changed, {unexplained} unexplained)",
                statistic,
                kind,
                value,
                tolerance,
                f"fired {fired}/{len(runs)}",
            )
        )
    return rows


def replay_cost() -> str:
    model = models.resnet50().eval()
    inputs = torch.rand(32, 3, 64, 64)
    watched = named_parameters_to_watch(model)
    with torch.no_grad():
        model(inputs)
        start = time.perf_counter()
        model(inputs)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        before = host_copies(watched)
        copy = time.perf_counter() - start
        start = time.perf_counter()
        recorder = OutermostCalls(model, samples=4)
        model(inputs)
        recorder.close()
        recorded = time.perf_counter() - start
    changed = [name for name, _ in watched]
    start = time.perf_counter()
    ModeGuardCallback()._rewritten_by_forward(model, recorder.calls, before, changed)
    replay = time.perf_counter() - start
    return (
        f"ResNet-50, batch of 32 at 64px: host copy of the weights {1e3 * copy:.0f} ms, first batch with the "
        f"recorder {1e3 * recorded:.0f} ms against {1e3 * plain:.0f} ms without, replay (2 passes of 4 samples, "
        f"only when weights changed) {1e3 * replay:.0f} ms"
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
    print(f"\nunchanged max {unchanged:.3g} <= {CHECKSUM_TOLERANCE:g} < smallest real change {smallest:.3g}")
    assert unchanged <= CHECKSUM_TOLERANCE < smallest
    print(checksum_cost())

    rows = re_masking(seeds + [seeds[-1] + 1])
    print_table("mode.params_changed_in_eval: replaying the first step on the weights from before evaluation", rows)
    healthy = max(r[3] for r in rows if r[2] == "healthy")
    smallest = min(r[3] for r in rows if r[2] == "broken")
    quiet = all(r[5].startswith("fired 0/") for r in rows if r[2] == "healthy")
    caught = all(r[5] == f"fired {len(seeds) + 1}/{len(seeds) + 1}" for r in rows if r[2] == "broken")
    print(f"\nre-parametrisation max {healthy:.3g} <= {CHECKSUM_TOLERANCE:g} < smallest leak {smallest:.3g}")
    assert healthy <= CHECKSUM_TOLERANCE < smallest and quiet and caught
    print(replay_cost())
    print(f"\nrun time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
