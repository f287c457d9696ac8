"""Gradient and update health, per layer.

Gradients are measured at ``on_before_optimizer_step`` (unscaled under AMP, before clipping, once per
optimizer step with gradient accumulation), scoped to the optimizer that is about to step, and
aggregated per owning module. Updates are measured as the change of the weights across that step,
read at ``on_train_batch_end``. Only *check steps* do any work: every step of the first
``dense_steps`` optimizer steps, then one step in ``every_n_steps``; each check reads its numbers to
the host once. A check reads every gradient once (its exact L2 norm, which is what is judged); weight and update
norms and the figure's mean/max gradient come from 4096 fixed random positions of each larger parameter.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_sanity import compat
from lightning_sanity.base import SanityCallback, collect_findings, is_int, is_number, require
from lightning_sanity.batch import BatchAdapter
from lightning_sanity.figures import gradient_flow_figure
from lightning_sanity.findings import Severity
from lightning_sanity.gradient_stats import (
    PLAIN_TENSOR_HINT,
    CheckSummary,
    Layer,
    ParamInfo,
    PendingCheck,
    PlainTensor,
    ResetProbes,
    ResetWindow,
    Watch,
    anonymous_info,
    clipping_factor,
    collapse_module_names,
    copied,
    depth_ratio,
    describe_parameters,
    exploding_growth,
    find_optimizer_index,
    float_vector,
    format_lrs,
    group_peaks,
    has_grad_scaler,
    in_training_mode,
    is_check_step,
    is_fraction,
    l2,
    lr_is_judgeable,
    per_layer,
    plain_tensor_attributes,
    plain_tensor_verdicts,
    read_to_host,
    returned_finding,
    sample_elements,
    shorten,
    spread,
    unused_finding,
)
from lightning_sanity.loggers import log_scalars, scalar_key
from lightning_sanity.module_calls import ModuleCalls

_MIN_CHECKS = 3
"""Checks a persistent symptom (missing, zero, vanishing, unchanged) needs before it is judged."""
_BASELINE_CHECKS = 3
"""The gradient-norm baseline that growth is measured against: the median of the first checks."""
_PERSISTENT_CHECKS = 5
"""Checks an update-size symptom must persist for: one odd step is not a learning rate problem."""
_SCALER_SKIPS = 5
"""Consecutive non-finite checks tolerated under a gradient scaler, which skips those steps by design."""
_VISIBLE_STEP = 1e-6
"""A plain gradient step smaller than this fraction of the weights' RMS may vanish in float32 rounding."""
_COLLAPSED_LR = 1e-3
"""A learning rate below this fraction of the highest one the optimizer used has all but stopped training..."""
_EARLY = 0.5
"""...which schedules reach, if ever, in their last steps: earlier than this fraction of the planned steps is a bug."""
_RESET_PROBES = 2
"""Parameters per optimizer (its largest) whose gradient is watched for a reset between optimizer steps."""


