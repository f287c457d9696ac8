"""Train/eval mode discipline around validation.

Lightning puts the LightningModule in eval mode for every validation, test and predict run
(``on_*_model_eval``) after capturing each submodule's ``training`` flag, and puts those flags
back afterwards (``_ModuleMode.restore``, or ``on_*_model_train`` when the user overrides it). It
never calls ``train()`` at the start of fitting: the model trains in the mode it was left in. So
everything this callback reports was done by the user's code, never by Lightning.

What is watched is a list of *mode-dependent* modules computed once per loop run
(:func:`~lightning_sanity.modes.mode_dependent_modules`): dropout, BatchNorm/InstanceNorm with running statistics,
dropout-carrying RNNs and attention, stochastic-depth layers, and user-defined modules whose
``forward`` reads ``self.training``. Per batch only their ``training`` flags are read (no
device work). Parameters and BatchNorm statistics are compared as per-tensor sums and norms taken at the
first evaluation batch and compared after the last one (after the first when the loop's length is unknown), so
weight swaps done in ``on_validation_(epoch_)start``/``end`` hooks (EMA,
:class:`~lightning.pytorch.callbacks.WeightAveraging`) are outside the window. Weights that changed are replayed:
the module calls of the run's first step (:class:`~lightning_sanity.eval_replay.OutermostCalls`), run again on
private copies of the weights from before it, tell a forward that re-parametrises its own weights (re-masking,
wherever it is done) from a change made by the step or a hook; only the first batch pays for recording them. The
stochastic-output check replays the forward call the user's step made on its first evaluation batch
(:class:`~lightning_sanity.observe.StepObserver`: the LightningModule, or the direct child such as ``self.model`` it
called) on a few samples, two times per run (if they differ, both again from the first pass's RNG state, recording
every module's activations, to rule out a stateful forward and find where the randomness starts).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_sanity import compat
from lightning_sanity.base import EvalSplit, SanityCallback, require, stage_of
from lightning_sanity.batch import BatchAdapter
from lightning_sanity.eval_replay import (
    ActivationRecorder,
    OutermostCalls,
    Replay,
    RngState,
    host_copies,
    other_values,
    output_tensors,
    relative_difference,
)
from lightning_sanity.findings import Severity
from lightning_sanity.isolation import private_state
from lightning_sanity.modes import (
    NORMALIZATION,
    RANDOM_KINDS,
    Checksums,
    EvalFrozen,
    ModeDependent,
    describe_modules,
    eval_frozen_subtrees,
    mode_dependent_modules,
    named_parameters_to_watch,
    named_running_stats,
    owners,
)
from lightning_sanity.observe import ForwardCall, StepObserver, can_replay, tensors_in
from lightning_sanity.rng import forked_rng

log = logging.getLogger("lightning_sanity")

_DIFFERENT_OUTPUTS = 1e-3
"""Relative max difference between two eval passes above which outputs differ (GPU kernel noise is ~1e-6)."""
_SAME_OUTPUTS = 1e-5
"""Relative max difference below which a replay with the same RNG state reproduced the first pass."""
_NAMES_SHOWN = 8
_FEW_VALUES = 2
"""Values per channel in a training batch at or below which BatchNorm's batch statistics are noise (two values
normalise to +-1); a single sample per batch is also too few however many values it has: its statistics describe
that sample only (calibration: docs/findings.md, ModeGuardCallback)."""
_BN_CALLS_WATCHED = 8
"""Training forward calls per BatchNorm layer whose batch size is recorded; the median ignores a small last batch."""


@dataclass
class _EvalRun:
    """What one validation/test/predict run has seen so far."""

    modules: list[ModeDependent]
    batches: int = 0
    params: Checksums | None = None
    running_stats: Checksums | None = None
    grad_enabled: bool = False
    hooks: list[RemovableHandle] = field(default_factory=list)
    before: dict[str, Tensor] = field(default_factory=dict)
    """The parameters' values at the start of the first batch (host copies, freed once the weights are compared)..."""
    recorder: OutermostCalls | None = None
    """...and, while the first batch runs, the recorder of its step's module calls..."""
    first_calls: list[ForwardCall] = field(default_factory=list)
    """...which a change of the weights is replayed with (:meth:`ModeGuardCallback._rewritten_by_forward`)."""
    observer: StepObserver | None = None
    """Watches the step of a batch whose forward call a check replays (the first batch, the stochastic check's)."""
    stochastic_pending: bool = False
    """The stochastic check replays the forward call of the running batch at its end."""


