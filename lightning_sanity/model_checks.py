"""Step-zero model checks: the first checks of a careful training recipe, run once before the first optimizer step.

On the first training batch the callback watches the user's own step (:class:`~lightning_sanity.observe.StepObserver`)
and, when the step's loss is about to be backpropagated, before any parameter changed:

1. identifies which standard loss produced the returned loss from the captured outputs and targets (cross-entropy on
   the outputs as logits, NLL on them or on their log, BCE with logits, BCE, MSE, L1, smooth L1; label smoothing,
   class weights found on the module, sum reduction). Logits losses computed on probabilities are
   ``output.activated``; elementwise losses whose outputs and targets broadcast to a bigger shape are
   ``target.shape``; a class loss far above ln(C) is ``loss.init_high``. When no candidate matches (custom losses),
   nothing is said.
2. re-runs the called module on a few samples in eval mode (forked RNG, modes restored, ``torch.autograd.grad`` only,
   so no parameter ``.grad`` and no optimizer is touched; buffers and tensor attributes are private copies for the
   re-run, :func:`private_state`) and backpropagates each sample's outputs to the inputs:
   a gradient reaching another sample's input is ``model.batch_mixing``; outputs, input gradients and parameter
   gradients identical for different inputs are ``model.input_independent``.
3. compares the images the model receives read as channels-first (as they are) and as channels-last: far smoother
   as channels-last is ``input.layout_scrambled`` (a channels-last array turned channels-first with ``reshape``).
4. judges the targets under the identified loss (:mod:`lightning_sanity.targets`): softmax cross-entropy on multi-hot
   targets is ``loss.softmax_multilabel``, regression targets far beyond the untrained outputs' scale are
   ``target.unscaled``, targets the model also receives as input (unshifted token labels, a label column) are
   ``data.target_in_input``.

The loss identification itself lives in :mod:`lightning_sanity.losses`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_sanity import compat
from lightning_sanity import run as sanity_run
from lightning_sanity.base import SanityCallback, is_int, require
from lightning_sanity.findings import Severity
from lightning_sanity.isolation import private_state
from lightning_sanity.losses import LossContext, LossReading, read_loss
from lightning_sanity.observe import ForwardCall, StepObserver, can_replay, map_tensors
from lightning_sanity.outputs import output_tensor, probability_loss_floor
from lightning_sanity.rng import forked_rng
from lightning_sanity.targets import named_tensors, softmax_multilabel, target_in_input, unscaled_targets
from lightning_sanity.task import decide_task, locate

log = logging.getLogger("lightning_sanity")

# Thresholds; the calibration behind each number is in docs/findings.md (ModelChecksCallback section).
INIT_LOSS_RATIO = 2.0
"""A class loss at step 0 this many times ln(C) (ln 2 per binary output) is far above an untrained model's."""
SAME_OUTPUT_TOLERANCE = 1e-6
"""Relative difference under which two samples' outputs (or parameter gradients) count as identical."""
LAYOUT_RATIO = 0.5
"""Images whose channels-last reading is this much smoother than their channels-first reading were reshaped from
channels-last arrays."""
LAYOUT_SAMPLES = 16
"""Images of the first batch compared for the layout check."""


# ---- image layout ---------------------------------------------------------------------------------------------


def _standardised(images: Tensor) -> Tensor:
    """Each channel of ``[N, C, H, W]`` images shifted and scaled to mean 0, std 1 over the batch."""
    images = images.float()
    return (images - images.mean((0, 2, 3), keepdim=True)) / (images.std((0, 2, 3), keepdim=True) + 1e-6)


def _roughness(images: Tensor) -> float:
    """Mean absolute difference between neighbouring pixels."""
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return float(horizontal + vertical)