class GradientFlowCallback(SanityCallback):
    """Gradient and update health, per layer.

    Catches layers that never receive a gradient (a ``.detach()`` or ``torch.no_grad()`` in
    ``forward``, a layer defined and never used), gradients that are exactly zero (dead ReLUs),
    vanish with depth, explode or are NaN/Inf, trainable parameters the optimizer never updates, and
    learning rates that make updates meaningless or destructive. Also gradients that are never reset
    between optimizer steps (``grad.not_reset``: manual optimisation without ``zero_grad``), and
    tensors held as plain module attributes instead of parameters or buffers (``param.plain_tensor``,
    e.g. ``self.alpha = torch.zeros(n)`` meant to be learned). Frozen parameters
    (``requires_grad=False``) are never flagged; each check is scoped to the optimizer that steps, so
    GANs with several optimizers are fine.

    Args:
        dense_steps: Check every one of the first ``dense_steps`` optimizer steps (fail fast).
        every_n_steps: After that, check one optimizer step in ``every_n_steps``.
        max_logged_layers: Log the gradient norm of at most this many layers (spread over the depth).
        vanishing_ratio: Report vanishing gradients when the first layers' relative gradient
            (``||grad|| / ||weight||``) is below this fraction of the last layers'.
        exploding_growth: Report exploding gradients when the total gradient norm grows by this
            factor over its value in the first checks.
        min_update_ratio: Report too-small updates when every layer's ``||update|| / ||weight||``
            stays below this.
        max_update_ratio: Report too-large updates when the median layer's ratio stays above this.
        strict: Raise :class:`~lightning_sanity.SanityError` on the first ERROR finding.
        batch_adapter: Unused here; accepted for a uniform configuration of the pack.
        figure_every_n_epochs: Log the gradient-flow figure (per-layer mean and max gradient, log
            scale) at the first epoch, then every N epochs; 0 turns it off.
        save_dir: Also save the figures as PNG files here.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Attributes:
        layer_grad_norms: ``{module name: (mean |grad|, max |grad|)}`` of the last check, in module
            order: the data of the classic gradient-flow figure. For a parameter of more than 4096 elements both
            are read from 4096 of them (the max is then a lower bound), kept consistent with its exact L2 norm.
        summaries: The :class:`CheckSummary` of the most recent checks.

    Example::

        trainer = Trainer(callbacks=[GradientFlowCallback(dense_steps=50, every_n_steps=200)])
        trainer.fit(model, datamodule)
        for layer, (mean, peak) in trainer.callbacks[0].layer_grad_norms.items():
            print(f"{layer:40s} mean |grad| {mean:.2e}  max |grad| {peak:.2e}")
    """

    name: ClassVar[str] = "gradient_flow"

    def __init__(
        self,
        *,
        dense_steps: int = 20,
        every_n_steps: int = 100,
        max_logged_layers: int = 10,
        vanishing_ratio: float = 1e-6,
        exploding_growth: float = 1e4,
        min_update_ratio: float = 1e-5,
        max_update_ratio: float = 1.0,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        figure_every_n_epochs: int = 5,
        save_dir: str | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            strict=strict, batch_adapter=batch_adapter, figure_every_n_epochs=figure_every_n_epochs, save_dir=save_dir
        )
        self.configure_findings(ignore, severity)
        require(
            is_int(dense_steps) and dense_steps >= _MIN_CHECKS, "dense_steps", f"an int >= {_MIN_CHECKS}", dense_steps
        )
        require(is_int(every_n_steps) and every_n_steps >= 1, "every_n_steps", "an int >= 1", every_n_steps)
        require(
            is_int(max_logged_layers) and max_logged_layers >= 0, "max_logged_layers", "an int >= 0", max_logged_layers
        )
        require(is_fraction(vanishing_ratio), "vanishing_ratio", "a float in (0, 1)", vanishing_ratio)
        require(
            is_number(exploding_growth) and exploding_growth > 1, "exploding_growth", "a float > 1", exploding_growth
        )
        require(is_fraction(min_update_ratio), "min_update_ratio", "a float in (0, 1)", min_update_ratio)
        require(
            is_number(max_update_ratio) and max_update_ratio > min_update_ratio,
            "max_update_ratio",
            "a float > min_update_ratio",
            max_update_ratio,
        )
        self.dense_steps = dense_steps
        self.every_n_steps = every_n_steps
        self.max_logged_layers = max_logged_layers
        self.vanishing_ratio = float(vanishing_ratio)
        self.exploding_growth = float(exploding_growth)
        self.min_update_ratio = float(min_update_ratio)
        self.max_update_ratio = float(max_update_ratio)
        self.layer_grad_norms: dict[str, tuple[float, float]] = {}
        self.summaries: deque[CheckSummary] = deque(maxlen=1000)
        self._infos: dict[int, ParamInfo] = {}
        self._watches: dict[int, Watch] = {}
        self._pending: list[PendingCheck] = []
        self._orphans: list[Tensor] = []
        self._probes: ResetProbes | None = None
        self._plain_tensors: list[PlainTensor] = []
        self._calls: ModuleCalls | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._plain_tensors = plain_tensor_attributes(pl_module)  # before any forward can cache tensors on modules

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._infos = describe_parameters(pl_module)
        self._watches = {}
        self._pending = []
        self.layer_grad_norms = {}
        optimized = {
            id(p) for optimizer in trainer.optimizers for group in optimizer.param_groups for p in group["params"]
        }
        self._orphans = [p for p in pl_module.parameters() if p.requires_grad and id(p) not in optimized]
        self._remove_probes()
        self._probes = ResetProbes(trainer.optimizers, self._watches, _RESET_PROBES)
        self._stop_recording_calls()
        if not compat.is_compiled(pl_module):  # a hook on a compiled model's modules costs it a recompilation
            self._calls = ModuleCalls(pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        failure = self._calls.start() if self._calls is not None else None
        if failure is not None:
            raise failure  # met inside the user's forward, where the hooks may not raise: reported here

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        index = find_optimizer_index(trainer, optimizer)
        watch = self._watches.get(index)
        if watch is None:  # not setdefault: a Watch is a dozen containers, and most steps are not checked
            watch = self._watches[index] = Watch()
        step, watch.steps = watch.steps, watch.steps + 1
        ResetProbes.close_window(watch)
        arrived, watch.gradient_arrived = watch.gradient_arrived, set()
        if is_check_step(step, self.dense_steps, self.every_n_steps):
            probed = self._probes.probed.get(index, ()) if self._probes else ()
            if any(id(param) in arrived and param.grad is None for param in probed):
                watch.cleared_before_step += 1  # e.g. zero_grad() between backward and step
            self._pending.append(self._measure_gradients(index, step, optimizer))
            if self._calls is not None:  # where the outputs of the modules without a gradient went, while known
                watch.note_outputs(self._pending[-1].without_grad, self._calls.returned_unused)
            if self._probes and not watch.reset_judged:
                watch.reset_window = ResetWindow()  # watches the gradients arriving until this optimizer's next step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._calls is not None:
            self._calls.stop()
        if self._plain_tensors:
            self._judge_plain_tensors(trainer, pl_module)
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        numbers = read_to_host(pending)
        self._judge_resets(trainer)
        if self._orphans:
            self._judge_orphans(trainer)
        for check, stats in zip(pending, numbers, strict=True):
            self._judge_check(trainer, check, stats)
        watches = self._watches.values()
        if len(watches) >= len(trainer.optimizers) and all(watch.judged for watch in watches):
            self._stop_recording_calls()  # only the dense phase's verdicts read them: no hook for the rest of training

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.layer_grad_norms and self.figures_wanted(trainer):
            self.log_figure(
                trainer, "train", "layers", functools.partial(gradient_flow_figure, dict(self.layer_grad_norms))
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for index, watch in self._watches.items():
            if not watch.judged and watch.checks >= _MIN_CHECKS:
                self._judge_persistent(trainer, index, watch)
        self._stop_recording_calls()

    @override
    def release(self) -> None:
        self._pending = []
        self._orphans = []
        self._remove_probes()
        self._stop_recording_calls()

    def _remove_probes(self) -> None:
        if self._probes is not None:
            self._probes.remove()
            self._probes = None

    def _stop_recording_calls(self) -> None:
        if self._calls is not None:
            self._calls.close()
            self._calls = None

    def _measure_gradients(self, index: int, step: int, optimizer: Optimizer) -> PendingCheck:
        infos: list[ParamInfo] = []
        params: list[Tensor] = []
        lrs: list[float] = []
        without_grad: list[ParamInfo] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if not param.requires_grad or not param.numel():
                    continue
                info = self._infos.get(id(param)) or anonymous_info(param, len(self._infos))
                self._infos[id(param)] = info
                if param.grad is None:
                    without_grad.append(info)
                elif not param.grad.is_sparse:
                    infos.append(info)
                    params.append(param)
                    lrs.append(float(group.get("lr", 0.0)))
        grad_stats: Tensor | None = None
        snapshot: list[Tensor] = []
        if params:
            with torch.no_grad():
                grads = [p.grad for p in params if p.grad is not None]
                # One full pass over the gradients (their exact L2 norms: what is judged, and finiteness); the rest
                # from a sample of each parameter, in fused calls (a model with hundreds of small parameters would
                # otherwise pay a few Python-level tensor calls per parameter)
                snapshot = copied(sample_elements(param) for param in params)
                grad_samples = [sample_elements(grad) for grad in grads]
                norms = [
                    compat.foreach_norm(grads, 2, dtype=torch.float32),
                    compat.foreach_norm(grad_samples, 1, dtype=torch.float32),
                    compat.foreach_norm(grad_samples, math.inf, dtype=torch.float32),
                    compat.foreach_norm(snapshot, 2, dtype=torch.float32),
                ]
                device = params[0].device
                grad_stats = torch.stack([float_vector(values, device) for values in norms])
        group_lrs = [float(group.get("lr", 0.0)) for group in optimizer.param_groups]
        return PendingCheck(
            index,
            step,
            infos,
            params,
            lrs,
            group_lrs,
            group_peaks(optimizer),
            grad_stats,
            snapshot,
            [param.numel() / sample.numel() for param, sample in zip(params, snapshot, strict=True)],
            without_grad,
        )

    def _judge_resets(self, trainer: pl.Trainer) -> None:
        """``grad.not_reset``: at every watched step, the gradient of the previous step was still in ``.grad``."""
        for index, watch in self._watches.items():
            if watch.reset_judged or len(watch.kept_gradient) < _MIN_CHECKS:
                continue
            watch.reset_judged = True
            held = [None if norm is None else float(norm) for norm in watch.kept_gradient]
            if any(norm is None or norm == 0.0 for norm in held):
                continue  # reset (set to None or zeroed) at least once: plain steps or accumulation over k batches
            norms = [s.total_grad_norm for s in self.summaries if s.optimizer_index == index]
            growth = norms[-1] / norms[0] if len(norms) >= 2 and norms[0] > 0 else math.nan
            self.record(
                trainer,
                "grad.not_reset",
                Severity.ERROR,
                f"Gradients of optimizer {index} are never reset between its steps: in all {len(held)} watched "
                f"steps the gradient of the previous step was still in .grad when the next backward added to it, so "
                f"every step uses the sum of all past gradients (total gradient norm grew {growth:.3g}x over the "
                "checks).",
                "Call optimizer.zero_grad() after each optimizer.step() in manual optimisation (or reset every k "
                "steps when accumulating on purpose); do not override optimizer_zero_grad with a no-op.",
                subject=f"optimizer{index}",
                evidence={
                    "watched_steps": len(held),
                    "held_gradient_norms": held,
                    "grad_norm_first_check": norms[0] if norms else None,
                    "grad_norm_last_check": norms[-1] if norms else None,
                    "manual_optimization": not trainer.lightning_module.automatic_optimization,
                },
            )
        watches = self._watches.values()
        if len(watches) >= len(trainer.optimizers) and all(watch.reset_judged for watch in watches):
            self._remove_probes()  # judged for every optimizer: no hook runs for the rest of training

    def _judge_plain_tensors(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Judged after the first training step: a tensor ``forward`` replaced is its product, not model state."""
        found, self._plain_tensors = self._plain_tensors, []
        held = {p.name: p.tensor for p in plain_tensor_attributes(pl_module)}
        kept = [p for p in found if held.get(p.name) is p.tensor]
        parameter_device = next((str(p.device) for p in pl_module.parameters()), None)
        for kind, severity, message, evidence in plain_tensor_verdicts(kept, parameter_device):
            self.record(
                trainer, "param.plain_tensor", severity, message, PLAIN_TENSOR_HINT, subject=kind, evidence=evidence
            )

    def _judge_orphans(self, trainer: pl.Trainer) -> None:
        """Trainable parameters in no optimizer: a bug when the loss gives them gradients, else unused on purpose."""
        orphans, self._orphans = self._orphans, []
        with_grad = [self._infos[id(p)] for p in orphans if p.grad is not None and id(p) in self._infos]
        stuck = [info for info in with_grad if in_training_mode(info)]
        if not stuck:
            return
        modules = collapse_module_names({i.module for i in stuck}, {i.module for i in self._infos.values()})
        self.record(
            trainer,
            "param.not_updated",
            Severity.ERROR,
            f"{len(stuck)} trainable parameter(s) receive gradients but are in no optimizer param group, so they "
            f"never change: {shorten(modules)}.",
            "Add them to the optimizer in configure_optimizers (e.g. pass self.parameters()), or freeze them on "
            "purpose with requires_grad_(False).",
            subject="no_param_group",
            evidence={"modules": modules, "parameters": [i.name for i in stuck]},
        )

    def _judge_check(self, trainer: pl.Trainer, check: PendingCheck, stats: list[list[float]]) -> None:
        watch = self._watches[check.optimizer_index]
        for info in check.without_grad:
            watch.names_checked.setdefault(info.name, info)
        grad_l2, grad_l1, grad_max, weight_l2, update_l2 = stats if stats else ([], [], [], [], [])
        nonfinite = [
            info.name
            for info, norm, peak in zip(check.infos, grad_l2, grad_max, strict=True)
            if not (math.isfinite(norm) and math.isfinite(peak))
        ]
        if nonfinite:
            self._report_nonfinite(trainer, check, watch, nonfinite)
            return
        watch.nonfinite_streak = 0
        watch.checks += 1
        columns = zip(check.infos, grad_l2, grad_max, weight_l2, check.lrs, update_l2, strict=True)
        for info, norm, peak, weight, lr, moved in columns:
            watch.names_checked.setdefault(info.name, info)
            watch.had_grad.add(info.name)
            if norm > 0 or peak > 0:  # the sampled peak as well: a float32 norm of gradients below 1e-19 underflows
                watch.nonzero_grad.add(info.name)
                if lr * peak > _VISIBLE_STEP * weight / math.sqrt(info.numel):
                    watch.stepped_with_grad[info.name] = watch.stepped_with_grad.get(info.name, 0) + 1
                    if moved > 0:
                        watch.moved.add(info.name)
        layers = per_layer(check.infos, stats, self._module_order())
        if layers:
            self._judge_layers(trainer, check, watch, layers, grad_l2, weight_l2, update_l2)
        self._judge_lr_schedule(trainer, check, watch)
        if watch.checks == self.dense_steps and not watch.judged:
            self._judge_persistent(trainer, check.optimizer_index, watch)

    def _judge_layers(
        self,
        trainer: pl.Trainer,
        check: PendingCheck,
        watch: Watch,
        layers: dict[str, Layer],
        grad_l2: Sequence[float],
        weight_l2: Sequence[float],
        update_l2: Sequence[float],
    ) -> None:
        norms = {name: (layer.mean_abs_grad, layer.max_abs_grad) for name, layer in layers.items()}
        norms.update({info.module: (0.0, 0.0) for info in check.without_grad if info.module not in norms})
        self.layer_grad_norms.update(norms)
        depth: dict[str, int] = {}
        for info in self._infos.values():
            depth.setdefault(info.module, len(depth))
        self.layer_grad_norms = dict(
            sorted(self.layer_grad_norms.items(), key=lambda item: depth.get(item[0], len(depth)))
        )
        summary = self._summarise(check, watch, layers, grad_l2, weight_l2, update_l2)
        self.summaries.append(summary)
        self._log(trainer, summary, layers)
        self._judge_exploding(trainer, watch, summary)
        self._judge_update_size(trainer, watch, summary, layers)

    def _summarise(
        self,
        check: PendingCheck,
        watch: Watch,
        layers: dict[str, Layer],
        grad_l2: Sequence[float],
        weight_l2: Sequence[float],
        update_l2: Sequence[float],
    ) -> CheckSummary:
        ratios = [layer.update_ratio for layer in layers.values() if layer.update_ratio is not None]
        for name, layer in layers.items():
            watch.initial_weight_norms.setdefault(name, layer.weight_norm)
        steps = [
            layer.update_norm / watch.initial_weight_norms[name]
            for name, layer in layers.items()
            if watch.initial_weight_norms[name] > 0
        ]
        total_weight = l2(weight_l2)
        depth_layers = [name for name, layer in layers.items() if layer.is_layer]
        summary = CheckSummary(
            optimizer_index=check.optimizer_index,
            step=check.step,
            total_grad_norm=l2(grad_l2),
            update_ratio=l2(update_l2) / total_weight if total_weight > 0 else math.nan,
            max_layer_update_ratio=max(ratios, default=math.nan),
            median_layer_step=statistics.median(steps) if steps else math.nan,
            depth_ratio=depth_ratio([layers[name].relative_grad for name in depth_layers]),
            judgeable_lr=lr_is_judgeable(watch, check.group_lrs, check.group_references),
            learning_rates=list(check.group_lrs),
        )
        if summary.depth_ratio is not None:
            watch.depth_ratios.append(summary.depth_ratio)
            watch.depth_layers = depth_layers
        return summary

    def _log(self, trainer: pl.Trainer, summary: CheckSummary, layers: dict[str, Layer]) -> None:
        suffix = f"/opt{summary.optimizer_index}" if len(trainer.optimizers) > 1 else ""
        metrics = {
            scalar_key(self.name, "train", f"grad_norm_total{suffix}"): summary.total_grad_norm,
            scalar_key(self.name, "train", f"update_ratio{suffix}"): summary.update_ratio,
        }
        for name in spread(list(layers), self.max_logged_layers):
            metrics[scalar_key(self.name, "train", f"grad_norm/{name}")] = layers[name].grad_norm
        log_scalars(trainer, {key: value for key, value in metrics.items() if math.isfinite(value)})

    def _report_nonfinite(self, trainer: pl.Trainer, check: PendingCheck, watch: Watch, names: list[str]) -> None:
        watch.nonfinite_streak += 1
        if has_grad_scaler(trainer) and watch.nonfinite_streak < _SCALER_SKIPS:
            return  # the scaler skips this step and lowers its scale: overflow now and then is by design
        self.record(
            trainer,
            "grad.non_finite",
            Severity.ERROR,
            f"NaN/Inf gradients in {len(names)} of {len(check.infos)} parameters at optimizer step {check.step}, "
            f"first: {shorten(names)}.",
            "Look for a division by zero, log/sqrt of non-positive values or an overflow in the loss; lower the "
            "learning rate, add gradient_clip_val, or run with detect_anomaly=True to find the operation.",
            subject=f"optimizer{check.optimizer_index}",
            evidence={"parameters": names[:20], "count": len(names), "checked": len(check.infos), "step": check.step},
        )

    def _judge_exploding(self, trainer: pl.Trainer, watch: Watch, summary: CheckSummary) -> None:
        norm = summary.total_grad_norm
        if len(watch.baseline_norms) < _BASELINE_CHECKS:
            watch.baseline_norms.append(norm)
            return
        baseline = statistics.median(watch.baseline_norms)
        growth = exploding_growth(baseline, norm)
        if growth is None or growth < self.exploding_growth:
            return
        self.record(
            trainer,
            "grad.exploding",
            Severity.ERROR,
            f"The gradient norm grew {growth:.1e}x, from {baseline:.3g} in the first checks to {norm:.3g} at "
            f"optimizer step {summary.step}.",
            "Lower the learning rate, add gradient_clip_val to the Trainer, and check for a missing normalisation "
            "layer or unnormalised inputs/targets.",
            subject=f"optimizer{summary.optimizer_index}",
            evidence={"baseline_norm": baseline, "grad_norm": norm, "growth": growth, "step": summary.step},
        )

    def _judge_update_size(
        self, trainer: pl.Trainer, watch: Watch, summary: CheckSummary, layers: dict[str, Layer]
    ) -> None:
        if not summary.judgeable_lr or not math.isfinite(summary.max_layer_update_ratio):
            return
        if summary.max_layer_update_ratio < self.min_update_ratio:
            watch.small_updates += 1
        else:
            watch.healthy_update_seen = True
        if summary.median_layer_step > self.max_update_ratio:
            watch.large_updates += 1
        evidence = {
            "max_layer_update_ratio": summary.max_layer_update_ratio,
            "median_layer_step": summary.median_layer_step,
            "update_ratio": summary.update_ratio,
            "learning_rates": watch.last_lrs,
            "step": summary.step,
        }
        optimizer = f"optimizer {summary.optimizer_index}"
        if watch.small_updates >= _PERSISTENT_CHECKS and not watch.healthy_update_seen:
            clipped_by = clipping_factor(trainer, summary.total_grad_norm)
            cause, hint = (
                (
                    f"; gradient_clip_val={trainer.gradient_clip_val} scales the gradient (norm "
                    f"{summary.total_grad_norm:.3g} before clipping) down {clipped_by:.3g}x",
                    "Raise gradient_clip_val to about the typical gradient norm (0.5-5 is common) or remove it.",
                )
                if clipped_by is not None
                else (
                    "",
                    "Raise the learning rate (typically 1e-3 for Adam/AdamW, 1e-2 to 1e-1 for SGD) or check the LR "
                    "scheduler; a learning-rate finder (Tuner.lr_find) helps pick one.",
                )
            )
            self.record(
                trainer,
                "update.too_small",
                Severity.WARNING,
                f"Updates are meaningless: no layer's weights change by more than "
                f"{summary.max_layer_update_ratio:.1e} of their norm per step over {watch.small_updates} checks "
                f"({optimizer}, lr {format_lrs(watch.last_lrs)}{cause}); healthy training is around 1e-3.",
                hint,
                subject=f"optimizer{summary.optimizer_index}",
                evidence={
                    **evidence,
                    "checks": watch.small_updates,
                    "threshold": self.min_update_ratio,
                    "gradient_clip_val": trainer.gradient_clip_val,
                },
            )
        if watch.large_updates >= _PERSISTENT_CHECKS:
            worst = max(
                layers, key=lambda name: layers[name].update_norm / (watch.initial_weight_norms[name] or math.inf)
            )
            self.record(
                trainer,
                "update.too_large",
                Severity.WARNING,
                f"Updates are destructive: the median layer's weights move by {summary.median_layer_step:.2g}x "
                f"their initial norm per step over {watch.large_updates} checks "
                f"(worst: {worst}; {optimizer}, lr {format_lrs(watch.last_lrs)}); healthy training is around 1e-3.",
                _too_large_hint(trainer),
                subject=f"optimizer{summary.optimizer_index}",
                evidence={
                    **evidence,
                    "checks": watch.large_updates,
                    "threshold": self.max_update_ratio,
                    "worst": worst,
                },
            )

    def _judge_lr_schedule(self, trainer: pl.Trainer, check: PendingCheck, watch: Watch) -> None:
        """``update.lr_collapsed``: before half the planned optimizer steps, every learning rate of the optimizer fell
        below 1/1000 of the highest one it used (a per-epoch decay run per step, a step_size in the wrong unit)."""
        lrs = check.group_lrs
        if len(watch.used_peak_lrs) != len(lrs):
            watch.used_peak_lrs = [0.0] * len(lrs)
        watch.used_peak_lrs = [max(peak, lr) for peak, lr in zip(watch.used_peak_lrs, lrs, strict=True)]
        planned = trainer.estimated_stepping_batches
        if not math.isfinite(planned) or check.step >= _EARLY * planned:
            return
        if not all(peak > 0 and lr < _COLLAPSED_LR * peak for lr, peak in zip(lrs, watch.used_peak_lrs, strict=True)):
            return
        optimizer = (
            trainer.optimizers[check.optimizer_index] if check.optimizer_index < len(trainer.optimizers) else None
        )
        configs = [c for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is optimizer]
        if any(config.reduce_on_plateau for config in configs):
            return  # reductions answer a monitored metric that stopped improving: the schedule follows the run
        schedulers = [(type(config.scheduler).__name__, config.interval) for config in configs]
        named = ", ".join(f"{name} (interval {interval!r})" for name, interval in schedulers) or "not a Lightning one"
        self.record(
            trainer,
            "update.lr_collapsed",
            Severity.WARNING,
            f"The learning rate of optimizer {check.optimizer_index} fell below 1/1000 of its peak by optimizer step "
            f"{check.step} of {int(planned)} planned ({check.step / planned:.0%}): "
            f"{format_lrs(watch.used_peak_lrs)} -> {format_lrs(lrs)}, schedule: {named}. The remaining steps barely "
            "change the weights.",
            "Check the scheduler's interval ('step' or 'epoch' in configure_optimizers' lr_scheduler dict) and that "
            "step_size / T_max / milestones / gamma are in units of that interval; call scheduler.step() once per "
            "interval.",
            subject=f"optimizer{check.optimizer_index}",
            evidence={
                "peak_lrs": watch.used_peak_lrs,
                "learning_rates": lrs,
                "step": check.step,
                "planned_steps": int(planned),
                "schedulers": [f"{name}/{interval}" for name, interval in schedulers],
            },
        )

    def _judge_persistent(self, trainer: pl.Trainer, index: int, watch: Watch) -> None:
        """Symptoms that need several checks of evidence: judged once, at the end of the dense phase."""
        watch.judged = True
        all_modules = {info.module for info in self._infos.values()}
        missing = [
            info
            for name, info in watch.names_checked.items()
            if name not in watch.had_grad and in_training_mode(info)  # eval mode: frozen on purpose
        ]
        if missing and watch.cleared_before_step:
            modules = collapse_module_names({i.module for i in missing}, all_modules)
            self.record(
                trainer,
                "grad.cleared_before_step",
                Severity.ERROR,
                f"Backward computed gradients for optimizer {index}'s parameters, but {len(missing)} trainable "
                f"parameter(s) had no gradient when the optimizer stepped ({watch.cleared_before_step} checked "
                f"steps): the gradients are cleared between backward and optimizer.step(), so nothing is learned. "
                f"Affected: {shorten(modules)}.",
                "Call optimizer.zero_grad() before manual_backward() or after optimizer.step(), never between them; "
                "check overridden optimizer_zero_grad / on_before_optimizer_step / optimizer_step hooks.",
                subject=f"optimizer{index}",
                evidence={
                    "modules": modules,
                    "parameters": [i.name for i in missing],
                    "checks": watch.checks,
                    "steps_cleared_after_backward": watch.cleared_before_step,
                    "manual_optimization": not trainer.lightning_module.automatic_optimization,
                },
            )
        elif missing:
            self._report_missing(trainer, index, watch, missing, all_modules)
        zero = [info for name, info in watch.names_checked.items() if name in watch.had_grad - watch.nonzero_grad]
        if zero:
            modules = collapse_module_names({i.module for i in zero}, all_modules)
            self.record(
                trainer,
                "grad.zero",
                Severity.WARNING,
                f"{len(zero)} parameter(s) of optimizer {index} had exactly zero gradients in all {watch.checks} "
                f"checked steps (dead units): {shorten([i.name for i in zero])}.",
                "Dead ReLUs: check for very negative bias initialisation, a ReLU applied to the output/logits, or a "
                "too-high learning rate; LeakyReLU/GELU and default initialisation avoid them.",
                subject=f"optimizer{index}",
                evidence={"modules": modules, "parameters": [i.name for i in zero], "checks": watch.checks},
            )
        unchanged = sorted(
            name for name, count in watch.stepped_with_grad.items() if count >= _MIN_CHECKS and name not in watch.moved
        )
        if unchanged:
            self.record(
                trainer,
                "param.not_updated",
                Severity.ERROR,
                f"{len(unchanged)} parameter(s) of optimizer {index} have non-zero gradients but did not change in "
                f"any of {watch.checks} checked steps: {shorten(unchanged)}.",
                "Check an overridden optimizer_step that skips optimizer.step(), a learning rate or update smaller "
                "than float precision, or code that restores these weights after each step.",
                subject=f"optimizer{index}:unchanged",
                evidence={"parameters": unchanged, "checks": watch.checks},
            )
        self._judge_vanishing(trainer, index, watch)

    def _report_missing(
        self, trainer: pl.Trainer, index: int, watch: Watch, missing: list[ParamInfo], all_modules: set[str]
    ) -> None:
        """``grad.missing`` for the parameters of modules that run and whose output is dropped inside the computation (a
        cut graph, a branch never combined). ``param.unused`` (INFO) for those of modules forward never called, and for
        those whose output reaches the step beside other outputs and is left out of the loss: the same fact whether
        on purpose (a library encoder deeper than used, BertModel's pooler) or not, and the rest of the model trains."""
        calls = self._calls
        unused, returned, cut = watch.split_missing(missing, calls.never_called if calls else None)
        if cut:
            modules = collapse_module_names({i.module for i in cut}, all_modules)
            ran = "; these modules run in forward, but nothing they compute reaches the loss" if calls else ""
            self.record(
                trainer,
                "grad.missing",
                Severity.ERROR,
                f"{len(cut)} trainable parameter(s) of optimizer {index} never received a gradient in "
                f"{watch.checks} checked steps: {shorten(modules)}{ran}.",
                "Look for .detach(), .item(), .numpy() or torch.no_grad() on the path from these modules to the loss, "
                "or an output of theirs the loss never uses; freeze them with requires_grad_(False) if intended.",
                subject=f"optimizer{index}",
                evidence={
                    "modules": modules,
                    "parameters": [i.name for i in cut],
                    "checks": watch.checks,
                    "called_in_forward": True if calls else None,
                },
            )
        for subject, infos, finding in (("", unused, unused_finding), (":returned", returned, returned_finding)):
            if infos:
                message, hint, evidence = finding(infos, all_modules, trainer.lightning_module, index, watch)
                self.record(
                    trainer, "param.unused", Severity.INFO, message, hint, subject=f"optimizer{index}{subject}",
                    evidence=evidence,
                )  # fmt: skip

    def _judge_vanishing(self, trainer: pl.Trainer, index: int, watch: Watch) -> None:
        if len(watch.depth_ratios) < _MIN_CHECKS:
            return
        typical = statistics.median(watch.depth_ratios)
        if typical >= self.vanishing_ratio:
            return
        first, last = (watch.depth_layers[0], watch.depth_layers[-1]) if watch.depth_layers else ("?", "?")
        self.record(
            trainer,
            "grad.vanishing",
            Severity.WARNING,
            f"Gradients vanish with depth: relative to their weights, the first layers (from {first}) get "
            f"{typical:.1e} of the gradient of the last layers (to {last}), median of {len(watch.depth_ratios)} "
            "checks.",
            "Use ReLU/GELU instead of sigmoid/tanh between layers, add normalisation (BatchNorm/LayerNorm) or "
            "residual connections, and use Kaiming/Xavier initialisation.",
            subject=f"optimizer{index}",
            evidence={
                "depth_ratio": typical,
                "checks": len(watch.depth_ratios),
                "threshold": self.vanishing_ratio,
                "layers": watch.depth_layers,
            },
        )

    def _module_order(self) -> dict[str, int]:
        order: dict[str, int] = {}
        for info in self._infos.values():
            order.setdefault(info.module, len(order))
        return order


def _too_large_hint(trainer: pl.Trainer) -> str:
    """Lower the learning rate, unless ``target.unscaled`` stands: then the huge loss gradients come from targets far
    from the outputs, and the fix is scaling them (a lower learning rate only slows the climb to their mean)."""
    if any(finding.code == "target.unscaled" for finding in collect_findings(trainer)):
        return (
            "The targets are unscaled (target.unscaled): standardise them with training-split statistics "
            "(y = (y - mean) / std, inverted on the predictions) before lowering the learning rate."
        )
    return "Lower the learning rate by 10-100x (typically 1e-3 for Adam/AdamW), or add a warm-up schedule."