class ModeGuardCallback(SanityCallback):
    """Catch dropout/BatchNorm in the wrong mode, and a model that changes or is random during evaluation.

    Findings:

    - ``mode.train_in_eval`` (error): mode-dependent modules in training mode during a validation,
      test or predict batch (checked at each batch start and end).
    - ``mode.bn_updated_in_eval`` / ``mode.params_changed_in_eval`` (error): BatchNorm running
      statistics / parameters changed between the first and the last batch of an evaluation run
      (parameters: beyond what the model's forward does to them itself, e.g. re-masking).
    - ``mode.eval_in_train`` (warning): the LightningModule itself is in eval mode at a training batch
      (whatever hook called ``self.eval()``, at any epoch), or modules that trained in training mode are
      found in eval mode at a later training batch. A *part* already in eval mode at the first training
      batch (frozen before ``fit``, in ``on_train_start`` or in an overridden ``train()``) or put in eval
      mode by an ``on_train_epoch_start`` hook is a deliberate freeze and not reported.
    - ``mode.stochastic_eval`` (error): with every mode-dependent module in eval mode, the same inputs
      give different outputs (once per fit/validate/test run, a few samples, RNG forked).
    - ``mode.grad_in_eval`` (info): autograd is enabled while the model runs during evaluation.
    - ``mode.bn_tiny_batch`` (warning): BatchNorm layers in training mode normalise batches of one
      sample, or of at most two values per channel (median of their first training calls), so their
      running statistics do not describe what each batch was normalised with.
    - ``mode.eval_frozen_but_trained`` (warning, info with a dedicated optimizer group): a subtree
      put in eval mode to "freeze" it (not only its normalization layers) whose trainable weights the
      optimizer keeps updating.

    Args:
        allow_stochastic_eval: The model is random in evaluation on purpose (MC dropout, stochastic
            depth, sampling in ``forward``): skip ``mode.stochastic_eval`` and do not report dropout or
            stochastic-depth layers in training mode during evaluation.
        stochastic_samples: How many samples of the first evaluation batch the stochastic check replays
            through the forward call the step made (and the re-masking replay through each module call).
        strict: Raise :class:`~lightning_sanity.SanityError` on the first ERROR finding.
        batch_adapter: ``batch -> (inputs, targets)`` for batch structures not understood by default.
        ignore, severity: Finding codes to silence / re-grade (see :class:`~lightning_sanity.SanityCallback`).

    Example::

        trainer = Trainer(callbacks=[ModeGuardCallback()])
        trainer.fit(model, datamodule)  # warns if e.g. validation_step calls self.train()

        # MC-dropout model that keeps its dropout active in evaluation on purpose
        trainer = Trainer(callbacks=[ModeGuardCallback(allow_stochastic_eval=True)])
    """

    name: ClassVar[str] = "mode_guard"

    def __init__(
        self,
        *,
        allow_stochastic_eval: bool = False,
        stochastic_samples: int = 4,
        strict: bool = False,
        batch_adapter: BatchAdapter | None = None,
        ignore: Sequence[str] | None = None,
        severity: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(strict=strict, batch_adapter=batch_adapter)
        self.configure_findings(ignore, severity)
        require(isinstance(allow_stochastic_eval, bool), "allow_stochastic_eval", "a bool", allow_stochastic_eval)
        require(
            isinstance(stochastic_samples, int)
            and not isinstance(stochastic_samples, bool)
            and 1 <= stochastic_samples <= 1024,
            "stochastic_samples",
            "an int in [1, 1024]",
            stochastic_samples,
        )
        self.allow_stochastic_eval = allow_stochastic_eval
        self.stochastic_samples = stochastic_samples
        self._train_modules: list[ModeDependent] = []
        self._trained_in_train_mode: dict[str, ModeDependent] = {}
        self._training_at_epoch_start: set[str] = set()
        self._first_batch_of_epoch = False
        self._run: _EvalRun | None = None
        self._stochastic_checked = False
        self._batch_sizes: dict[str, list[tuple[int, int]]] = {}
        self._bn_hooks: list[RemovableHandle] = []
        self._frozen_checked = False
        self._frozen: list[EvalFrozen] = []

    # ---- training side: mode.eval_in_train -------------------------------------------------

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_modules = mode_dependent_modules(pl_module)
        self._trained_in_train_mode = {}

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training_at_epoch_start = {m.name for m in self._train_modules if m.module.training}
        self._first_batch_of_epoch = True

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        switched = [m for m in self._trained_in_train_mode.values() if not m.module.training]
        if self._first_batch_of_epoch:
            # Put in eval mode by an on_train_epoch_start hook: a deliberate freeze, not a forgotten probe.
            frozen = [m for m in switched if m.name in self._training_at_epoch_start]
            for entry in frozen:
                del self._trained_in_train_mode[entry.name]
            switched = [m for m in switched if m.name not in self._training_at_epoch_start]
            self._first_batch_of_epoch = False
        if not pl_module.training:
            # The LightningModule itself in eval mode is never a freeze of a part: whatever hook switched it, its
            # mode-dependent modules that are off now train without dropout and with frozen statistics.
            switched = [m for m in self._train_modules if not m.module.training]
            if switched:
                self._report_eval_in_train(trainer, switched, batch_idx, module_in_eval=type(pl_module).__name__)
                return
        if switched:
            self._report_eval_in_train(trainer, switched, batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for entry in self._train_modules:
            if entry.module.training:
                self._trained_in_train_mode.setdefault(entry.name, entry)

    def _report_eval_in_train(
        self, trainer: pl.Trainer, switched: list[ModeDependent], batch_idx: int, module_in_eval: str | None = None
    ) -> None:
        names = [m.name for m in switched]
        where = describe_modules(names)
        cause = (
            f"the LightningModule {module_in_eval} itself is in eval mode, so {where} ({_kinds(switched)}) are"
            if module_in_eval is not None
            else f"{where} ({_kinds(switched)}) trained in training mode earlier but are"
        )
        self.record(
            trainer,
            "mode.eval_in_train",
            Severity.WARNING,
            f"{cause[0].upper()}{cause[1:]} in eval mode at training batch {batch_idx} of epoch "
            f"{trainer.current_epoch}: dropout is off and BatchNorm statistics are frozen for the rest of training.",
            "A hook or probe called .eval() during training and did not restore the mode: save "
            "`was_training = module.training` and call `module.train(was_training)` afterwards. To freeze layers on "
            "purpose, call .eval() on those submodules (not on the LightningModule) before fit, in on_train_start "
            "or in on_train_epoch_start.",
            subject=where,
            evidence={
                "modules": _listing(switched),
                "count": len(switched),
                "batch_idx": batch_idx,
                "lightning_module_in_eval": module_in_eval is not None,
            },
        )

    # ---- training side: mode.bn_tiny_batch / mode.eval_frozen_but_trained ---------------------

    def _watch_batch_sizes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forward pre-hooks on the BatchNorm layers with running statistics, removed after a few training calls."""
        self._remove_bn_hooks()
        self._batch_sizes = {}
        for entry in mode_dependent_modules(pl_module):
            if entry.kind == NORMALIZATION and isinstance(entry.module, compat.BATCH_NORM):
                self._bn_hooks.append(entry.module.register_forward_pre_hook(self._batch_size_probe(trainer, entry)))

    def _batch_size_probe(self, trainer: pl.Trainer, entry: ModeDependent) -> Callable[..., None]:
        def note_batch_size(module: nn.Module, args: Any) -> None:
            if not (module.training and trainer.training) or not args or not isinstance(args[0], Tensor):
                return
            sizes = self._batch_sizes.setdefault(entry.name, [])
            inputs = args[0]
            if len(sizes) < _BN_CALLS_WATCHED and inputs.dim() >= 2 and inputs.shape[1]:
                sync = trainer.world_size if isinstance(module, nn.SyncBatchNorm) else 1
                # shapes are host metadata: no device sync
                sizes.append((int(inputs.shape[0]) * sync, inputs.numel() // inputs.shape[1] * sync))

        return note_batch_size

    def _remove_bn_hooks(self) -> None:
        for handle in self._bn_hooks:
            handle.remove()
        self._bn_hooks = []

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if (
            self._bn_hooks
            and self._batch_sizes
            and all(len(s) >= _BN_CALLS_WATCHED for s in self._batch_sizes.values())
        ):
            self._judge_batch_sizes(trainer)
        if not self._frozen_checked:
            self._frozen_checked = True
            self._frozen = eval_frozen_subtrees(pl_module, trainer.optimizers)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bn_hooks and self._batch_sizes:
            self._judge_batch_sizes(trainer)  # short epochs: judge what was seen
        frozen, self._frozen = self._frozen, []
        for subtree in frozen:
            self._judge_eval_frozen(trainer, subtree)

    def _judge_batch_sizes(self, trainer: pl.Trainer) -> None:
        self._remove_bn_hooks()
        # the median (the upper one of an even count) of the first calls: one small last batch does not move it
        seen = {name: calls for name, calls in self._batch_sizes.items() if calls}
        samples = {name: statistics.median_high(n for n, _ in calls) for name, calls in seen.items()}
        values = {name: statistics.median_high(v for _, v in calls) for name, calls in seen.items()}
        tiny = [name for name in samples if samples[name] <= 1 or values[name] <= _FEW_VALUES]
        if not tiny:
            return
        where = describe_modules(tiny)
        size, count = max(samples[name] for name in tiny), max(values[name] for name in tiny)
        self.record(
            trainer,
            "mode.bn_tiny_batch",
            Severity.WARNING,
            f"BatchNorm layers {where} normalise training batches of {size} sample(s), {count} value(s) per channel "
            f"(median of their first {_BN_CALLS_WATCHED} training calls): each batch is normalised with statistics "
            "of itself alone, which the running statistics used in eval mode do not describe, so validation in eval "
            "mode falls below what training shows.",
            "Use GroupNorm/LayerNorm/InstanceNorm instead of BatchNorm, a larger batch per device (gradient "
            "accumulation does not help BatchNorm; SyncBatchNorm pools devices), or keep BatchNorm frozen in eval "
            "mode when fine-tuning with small batches.",
            subject=where,
            evidence={
                "modules": tiny[:_NAMES_SHOWN],
                "count": len(tiny),
                "batch_sizes": {name: samples[name] for name in tiny},
                "values_per_channel": {name: values[name] for name in tiny},
            },
        )

    def _judge_eval_frozen(self, trainer: pl.Trainer, subtree: EvalFrozen) -> None:
        """Did the weights of a subtree in eval mode move over the first epoch?"""
        now = Checksums.of(subtree.params)
        moved = subtree.before.changed(now)
        if not moved:
            return
        before, after = subtree.before.l2_norm(), now.l2_norm()
        change = abs(after - before) / before if before > 0 else math.inf
        where = f"`{subtree.name}`"
        frozen_what = (
            f"{len(subtree.mode_dependent)} mode-dependent layer(s) ({', '.join(subtree.mode_dependent[:3])}"
            f"{'...' if len(subtree.mode_dependent) > 3 else ''}) use frozen statistics/no dropout"
            if subtree.mode_dependent
            else "eval mode changes nothing in it"
        )
        dedicated = subtree.dedicated_groups
        self.record(
            trainer,
            "mode.eval_frozen_but_trained",
            Severity.INFO if dedicated else Severity.WARNING,
            f"{where} ({subtree.module_type}) is in eval mode during training, but only its mode is frozen: "
            f"{frozen_what}, while {len(moved)} of its {len(subtree.params)} weight tensors are trainable "
            f"(requires_grad=True) and updated by the optimizer: its weight norm changed by {change:.1%} over epoch "
            f"{trainer.current_epoch}"
            + (" (they have their own optimizer param group, so fine-tuning looks deliberate)." if dedicated else "."),
            "To freeze weights, call requires_grad_(False) on the module (and leave it out of the optimizer); "
            ".eval() only fixes BatchNorm statistics and disables dropout. If fine-tuning it is intended, give it its "
            "own param group (usually with a lower learning rate).",
            subject=subtree.name,
            evidence={
                "module": subtree.name,
                "moved_tensors": moved[:_NAMES_SHOWN],
                "moved_count": len(moved),
                "trainable_tensors": len(subtree.params),
                "relative_norm_change": change,
                "mode_dependent_frozen": subtree.mode_dependent[:_NAMES_SHOWN],
                "dedicated_param_groups": dedicated,
            },
        )

    # ---- evaluation side -------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stochastic_checked = False
        self._frozen_checked = False
        self._frozen = []
        self._watch_batch_sizes(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._stochastic_checked = False  # once per validate() run; within fit, once per fit
        self._start_eval_run(trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stochastic_checked = False
        self._start_eval_run(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_eval_run(trainer, pl_module)

    def _start_eval_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_eval_run()
        self._run = _EvalRun(mode_dependent_modules(pl_module))
        if not compat.is_compiled(pl_module):
            self._run.hooks = self._watch_grad_mode(pl_module)

    def _watch_grad_mode(self, pl_module: pl.LightningModule) -> list[RemovableHandle]:
        """Forward hooks on the LightningModule and its children noting whether autograd records the call."""

        def note_grad_mode(module: nn.Module, args: Any, output: Any) -> None:
            if self._run is not None and torch.is_grad_enabled():
                self._run.grad_enabled = True

        watched = [pl_module, *pl_module.children()]
        trainable = [m for m in watched if any(p.requires_grad for p in m.parameters())]
        return [m.register_forward_hook(note_grad_mode) for m in trainable]

    @override
    def on_eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: EvalSplit,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        self._eval_batch_start(trainer, pl_module, batch, batch_idx, check_stochastic=split != "predict")

    @override
    def on_eval_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        split: EvalSplit, dataloader_idx: int,
    ) -> None:  # fmt: skip
        self._eval_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_eval_run()

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_eval_run()

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_eval_run()

    @override
    def release(self) -> None:
        self._stop_eval_run()
        self._remove_bn_hooks()
        self._frozen = []

    def _stop_eval_run(self) -> None:
        if self._run is not None:
            for handle in self._run.hooks:
                handle.remove()
            if self._run.observer is not None:
                self._run.observer.close()
            if self._run.recorder is not None:
                self._run.recorder.close()
            self._run = None

    def _eval_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, *, check_stochastic: bool
    ) -> None:
        run = self._run
        if run is None:
            return
        in_training_mode = self._check_train_in_eval(trainer, run, batch_idx, "start")
        first = run.batches == 0
        if first:
            watched = named_parameters_to_watch(pl_module)
            run.params = Checksums.of(watched)
            run.running_stats = Checksums.of(named_running_stats(run.modules))
        stochastic = (
            check_stochastic
            and not in_training_mode
            and not self._stochastic_checked
            and not self.allow_stochastic_eval
        )
        self._stochastic_checked |= stochastic
        if not (first or stochastic) or not can_replay(trainer, pl_module):  # it walks every module
            return
        if first:
            # what a change of the weights seen at the end is replayed with: the weights before, the step's calls
            run.before = host_copies(watched)
            run.recorder = OutermostCalls(pl_module, self.stochastic_samples)
        if stochastic:
            if run.observer is not None:
                run.observer.close()
            run.stochastic_pending = True
            run.observer = StepObserver(pl_module)

    def _eval_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        run = self._run
        if run is None:
            return
        run.batches += 1
        call = None
        if run.observer is not None:
            run.observer.close()
            call, run.observer = run.observer.model_call, None
        if run.recorder is not None:
            run.recorder.close()
            run.first_calls, run.recorder = run.recorder.calls, None
        in_training_mode = self._check_train_in_eval(trainer, run, batch_idx, "end")
        last = _last_batch(trainer)
        # after the first batch only when the last batch of a loop of unknown length is never known
        if (dataloader_idx, batch_idx) == last or (run.batches == 1 and last is None):
            self._check_unchanged(trainer, pl_module, run)
        if run.stochastic_pending and not in_training_mode:
            self._check_stochastic_eval(trainer, pl_module, call)
        elif run.stochastic_pending:
            self._stochastic_checked = False  # the step put modules in training mode: try the next batch
        run.stochastic_pending = False
        if torch.is_grad_enabled() or any(t.requires_grad for t in output_tensors(outputs)):
            run.grad_enabled = True
        if run.grad_enabled:
            self._report_grad_in_eval(trainer)

    # ---- mode.train_in_eval ----------------------------------------------------------------

    def _check_train_in_eval(self, trainer: pl.Trainer, run: _EvalRun, batch_idx: int, when: str) -> bool:
        """Report mode-dependent modules in training mode; return whether any module is in training mode."""
        training = [m for m in run.modules if m.module.training]
        reported = [m for m in training if not (self.allow_stochastic_eval and m.kind in RANDOM_KINDS)]
        if reported:
            stage = stage_of(trainer)
            where = describe_modules([m.name for m in reported])
            self.record(
                trainer,
                "mode.train_in_eval",
                Severity.ERROR,
                f"{where} ({_kinds(reported)}) are in training mode during {stage} (seen at the {when} of batch "
                f"{batch_idx}): evaluation uses random dropout and per-batch BatchNorm statistics, and BatchNorm "
                "running statistics absorb the evaluation data.",
                "Remove .train() calls from validation/test/predict steps and hooks: Lightning puts the model in eval "
                "mode for evaluation and restores each module's mode afterwards. For intentional MC dropout pass "
                "ModeGuardCallback(allow_stochastic_eval=True).",
                subject=where,
                evidence={"modules": _listing(reported), "count": len(reported), "batch_idx": batch_idx, "when": when},
            )
        return bool(training)

    # ---- mode.bn_updated_in_eval / mode.params_changed_in_eval -----------------------------

    def _check_unchanged(self, trainer: pl.Trainer, pl_module: pl.LightningModule, run: _EvalRun) -> None:
        if run.params is not None:
            changed = run.params.changed(Checksums.of(named_parameters_to_watch(pl_module)))
            before, calls, run.before, run.first_calls = run.before, run.first_calls, {}, []
            replayed = bool(changed and before and calls)
            if replayed:
                # what is left once the forward's own re-parametrisation (re-masking) is explained
                changed = self._rewritten_by_forward(pl_module, calls, before, changed).unexplained
            if changed:
                self._report_changed(
                    trainer, "mode.params_changed_in_eval", "parameters", changed, run.batches, replayed=replayed
                )
        if run.running_stats is not None:
            changed = run.running_stats.changed(Checksums.of(named_running_stats(run.modules)))
            if changed:
                self._report_changed(trainer, "mode.bn_updated_in_eval", "running statistics", changed, run.batches)

    def _report_changed(
        self, trainer: pl.Trainer, code: str, what: str, tensors: list[str], batches: int, replayed: bool = False
    ) -> None:
        modules = owners(tensors)
        where = describe_modules(modules)
        stage = stage_of(trainer)
        if code == "mode.bn_updated_in_eval":
            hint = (
                "A normalization layer ran in training mode during evaluation (see mode.train_in_eval) or its buffers "
                "were written: keep evaluation in eval mode so the running statistics only learn from training data."
            )
        else:
            hint = (
                "Evaluation must not change weights: remove in-place parameter updates and optimizer steps from "
                "validation/test/predict steps and hooks (swap EMA weights in on_validation_start/end, not per batch)."
            )
        evidence: dict[str, Any] = {
            "tensors": tensors[:_NAMES_SHOWN],
            "tensor_count": len(tensors),
            "modules": modules[:_NAMES_SHOWN],
            "batches": batches,
        }
        replay = ""
        if code == "mode.params_changed_in_eval":
            evidence["forward_replayed"] = replayed
            if replayed:
                replay = " The model's forward, replayed on the weights from before, does not make this change."
        self.record(
            trainer,
            code,
            Severity.ERROR,
            f"The {what} of {where} changed during {stage}: {len(tensors)} tensor(s) differ after {batches} "
            f"{stage} batch(es) from their values before the first batch.{replay}",
            hint,
            subject=f"{stage}:{where}",
            evidence=evidence,
        )

    def _rewritten_by_forward(
        self,
        pl_module: pl.LightningModule,
        calls: Sequence[ForwardCall],
        before: dict[str, Tensor],
        changed: list[str],
    ) -> Replay:
        """Is the whole change of the ``changed`` weights what the model's forward does to them (re-masking)?

        The module calls of the run's first step (:class:`~lightning_sanity.eval_replay.OutermostCalls`, a few
        samples each) are replayed on private copies of every tensor of the model, the parameters set to their values
        before the first batch (``before``, consumed), RNG forked, modes untouched. The change is the forward's own
        re-parametrisation when the replay turns those weights into exactly the weights the run ended with, and a
        second replay leaves them there (a projection: masking, clamping, normalising; a forward that moves the
        weights on every call moves them again). A change made by the step or a hook (an optimizer step, a weight
        write in ``on_validation_batch_end``), wherever the masking happens, is not reproduced and stays
        unexplained. The user's tensors are never written (:func:`~lightning_sanity.isolation.private_state`); a
        replay that raises explains nothing.
        """
        live = {name: p.detach() for name, p in named_parameters_to_watch(pl_module)}
        if live.keys() != before.keys():
            return Replay(changed)  # parameters were added or removed: not a re-parametrisation
        try:
            with forked_rng(), torch.no_grad(), private_state(pl_module, before):
                for call in calls:
                    call.run()
                unexplained = set(other_values(pl_module, live))
                for call in calls:
                    call.run()
                unexplained.update(other_values(pl_module, live))
        except Exception:
            log.debug("ModeGuardCallback: replaying the step's forward calls failed", exc_info=True)
            return Replay(changed)
        return Replay([name for name in changed if name in unexplained])

    # ---- mode.grad_in_eval -----------------------------------------------------------------

    def _report_grad_in_eval(self, trainer: pl.Trainer) -> None:
        stage = stage_of(trainer)
        self.record(
            trainer,
            "mode.grad_in_eval",
            Severity.INFO,
            f"Autograd is enabled while the model runs during {stage}: every forward records a graph, wasting memory "
            "and time.",
            "Remove torch.set_grad_enabled(True)/torch.enable_grad() from the evaluation step (or wrap only the code "
            "that needs gradients) and keep Trainer(inference_mode=True).",
            subject=stage,
            evidence={"stage": stage, "grad_enabled": True},
        )

    # ---- mode.stochastic_eval --------------------------------------------------------------

    def _check_stochastic_eval(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, call: ForwardCall | None
    ) -> None:
        """Replay the step's forward call on a few samples twice, RNG forked. If the outputs differ, replay both
        passes again from the first one's RNG state while recording every module's activations: the replay rules out
        a stateful forward and the recording finds where the randomness starts (a healthy model pays no recording)."""
        if call is None:
            self._cannot_replay(trainer, "the step called neither the LightningModule nor one of its direct children")
            return
        args, kwargs = call.head(self.stochastic_samples)
        device = next((t.device for t in tensors_in((args, kwargs))), pl_module.device)
        if device.type not in ("cpu", "cuda"):
            return
        try:
            with forked_rng(), torch.no_grad(), private_state(pl_module):
                start = RngState(device)
                first = output_tensors(call.run(args, kwargs))
                second = output_tensors(call.run(args, kwargs))
                difference = relative_difference(first, second)
                if difference <= _DIFFERENT_OUTPUTS:
                    return
                start.restore()
                with ActivationRecorder(call.module) as recorder:
                    replay = output_tensors(call.run(args, kwargs))
                    call.run(args, kwargs)
        except Exception as error:  # the sliced replay may not fit the module: say so
            self._cannot_replay(trainer, f"replaying `{call.name or type(pl_module).__name__}` raised {error!r}")
            return
        if relative_difference(first, replay) > _SAME_OUTPUTS:
            log.debug("ModeGuardCallback: forward is not reproducible with the same RNG state (stateful?); skipped")
            return
        samples = call.head_size(self.stochastic_samples)
        sources = [(_qualified(call.name, name), kind) for name, kind in recorder.random_sources()]
        culprit = (
            f"the randomness starts in {', '.join(f'`{n or type(pl_module).__name__}` ({t})' for n, t in sources[:3])}"
            if sources
            else "the randomness comes from the model's forward"
        )
        self.record(
            trainer,
            "mode.stochastic_eval",
            Severity.ERROR,
            f"With every dropout/BatchNorm layer in eval mode, two forward passes of {samples} {stage_of(trainer)} "
            f"samples give different outputs (relative difference {difference:.3g}); {culprit}.",
            "Make evaluation deterministic: pass training=self.training to F.dropout/F.alpha_dropout, guard random "
            "sampling with `if self.training`. If the model is random on purpose (MC dropout, stochastic depth, VAE "
            "sampling), pass ModeGuardCallback(allow_stochastic_eval=True).",
            subject="forward",
            evidence={
                "relative_difference": difference,
                "samples": samples,
                "module": call.name or type(pl_module).__name__,
                "sources": [{"module": n, "type": t} for n, t in sources[:_NAMES_SHOWN]],
            },
        )

    def _cannot_replay(self, trainer: pl.Trainer, reason: str) -> None:
        self.record(
            trainer,
            "sanity.skipped",
            Severity.INFO,
            f"ModeGuardCallback could not run the mode.stochastic_eval check: {reason}.",
            "Call the model (`self(x)` or a direct child module such as `self.model(x)`) in the evaluation step so "
            "the check can replay that call on a few samples.",
            subject="mode.stochastic_eval",
            evidence={"reason": reason},
        )


def _qualified(prefix: str, name: str) -> str:
    """``name`` relative to the LightningModule, for a module named relative to its child ``prefix``."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _last_batch(trainer: pl.Trainer) -> tuple[int, int] | None:
    """``(dataloader_idx, batch_idx)`` of the running evaluation loop's last batch; ``None`` when its length is
    unknown."""
    if trainer.sanity_checking:
        counts = trainer.num_sanity_val_batches
    else:
        counts = {
            "val": trainer.num_val_batches,
            "test": trainer.num_test_batches,
            "predict": trainer.num_predict_batches,
        }.get(stage_of(trainer), [])
    with_batches = [(i, n) for i, n in enumerate(counts) if n > 0]
    if not with_batches or math.isinf(with_batches[-1][1]):
        return None
    last_loader, batches = with_batches[-1]
    return last_loader, int(batches) - 1


def _kinds(modules: Sequence[ModeDependent]) -> str:
    return "/".join(sorted({m.kind for m in modules}))


def _listing(modules: Sequence[ModeDependent]) -> list[str]:
    return [f"{m.name or '<root>'} ({type(m.module).__name__})" for m in modules[:_NAMES_SHOWN]]