def layout_ratio(images: Tensor) -> float | None:
    """How much smoother ``[N, C, H, W]`` images get when their memory is read as channels-last ``[N, H, W, C]``.

    A channels-last array turned channels-first with ``reshape`` instead of ``permute`` puts interleaved R, G, B values
    of a band of rows in each "channel"; reading the memory back as channels-last restores the real image, which is
    far smoother (ratio well below 1). For correctly laid-out images that reading scrambles them (ratio >= 1), for
    noise or feature maps without spatial structure both readings are alike (ratio about 1). ``None`` when the tensor
    is not a batch of 3- or 4-channel images of at least 8x8.

    Example::

        >>> rgb = torch.linspace(0, 1, 32).repeat(4, 32, 1)[..., None].expand(4, 32, 32, 3)
        >>> layout_ratio(rgb.permute(0, 3, 1, 2)) > 1, layout_ratio(rgb.reshape(4, 3, 32, 32)) < 0.5
        (True, True)
    """
    if images.ndim != 4 or not images.is_floating_point() or images.shape[1] not in (3, 4) or len(images) < 2:
        return None
    batch, channels, height, width = images.shape
    if height < 8 or width < 8:
        return None
    # Both readings are of the same channel-standardised memory: per-channel offsets and scales (Normalize constants,
    # a collapsed input) must not make one reading look smoother than the other.
    images = _standardised(images.detach()[:LAYOUT_SAMPLES])
    observed = _roughness(images)
    if not math.isfinite(observed) or observed == 0:
        return None
    channels_last = images.reshape(len(images), height, width, channels).permute(0, 3, 1, 2)
    return _roughness(channels_last) / observed


# ---- dependence on the input, and across samples ------------------------------------------------------------------


@dataclass
class Probe:
    """One re-run of the called module on ``samples`` samples, sliced along ``batch_dim`` of its inputs."""

    batch_dim: int
    samples: int
    output_dim: int | None = None
    pairwise: bool = False
    leak: float = 0.0
    """Largest share of one sample's input-gradient mass that reached the other samples' inputs."""
    leaking_sample: int | None = None
    substitution_change: float = 0.0
    """Relative change of other samples' outputs when one sample's integer/bool inputs are replaced."""
    input_gradient: float = 0.0
    output_spread: float = 0.0
    inputs_differ: bool = False
    parameter_gradients_identical: bool | None = None
    mixes_after: str | None = None
    """The last layer whose output gradient still leaks across samples: the mixing happens after it..."""
    mixes_before: str | None = None
    """...and before this layer, the first afterwards whose output gradient stays within the sample."""

    @property
    def mixes(self) -> bool:
        return not self.pairwise and (self.leak > 0 or self.substitution_change > SAME_OUTPUT_TOLERANCE)

    @property
    def input_independent(self) -> bool:
        return (
            self.inputs_differ
            and self.input_gradient == 0
            and self.output_spread <= SAME_OUTPUT_TOLERANCE
            and self.parameter_gradients_identical is not False
        )


class _Sliced:
    """The recorded call's arguments cut to a few samples; float batch tensors become leaves requiring grad."""

    def __init__(self, call: ForwardCall, batch_size: int, batch_dim: int, index: Tensor) -> None:
        self.leaves: list[tuple[Tensor, int]] = []
        self.discrete: list[tuple[Tensor, int]] = []
        self.batch_size, self.batch_dim, self.index = batch_size, batch_dim, index
        self.args, self.kwargs = map_tensors((call.args, call.kwargs), self._cut)

    def _dim_of(self, tensor: Tensor) -> int | None:
        for dim in (self.batch_dim, 0):
            if tensor.ndim > dim and tensor.shape[dim] == self.batch_size:
                return dim
        return None

    def _cut(self, tensor: Tensor) -> Tensor:
        dim = self._dim_of(tensor)
        if dim is None:
            return tensor
        cut = tensor.index_select(dim, self.index.to(tensor.device))
        if cut.is_floating_point() or cut.is_complex():
            cut = cut.detach().requires_grad_(True)
            self.leaves.append((cut, dim))
        else:
            self.discrete.append((cut, dim))
        return cut

    def inputs_differ(self) -> bool:
        for tensor, dim in self.leaves + self.discrete:
            first = tensor.select(dim, 0)
            if any(not torch.equal(first, tensor.select(dim, i)) for i in range(1, tensor.shape[dim])):
                return True
        return False


def _output_dim(output: Tensor, samples: int, batch_dim: int) -> int | None:
    for dim in (batch_dim, 0):
        if output.ndim > dim and output.shape[dim] == samples:
            return dim
    return None


def _relative_spread(output: Tensor, dim: int) -> float:
    first = output.select(dim, 0).unsqueeze(dim)
    scale = float(output.abs().max()) + 1e-12
    return float((output - first).abs().max()) / scale


def probe_call(call: ForwardCall, batch_dim: int, samples: int) -> Probe | None:
    """Re-run ``call`` on ``samples`` samples and measure mixing across them and dependence on the input.

    Run it in eval mode inside a forked RNG; parameter ``.grad`` is never written (``torch.autograd.grad`` only).
    ``None`` when the call has no batch along ``batch_dim`` or its output has no matching batch dimension.
    """
    tensors = call.tensors()
    first = next((t for t in tensors if t.ndim > batch_dim), None)
    if first is None or first.shape[batch_dim] < 2:
        return None
    batch_size = first.shape[batch_dim]
    samples = min(samples, batch_size)
    index = torch.arange(samples)
    sliced = _Sliced(call, batch_size, batch_dim, index)
    activations = _Activations(call.module, samples)
    try:
        with torch.enable_grad():
            output = output_tensor(call.run(sliced.args, sliced.kwargs))
    finally:
        activations.remove()
    if output is None or not output.is_floating_point() or output.ndim == 0:
        return None
    output_dim = _output_dim(output, samples, batch_dim)
    if output_dim is None:
        return None
    probe = Probe(batch_dim, samples, output_dim, pairwise=output.ndim >= 2 and output.shape[:2] == (samples, samples))
    probe.inputs_differ = sliced.inputs_differ()
    probe.output_spread = _relative_spread(output.detach().float(), output_dim)
    weights = torch.randn(output.shape, dtype=output.dtype, device=output.device)
    leaves = [leaf for leaf, _ in sliced.leaves]
    if leaves and output.requires_grad:
        gradients = torch.autograd.grad((output * weights).sum(), leaves, allow_unused=True, retain_graph=True)
        probe.input_gradient = max((float(g.abs().max()) for g in gradients if g is not None), default=0.0)
        if probe.input_gradient > 0 and not probe.pairwise:
            _measure_leak(probe, output, weights, sliced)
            if probe.leak > 0:
                _locate_mixing(probe, output, weights, activations)
    if sliced.discrete and not probe.pairwise:
        probe.substitution_change = _substitution_change(call, sliced, output.detach(), output_dim)
    if probe.input_gradient == 0 and probe.output_spread <= SAME_OUTPUT_TOLERANCE and probe.inputs_differ:
        probe.parameter_gradients_identical = _parameter_gradients_identical(call.module, output, weights, output_dim)
    return probe


def _measure_leak(probe: Probe, output: Tensor, weights: Tensor, sliced: _Sliced) -> None:
    assert probe.output_dim is not None
    leaves = [leaf for leaf, _ in sliced.leaves]
    for sample in range(probe.samples):
        own_output = (output * weights).select(probe.output_dim, sample).sum()
        if not own_output.requires_grad:
            continue
        gradients = torch.autograd.grad(own_output, leaves, allow_unused=True, retain_graph=True)
        own = other = 0.0
        for gradient, (_, dim) in zip(gradients, sliced.leaves, strict=True):
            if gradient is None:
                continue
            magnitude = gradient.detach().abs().float()
            own += float(magnitude.select(dim, sample).sum())
            magnitude.select(dim, sample).zero_()  # not total - own: its rounding error would look like a leak
            other += float(magnitude.sum())
        share = other / (own + other) if own + other > 0 else 0.0
        if share > probe.leak:
            probe.leak, probe.leaking_sample = share, sample


class _Activations:
    """Outputs of every layer of ``root`` during one pass that carry the ``samples`` samples along dim 0 or 1."""

    def __init__(self, root: nn.Module, samples: int) -> None:
        self.samples = samples
        self.recorded: list[tuple[str, Tensor, int]] = []
        self.handles = [
            module.register_forward_hook(self._recorder(name)) for name, module in root.named_modules() if name
        ]

    def _recorder(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.is_floating_point() and output.requires_grad:
                dim = next((d for d in (0, 1) if output.ndim > d and output.shape[d] == self.samples), None)
                if dim is not None:
                    self.recorded.append((name, output, dim))

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _locate_mixing(probe: Probe, output: Tensor, weights: Tensor, activations: _Activations) -> None:
    """Name the layers around the mixing: after the last layer whose output gradient (from the leaking sample's
    outputs) reaches other samples, before the next one whose output gradient stays within the sample."""
    if probe.leaking_sample is None or probe.output_dim is None or not activations.recorded:
        return
    own_output = (output * weights).select(probe.output_dim, probe.leaking_sample).sum()
    tensors = [tensor for _, tensor, _ in activations.recorded]
    gradients = torch.autograd.grad(own_output, tensors, allow_unused=True, retain_graph=True)
    leaky: list[bool] = []
    for (_, _, dim), gradient in zip(activations.recorded, gradients, strict=True):
        if gradient is None:
            leaky.append(False)
            continue
        others = gradient.detach().abs().clone()
        others.select(dim, probe.leaking_sample).zero_()
        leaky.append(bool(others.sum() > 0))
    names = [name for name, _, _ in activations.recorded]
    last = max((i for i, is_leaky in enumerate(leaky) if is_leaky), default=None)
    start = 0 if last is None else last + 1
    probe.mixes_after = None if last is None else names[last]
    probe.mixes_before = next((names[i] for i in range(start, len(names)) if not leaky[i]), None)


def _substitution_change(call: ForwardCall, sliced: _Sliced, output: Tensor, output_dim: int) -> float:
    """Replace sample 0's integer/bool inputs by another sample's and measure how much the other outputs move."""
    donor = next(
        (
            i
            for i in range(1, sliced.index.numel())
            if any(not torch.equal(t.select(d, 0), t.select(d, i)) for t, d in sliced.discrete)
        ),
        None,
    )
    if donor is None:
        return 0.0
    replaced = {id(t): _replace_first(t, d, donor) for t, d in sliced.discrete}
    args, kwargs = map_tensors((sliced.args, sliced.kwargs), lambda t: replaced.get(id(t), t))
    with torch.no_grad():
        changed = output_tensor(call.run(args, kwargs))
    if changed is None or changed.shape != output.shape:
        return 0.0
    others = torch.arange(1, output.shape[output_dim], device=output.device)
    before, after = output.index_select(output_dim, others).float(), changed.index_select(output_dim, others).float()
    return float((after - before).abs().max()) / (float(before.abs().max()) + 1e-12)


def _replace_first(tensor: Tensor, dim: int, donor: int) -> Tensor:
    replaced = tensor.clone()
    replaced.select(dim, 0).copy_(tensor.select(dim, donor))
    return replaced


def _parameter_gradients_identical(module: nn.Module, output: Tensor, weights: Tensor, dim: int) -> bool | None:
    """Do samples 0 and 1 give the same parameter gradients (same output weights)? ``None`` without trainable ones.

    A zero-initialised head makes every output equal at step 0, but its weight gradient still carries each sample's
    features: the model does use its input and learns to show it.
    """
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters or not output.requires_grad:
        return None
    first_weights = weights.select(dim, 0)
    gradients = [
        torch.autograd.grad(
            (output.select(dim, sample) * first_weights).sum(), parameters, allow_unused=True, retain_graph=True
        )
        for sample in (0, 1)
    ]
    scale = max((float(g.abs().max()) for g in gradients[0] if g is not None), default=0.0) + 1e-12
    for first, second in zip(*gradients, strict=True):
        if (first is None) != (second is None):
            return False
        if (
            first is not None
            and second is not None
            and float((first - second).abs().max()) / scale > SAME_OUTPUT_TOLERANCE
        ):
            return False
    return True


def _try_probe(call: ForwardCall, batch_dim: int, samples: int) -> Probe | None:
    """:func:`probe_call`, or ``None`` when the model cannot run on the cut inputs (e.g. dim 1 is not a batch)."""
    try:
        return probe_call(call, batch_dim, samples)
    except Exception:  # the user's forward on inputs cut along a dimension it does not accept
        log.debug(
            "ModelChecksCallback: re-running %s on inputs cut along dim %d failed", call.name, batch_dim, exc_info=True
        )
        return None


def _mixes_by_design(module: nn.Module) -> bool:
    """BatchNorm without running statistics normalises with the batch's statistics in eval mode too, on purpose."""
    return any(isinstance(m, compat.BATCH_NORM) and not m.track_running_stats for m in module.modules())


def _activated_story(reading: LossReading, evidence: dict[str, Any], culprit: str, correct: str) -> tuple[str, str]:
    """What a logits loss on activated outputs does, and the fix, for a softmax, a sigmoid or a ReLU."""
    kind, loss_name = reading.probabilities, reading.matched.name
    head = (
        f"the loss {evidence['returned_loss']:.4f} equals {loss_name} on the `{culprit}` outputs as logits "
        f"({reading.matched.value:.4f}), but"
    )
    if kind == "relu":
        what = (
            f"{head} the last op of `{culprit}` is a ReLU: every negative logit is cut to 0, so the loss cannot "
            "push a wrong class below 0 and gets no gradient from the clipped ones"
        )
        return what, "Remove the final ReLU from forward: logits losses expect raw, signed scores."
    if kind == "sigmoid" and loss_name == "cross_entropy":
        classes = reading.num_classes or 2
        floor = probability_loss_floor(classes)
        evidence["loss_floor"] = floor
        what = (
            f"{head} the last op of `{culprit}` is a sigmoid: every logit is squashed into [0, 1], so softmax can "
            f"never be confident and the loss cannot go below ln({classes - 1} + e) - 1 = {floor:.3f}"
        )
        hint = (
            "Remove the sigmoid from forward and keep cross_entropy (a sigmoid per class belongs to multi-label "
            "training with binary_cross_entropy_with_logits)."
        )
        return what, hint
    reading_name = "NLL of their log" if kind == "softmax" else "BCE on them"
    what = (
        f"{head} those outputs are already {kind} probabilities ({reading_name}: {correct}): the {kind} is applied "
        "twice and gradients are squashed"
    )
    hint = (
        "Return raw logits from forward (remove the final softmax/sigmoid) and keep the loss, or keep the "
        "probabilities and use NLL of their log / binary_cross_entropy."
    )
    return what, hint


class ModelChecksCallback(SanityCallback):
    """Check the model once, at step zero, before the first optimizer step: which loss is really optimised and how it
    reads outputs and targets, the loss at initialisation, samples mixing inside a batch, outputs ignoring the input.

    Findings: ``output.activated`` (warning), ``target.shape`` (warning), ``loss.init_high`` (warning),
    ``input.layout_scrambled`` (warning), ``model.batch_mixing`` (error), ``model.input_independent`` (error),
    ``loss.softmax_multilabel`` (error), ``target.unscaled`` (warning), ``data.target_in_input`` (error). The
    extra work is a bounded number of passes on ``samples`` samples in eval mode: 1 forward + (1 + ``samples``)
    backward (to the inputs), 1 more forward with integer inputs, 2 parameter-gradient backward passes only when
    outputs look input-independent, 1 backward to locate mixing when found, and the same again along dim 1 only when
    dim 0 mixes (sequence-first inputs). With manual optimisation the loss is not read.

    Args:
        samples: How many samples of the first batch to re-run (2-16).
        allow_batch_mixing: The model mixes samples in ``forward`` by design (set models, batch-level attention):
            skip ``model.batch_mixing``.
        strict: Raise on the first ERROR finding.
        batch_adapter: ``batch -> (inputs, targets)`` for batches we cannot read (targets feed the loss reading).

    Example::

        trainer = Trainer(callbacks=[ModelChecksCallback(allow_batch_mixing=True)])
        trainer.fit(model, datamodule)
    """

    name: ClassVar[str] = "model_checks"
    batch_checks: ClassVar[str] = "the step-0 loss reading (loss.*, target.unscaled, data.target_in_input)"

    def __init__(
        self,
        *,
        samples: int = 4,
        allow_batch_mixing: bool = False,
        strict: bool = False,
        batch_adapter: Callable[[Any], Any] | None = None,
        figure_every_n_epochs: int = 5,
        save_dir: str | None = None,
    ) -> None:
        super().__init__(
            strict=strict, batch_adapter=batch_adapter, figure_every_n_epochs=figure_every_n_epochs, save_dir=save_dir
        )
        require(is_int(samples) and 2 <= samples <= 16, "samples", "an int in [2, 16]", samples)
        require(isinstance(allow_batch_mixing, bool), "allow_batch_mixing", "a bool", allow_batch_mixing)
        self.samples = samples
        self.allow_batch_mixing = allow_batch_mixing
        self._observer: StepObserver | None = None
        self._batch: Any = None
        self._done = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._done = False

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._close()
        if not self._done and trainer.global_step == 0:
            self._observer = StepObserver(pl_module, keep_child_outputs=True)  # the candidates ConfusionCallback reads
            self._batch = batch

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        observer = self._observer
        if observer is None:
            return
        observer.close()
        observer.note_loss(trainer, loss)
        self._done = True
        try:
            self._check(trainer, pl_module, observer)
        finally:
            self._close()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._close()  # a step without backward (it returned None): try the next batch while no step was taken

    @override
    def release(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._observer is not None:
            self._observer.close()
        self._observer, self._batch = None, None

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, observer: StepObserver) -> None:
        call = observer.model_call
        if call is None:
            log.debug("ModelChecksCallback: the first training step called no module we watch; skipped")
            return
        if observer.loss is not None and pl_module.automatic_optimization:
            self._check_loss(trainer, pl_module, observer, observer.loss)
        self._check_layout(trainer, pl_module, call)
        if can_replay(trainer, pl_module):
            self._check_dependence(trainer, pl_module, call)

    # ---- the image layout ------------------------------------------------------------------------------------------

    def _check_layout(self, trainer: pl.Trainer, pl_module: pl.LightningModule, call: ForwardCall) -> None:
        images = next((t for t in call.tensors() if t.ndim == 4 and t.is_floating_point()), None)
        ratio = None if images is None else layout_ratio(images)
        if images is None or ratio is None or ratio >= LAYOUT_RATIO:
            return
        channels, height, width = images.shape[1:]
        self.record(
            trainer,
            "input.layout_scrambled",
            Severity.WARNING,
            f"At step 0, the {tuple(images.shape)} images given to `{call.name or type(pl_module).__name__}` are "
            f"{1 / ratio:.1f}x smoother read as channels-last ({height}, {width}, {channels}) arrays than as the "
            f"channels-first tensor they are: they were turned channels-first with reshape/view instead of permute, "
            "so each channel holds interleaved R, G, B values of a band of rows.",
            "Use array.transpose(2, 0, 1) / tensor.permute(0, 3, 1, 2) (or transforms.ToTensor()) to move the channel "
            "axis; reshape/view only relabels the memory.",
            subject="inputs",
            evidence={
                "roughness_ratio": ratio,
                "shape": list(images.shape),
                "samples": min(len(images), LAYOUT_SAMPLES),
            },
        )

    # ---- the loss -------------------------------------------------------------------------------------------------

    def _check_loss(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, observer: StepObserver, loss_tensor: Tensor
    ) -> None:
        parts = self.split_batch(trainer, self._batch)
        if parts is None or parts.targets is None:
            return
        loss = float(loss_tensor)
        if not math.isfinite(loss):
            return
        task = sanity_run.task_of(trainer)
        if task is None:  # the first to decide the run's task publishes it; later readers take it from the run
            task = decide_task(observer, self._batch, parts, loss, LossContext.of(pl_module))
            task = sanity_run.publish_task(trainer, task) if task is not None else None
        located = locate(task.pairing, observer, self._batch, parts) if task and task.pairing else None
        if located is None:
            return
        output, targets, call = located
        if targets.ndim == 0 or output.shape[0] != targets.shape[0]:
            return  # not one output per sample: a loss module's result, or a flattened (N*L, C) view
        returned = output_tensor(call.output) if call is not None else None
        graph = call.activation(returned) if call is not None and returned is not None else None
        reading = read_loss(output, targets, loss, LossContext.of(pl_module), graph)
        call = call or observer.model_call
        if reading is None or call is None:
            return
        culprit = call.name or type(pl_module).__name__
        self._judge_reading(trainer, reading, loss, culprit)
        inputs = [(name, parts.select(tensor)) for name, tensor in named_tensors(call.args, call.kwargs)]
        for verdict in (
            softmax_multilabel(reading, loss, culprit),
            unscaled_targets(reading, output, targets, loss, culprit),
            target_in_input(reading, inputs, output, targets, loss, culprit),
        ):
            if verdict is not None:
                self.record(
                    trainer,
                    verdict.code,
                    verdict.severity,
                    verdict.message,
                    verdict.hint,
                    subject=verdict.subject,
                    evidence=verdict.evidence,
                )

    def _judge_reading(self, trainer: pl.Trainer, reading: LossReading, loss: float, culprit: str) -> None:
        evidence: dict[str, Any] = {
            "returned_loss": loss,
            "identified_loss": reading.matched.label,
            "identified_value": reading.matched.value,
            "output_shape": list(reading.output_shape),
            "target_shape": list(reading.target_shape),
        }
        if reading.verdict in ("activated", "nll_of_probabilities"):
            self._report_activated(trainer, reading, evidence, culprit)
        elif reading.verdict == "broadcast":
            self._report_broadcast(trainer, reading, evidence)
        elif reading.init_loss is not None and reading.init_expected is not None:
            self._judge_init(trainer, reading, evidence)

    def _report_activated(
        self, trainer: pl.Trainer, reading: LossReading, evidence: dict[str, Any], culprit: str
    ) -> None:
        evidence.update(activation=reading.probabilities, as_probabilities=reading.correct_value)
        correct = f"{reading.correct_value:.4f}" if reading.correct_value is not None else "n/a"
        if reading.verdict == "nll_of_probabilities":
            what = (
                f"the loss {evidence['returned_loss']:.4f} is NLL computed directly on the `{culprit}` outputs, which "
                "are probabilities (non-negative, rows sum to 1): NLL expects log-probabilities (NLL of their log: "
                f"{correct})"
            )
            hint = "Take the log before NLLLoss (torch.log(probs) or log_softmax in forward), or return logits and use "
            hint += "cross_entropy."
        else:
            what, hint = _activated_story(reading, evidence, culprit, correct)
        self.record(
            trainer,
            "output.activated",
            Severity.WARNING,
            f"At step 0, {what}.",
            hint,
            subject="train_step",
            evidence=evidence,
        )

    def _report_broadcast(self, trainer: pl.Trainer, reading: LossReading, evidence: dict[str, Any]) -> None:
        assert reading.matched.broadcast_shape is not None
        evidence.update(broadcast_shape=list(reading.matched.broadcast_shape), aligned_value=reading.correct_value)
        output_shape, target_shape = reading.output_shape, reading.target_shape
        if output_shape == target_shape:
            expected = f"outputs and targets of the same shape {output_shape}"
            effect = "every output is compared with every target: the step reshaped one side, so that (N,) met (N, 1)"
        elif math.prod(output_shape) == math.prod(target_shape):
            expected = f"outputs and targets of the same shape {output_shape}"
            effect = f"every output is compared with every target ({reading.matched.broadcast_shape})"
        else:
            expected = f"targets shaped like the outputs {output_shape} (one value per output)"
            effect = f"each target is compared with all {output_shape[-1]} outputs of its row"
        self.record(
            trainer,
            "target.shape",
            Severity.WARNING,
            f"At step 0, the loss is {reading.matched.name} on outputs {output_shape} and targets {target_shape}, "
            f"which broadcast to {reading.matched.broadcast_shape}: {effect}; {reading.matched.name} expects "
            f"{expected}. A regressor trained like this learns only the mean.",
            "Make the shapes equal before the loss: target.view_as(output) / output.squeeze(-1); for class indices "
            "use cross_entropy on C logits instead of a regression loss.",
            subject="loss",
            evidence=evidence,
        )

    def _judge_init(self, trainer: pl.Trainer, reading: LossReading, evidence: dict[str, Any]) -> None:
        assert reading.init_loss is not None and reading.init_expected is not None
        ratio = reading.init_loss / reading.init_expected
        if ratio <= INIT_LOSS_RATIO:
            return
        evidence.update(
            initial_loss=reading.init_loss,
            expected_at_init=reading.init_expected,
            prior_entropy=reading.prior_entropy,
            ratio=ratio,
            num_classes=reading.num_classes,
        )
        per = "ln(C)" if reading.num_classes and reading.matched.name != "bce_with_logits" else "ln 2 per output"
        self.record(
            trainer,
            "loss.init_high",
            Severity.WARNING,
            f"At step 0 the loss ({reading.matched.name}) is {reading.init_loss:.3f}, {ratio:.1f}x what an untrained "
            f"model gives ({per} = {reading.init_expected:.3f}; class-prior entropy {reading.prior_entropy:.3f}): "
            "the initial outputs are confidently wrong.",
            "Check the initialisation (no normal_(std=1) on every layer: keep PyTorch's defaults or use "
            "kaiming/xavier; a small or zero-initialised last layer), any scale factor on the logits, and that the "
            "targets match the inputs.",
            subject="loss",
            evidence=evidence,
        )

    # ---- dependence on the input -----------------------------------------------------------------------------

    def _check_dependence(self, trainer: pl.Trainer, pl_module: pl.LightningModule, call: ForwardCall) -> None:
        if call.rows_indexed():  # a graph's nodes with its edge_index: not independent samples to cut and compare
            log.debug("ModelChecksCallback: another argument of `%s` indexes its rows; no per-sample probe", call.name)
            return
        modes = {module: module.training for module in pl_module.modules()}
        first: Probe | None = None
        mixing: Probe | None = None
        try:
            pl_module.eval()
            with forked_rng(), private_state(pl_module):
                for batch_dim in (0, 1):
                    probe = _try_probe(call, batch_dim, self.samples)
                    if probe is None:
                        continue
                    if first is None:
                        first = probe
                        if probe.input_independent:
                            break
                    if not probe.mixes or self.allow_batch_mixing or _mixes_by_design(call.module):
                        mixing = None
                        break
                    mixing = mixing or probe
        finally:
            for module, training in modes.items():
                module.training = training  # the exact flags, without running user overrides of train()
        culprit = call.name or type(pl_module).__name__
        if first is not None and first.input_independent:
            self._report_input_independent(trainer, first, culprit)
        elif mixing is not None:
            self._report_mixing(trainer, mixing, culprit)

    def _report_input_independent(self, trainer: pl.Trainer, probe: Probe, culprit: str) -> None:
        self.record(
            trainer,
            "model.input_independent",
            Severity.ERROR,
            f"At step 0, `{culprit}` gives the same outputs for {probe.samples} different inputs: the gradient of its "
            "outputs with respect to the inputs is exactly zero and every parameter gets the same gradient from each "
            "sample, so the model cannot learn to use its input.",
            "Find where forward drops the input: an input multiplied by 0 or replaced by a constant/buffer, "
            "x.detach()/torch.no_grad() around the first layers, a wrong variable passed on; or every unit dead "
            "(e.g. ReLU after a huge negative bias).",
            subject=culprit,
            evidence={
                "samples": probe.samples,
                "input_gradient_abs_max": probe.input_gradient,
                "output_relative_spread": probe.output_spread,
                "parameter_gradients_identical": probe.parameter_gradients_identical,
            },
        )

    def _report_mixing(self, trainer: pl.Trainer, probe: Probe, culprit: str) -> None:
        where = ""
        if probe.mixes_after and probe.mixes_before:
            where = f", after `{probe.mixes_after}` and before `{probe.mixes_before}`"
        elif probe.mixes_after:
            where = f", after `{probe.mixes_after}`"
        elif probe.mixes_before:
            where = f", before `{probe.mixes_before}`"
        how = (
            f"{probe.leak:.1%} of the input gradient of sample {probe.leaking_sample}'s outputs lands on the other "
            "samples' inputs"
            if probe.leak > 0
            else f"replacing one sample's integer inputs changes the other samples' outputs by "
            f"{probe.substitution_change:.3g} (relative)"
        )
        self.record(
            trainer,
            "model.batch_mixing",
            Severity.ERROR,
            f"At step 0, in eval mode, the samples of a batch leak into each other's outputs in `{culprit}`{where}: "
            f"{how} (it must be exactly zero).",
            "Look for a view/reshape that moves the batch dimension ((seq, batch, feat) flattened as (batch, seq, "
            "feat): use permute/transpose), a mean/softmax/normalisation over dim 0, an attention mask without the "
            "batch dimension, or batch_first=False on batch-first inputs. A model that mixes samples by design (set "
            "models): ModelChecksCallback(allow_batch_mixing=True).",
            subject=culprit,
            evidence={
                "samples": probe.samples,
                "batch_dim": probe.batch_dim,
                "leaked_gradient_share": probe.leak,
                "leaking_sample": probe.leaking_sample,
                "substitution_change": probe.substitution_change,
                "mixes_after": probe.mixes_after,
                "mixes_before": probe.mixes_before,
            },
        )
