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
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from typing_extensions import override

from lightning_sanity import compat
from lightning_sanity.base import SanityCallback, is_int, require
from lightning_sanity.confusion import (
    NotClassification,
    activation_kind,
    class_scores,
    output_tensor,
    probability_loss_floor,
)
from lightning_sanity.findings import Severity
from lightning_sanity.observe import ForwardCall, StepObserver, can_replay, graph_activation, map_tensors, own_forward
from lightning_sanity.rng import forked_rng

log = logging.getLogger("lightning_sanity")

# Thresholds; the calibration behind each number is in docs/findings.md (ModelChecksCallback section).
MATCH_TOLERANCE = 2e-5
"""Relative distance between the returned loss and a recomputed standard loss that counts as the same loss (fp32)."""
MATCH_TOLERANCE_HALF = 1e-2
"""The same for outputs in bf16/fp16."""
INIT_LOSS_RATIO = 2.0
"""A class loss at step 0 this many times ln(C) (ln 2 per binary output) is far above an untrained model's."""
SAME_OUTPUT_TOLERANCE = 1e-6
"""Relative difference under which two samples' outputs (or parameter gradients) count as identical."""
SMOOTHINGS = (0.05, 0.1, 0.15, 0.2, 0.3)
"""Label smoothing values tried besides the ones set on a ``CrossEntropyLoss`` module of the model."""
LAYOUT_RATIO = 0.5
"""Images whose channels-last reading is this much smoother than their channels-first reading were reshaped from
channels-last arrays."""
LAYOUT_SAMPLES = 16
"""Images of the first batch compared for the layout check."""
PRIVATE_COPY_MAX_ELEMENTS = 1 << 24
"""Buffers and tensor attributes up to this size are copied for the pack's own passes (:func:`private_state`)."""


@dataclass(frozen=True)
class LossCandidate:
    """A standard loss recomputed from a step's outputs and targets.

    Attributes:
        name: ``cross_entropy``, ``nll``, ``nll_of_log``, ``bce_with_logits``, ``bce``, ``mse``, ``l1``, ``smooth_l1``.
        value: Its value.
        variant: How it was computed besides the defaults, e.g. ``"label_smoothing=0.1"``, ``"sum"``.
        broadcast_shape: For an elementwise loss on outputs and targets of different shapes, the shape they
            broadcast to; ``None`` when they were aligned.
    """

    name: str
    value: float
    variant: str = ""
    broadcast_shape: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        return f"{self.name}({self.variant})" if self.variant else self.name


_Kind = TypeVar("_Kind", int, float, str, Tensor)


def loss_attribute(owner: object, name: str, kind: type[_Kind]) -> _Kind | None:
    """``owner.name`` as a ``kind`` (``int``, ``float``, ``str`` or ``Tensor``), ``None`` when it is missing, ``None``,
    of another type, or raises on access.

    User losses and models carry attributes with values of their own (``ignore_index=None``, ``weight=None``, a
    property or ``__getattr__`` that raises anything): reading one must never fail a check. An ``int`` is not a
    ``bool``; a 0-d integer tensor reads as an ``int``, a 0-d floating tensor or an ``int`` as a ``float``; a float must
    be finite.

    Example::

        >>> loss = nn.CrossEntropyLoss(ignore_index=255)
        >>> loss.ignore_index = None  # e.g. segmentation_models_pytorch losses
        >>> loss_attribute(loss, "ignore_index", int), loss_attribute(loss, "label_smoothing", float)
        (None, 0.0)
    """
    try:
        value = getattr(owner, name)
    except Exception:  # a property or __getattr__ of the user's that raises: the attribute is unknown
        return None
    if isinstance(value, Tensor) and kind is not Tensor:
        if value.ndim != 0 or value.is_meta or value.is_complex() or (kind is int and value.is_floating_point()):
            return None
        value = value.item()
    if isinstance(value, bool):
        return None
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else None  # type: ignore[return-value]
    if kind is float:
        finite = isinstance(value, numbers.Real) and math.isfinite(float(value))
        return float(value) if finite else None  # type: ignore[return-value]
    return value if isinstance(value, kind) else None


@dataclass
class LossContext:
    """What the model sets for its loss: class weights, label smoothing and ignore indices found on it."""

    weights: list[tuple[str, Tensor]] = field(default_factory=list)
    smoothings: tuple[float, ...] = SMOOTHINGS
    ignore_indices: tuple[int, ...] = (-100,)
    modules: tuple[tuple[str, nn.Module], ...] = ()
    """The loss modules of the model by attribute name: losses of any kind, tried as they are
    (:func:`module_candidates`)."""

    @classmethod
    def of(cls, module: nn.Module) -> LossContext:
        """Collect them from loss modules and from float ``[C]`` buffers / tensor attributes (e.g. class weights).

        Attributes a loss does not set in a way ``F.cross_entropy`` accepts (``ignore_index=None``, a smoothing
        outside ``[0, 1)``) are left out: they cannot be what the loss was computed with.
        """
        weights: list[tuple[str, Tensor]] = []
        smoothings, ignores = list(SMOOTHINGS), [-100]
        losses = tuple((name, sub) for name, sub in module.named_modules() if isinstance(sub, compat.LOSS))
        for name, sub in losses:
            weight = loss_attribute(sub, "weight", Tensor)
            if weight is not None and _is_class_weights(weight, nonnegative=False):
                weights.append((f"{name}.weight", weight.detach()))
            smoothing = loss_attribute(sub, "label_smoothing", float)
            if smoothing is not None and 0 < smoothing < 1 and smoothing not in smoothings:
                smoothings.append(smoothing)
            ignore = loss_attribute(sub, "ignore_index", int)
            if ignore is not None and ignore not in ignores:
                ignores.append(ignore)
        # The module's own buffers and tensor attributes only: normalisation statistics of its layers are no weights.
        named = [*module.named_buffers(recurse=False)] + [
            (k, v) for k, v in vars(module).items() if isinstance(v, Tensor)
        ]
        for name, tensor in named:
            if _is_class_weights(tensor, nonnegative=True) and len(tensor) >= 2:
                weights.append((name, tensor.detach()))
        return cls(weights, tuple(smoothings), tuple(ignores), losses)


def _is_class_weights(tensor: Tensor, nonnegative: bool) -> bool:
    """A ``[C]`` floating tensor that can be read here (not meta, sparse or complex); ``nonnegative``: all ``>= 0``."""
    if tensor.ndim != 1 or not tensor.is_floating_point() or tensor.is_meta or tensor.layout != torch.strided:
        return False
    return not nonnegative or bool((tensor.detach() >= 0).all())


def _is_probability_rows(scores: Tensor, tolerance: float) -> bool:
    """Non-negative rows summing to 1 over at least 2 classes: softmax outputs."""
    return (
        len(scores) > 0
        and scores.shape[1] >= 2
        and bool((scores >= 0).all())
        and bool(torch.allclose(scores.sum(dim=1), torch.ones(len(scores), dtype=scores.dtype), atol=tolerance))
    )


def _is_log_probability_rows(scores: Tensor, tolerance: float) -> bool:
    return scores.shape[1] >= 2 and bool((scores <= 0).all()) and _is_probability_rows(scores.exp(), tolerance)


def _safe(compute: Callable[[], Tensor]) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(compute())
    except (RuntimeError, ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def class_candidates(scores: Tensor, flat: Tensor, context: LossContext) -> list[LossCandidate]:
    """Cross-entropy / NLL readings of ``[M, C]`` scores against ``[M]`` class indices."""
    found: list[LossCandidate] = []
    classes = scores.shape[1]
    weights = [("", None)] + [(name, w.to(scores)) for name, w in context.weights if len(w) == classes]

    def add(name: str, variant: str, loss_fn: Callable[..., Tensor], inputs: Tensor, **options: Any) -> None:
        value = _safe(lambda: loss_fn(inputs, flat, **options))
        if value is not None:
            found.append(LossCandidate(name, value, variant))

    log_scores = scores.clamp_min(1e-12).log() if bool((scores >= 0).all()) else None
    for ignore in context.ignore_indices:
        extra = "" if ignore == -100 else f"ignore_index={ignore}"
        for weight_name, weight in weights:
            variant = ",".join(v for v in (extra, f"weight={weight_name}" if weight_name else "") if v)
            add("cross_entropy", variant, F.cross_entropy, scores, weight=weight, ignore_index=ignore)
            add("nll", variant, F.nll_loss, scores, weight=weight, ignore_index=ignore)
            if log_scores is not None:
                add("nll_of_log", variant, F.nll_loss, log_scores, weight=weight, ignore_index=ignore)
            for smoothing in context.smoothings:
                smoothed = ",".join(v for v in (variant, f"label_smoothing={smoothing:g}") if v)
                options = {"weight": weight, "ignore_index": ignore, "label_smoothing": smoothing}
                add("cross_entropy", smoothed, F.cross_entropy, scores, **options)
        summed = ",".join(v for v in (extra, "sum") if v)
        add("cross_entropy", summed, F.cross_entropy, scores, ignore_index=ignore, reduction="sum")
    return found


def _elementwise(name: str, output: Tensor, target: Tensor) -> Tensor:
    if name == "bce_with_logits":
        return output.clamp_min(0) - output * target + torch.log1p(torch.exp(-output.abs()))
    if name == "bce":
        return -(target * output.log().clamp_min(-100) + (1 - target) * (1 - output).log().clamp_min(-100))
    if name == "mse":
        return (output - target) ** 2
    if name == "l1":
        return (output - target).abs()
    difference = (output - target).abs()  # smooth_l1 with beta=1 (= Huber with delta=1)
    return torch.where(difference < 1, 0.5 * difference**2, difference - 0.5)


def _safe_elementwise(name: str, output: Tensor, target: Tensor) -> Tensor | None:
    try:
        return _elementwise(name, output, target)
    except RuntimeError:
        return None


def _is_vector(tensor: Tensor) -> bool:
    """One value per sample: ``(N,)``, ``(N, 1)``, ``(N, 1, 1)``..."""
    return tensor.ndim >= 1 and tensor.shape[0] == tensor.numel()


def elementwise_candidates(output: Tensor, targets: Tensor) -> list[LossCandidate]:
    """BCE (with logits), MSE, L1 and smooth-L1 readings, on aligned shapes and, when they differ, as broadcast."""
    found: list[LossCandidate] = []
    target = targets.to(output.dtype)
    pairs: list[tuple[Tensor, Tensor, tuple[int, ...] | None]] = []
    if output.numel() == target.numel():
        pairs.append((output.reshape(target.shape), target, None))
    if output.shape != target.shape:
        try:
            shape = tuple(torch.broadcast_shapes(output.shape, target.shape))
        except RuntimeError:
            shape = None
        if shape is not None:
            pairs.append((output, target, shape))
        if target.ndim < output.ndim and _is_vector(target) and output.shape[0] == len(target) and output.shape[1] > 1:
            # One value per sample made a column (y.unsqueeze(1)) inside the step meets [N, C] outputs.
            column = target.reshape(-1, *([1] * (output.ndim - 1)))
            pairs.append((output, column, tuple(torch.broadcast_shapes(output.shape, column.shape))))
    elif _is_vector(output) and _is_vector(target) and output.numel() > 1:
        # Equal shapes in the batch, but the step may reshape one side: (N,) meeting (N, 1) inside training_step.
        count = output.numel()
        pairs.append((output.reshape(1, count), target.reshape(count, 1), (count, count)))
    probability_targets = bool(((target >= 0) & (target <= 1)).all())
    probability_outputs = bool(((output >= 0) & (output <= 1)).all())
    for out, tgt, shape in pairs:
        names = ["mse", "l1", "smooth_l1"]
        if probability_targets:
            names.append("bce_with_logits")
            if probability_outputs:
                names.append("bce")
        for name in names:
            losses = _safe_elementwise(name, out, tgt)
            if losses is None:
                continue
            for reduction, value in (("", losses.mean()), ("sum", losses.sum())):
                if math.isfinite(float(value)):
                    found.append(LossCandidate(name, float(value), reduction, shape))
    return found


def matching(candidates: Sequence[LossCandidate], loss: float, tolerance: float) -> list[LossCandidate]:
    """The candidates equal to ``loss`` within ``tolerance`` (relative, at least 1e-6 absolute)."""
    return [c for c in candidates if abs(c.value - loss) <= tolerance * max(abs(loss), 1e-2)]


@dataclass(frozen=True)
class LossReading:
    """What the step's returned loss is, read from its outputs and targets."""

    verdict: str
    """``activated`` (a logits loss on activated outputs), ``nll_of_probabilities``, ``broadcast`` or ``ok``."""
    matched: LossCandidate
    output_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    probabilities: str = ""
    """``softmax``, ``sigmoid`` or ``relu``: the activation the outputs went through."""
    correct_value: float | None = None
    """What the intended loss gives on the same outputs (NLL of their log / BCE / aligned shapes)."""
    init_loss: float | None = None
    """For a class loss read as intended: the mean negative log-likelihood of the targets..."""
    init_expected: float | None = None
    """...and what an untrained model gives: ln(C), or ln 2 per binary output."""
    prior_entropy: float | None = None
    num_classes: int | None = None


def reproduces_loss(output: Tensor, targets: Tensor, loss: float, context: LossContext) -> LossCandidate | None:
    """The standard loss on ``output`` and ``targets`` (see :func:`read_loss`) closest to ``loss``, ``None`` if none
    gives it: evidence that the user's step computed its loss from this very pair.

    Example::

        >>> logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
        >>> reproduces_loss(logits, labels, float(F.cross_entropy(logits, labels)), LossContext()).name
        'cross_entropy'
    """
    output = output.detach()
    tolerance = MATCH_TOLERANCE_HALF if output.dtype in (torch.float16, torch.bfloat16) else MATCH_TOLERANCE
    candidates, _ = _loss_candidates(output.float(), targets.detach(), context)
    matches = matching(candidates, loss, tolerance) or matching(
        module_candidates(output, targets.detach(), context), loss, tolerance
    )
    return min(matches, key=lambda c: abs(c.value - loss)) if matches else None


def module_candidates(output: Tensor, targets: Tensor, context: LossContext) -> list[LossCandidate]:
    """The model's own loss modules (e.g. a segmentation library's Dice, Jaccard or Focal loss) called on private
    copies of ``output`` and ``targets``: named by their class, with the attribute as variant.

    Each call runs in a forked RNG, without autograd, on private copies of the module's tensors
    (:func:`private_state`); a loss that fails on this pair, or returns no finite scalar, gives no candidate. Not
    under ``torch.distributed``: a loss that gathers across ranks would wait for ranks that make no such call.

    Example::

        >>> class Dice(nn.modules.loss._Loss):
        ...     def forward(self, logits, masks):
        ...         hit = (logits.softmax(1) * F.one_hot(masks, logits.shape[1]).movedim(-1, 1)).sum()
        ...         return 1 - 2 * hit / (2 * masks.numel())
        >>> holder = nn.Module()
        >>> holder.loss = Dice()
        >>> logits, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
        >>> [c.label for c in module_candidates(logits, masks, LossContext.of(holder))]
        ['Dice(self.loss)']
    """
    if not context.modules or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return []
    found: list[LossCandidate] = []
    for name, loss_module in context.modules:
        try:
            with forked_rng(), private_state(loss_module), own_forward(), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = loss_module(output.clone(), targets.clone())
                value = float(value) if isinstance(value, Tensor) and value.numel() == 1 else None
        except Exception:  # the user's loss on a pair it was not made for: not this pair
            log.debug("ModelChecksCallback: the loss module %s failed on a candidate pair", name, exc_info=True)
            continue
        if value is not None and math.isfinite(value):
            found.append(LossCandidate(type(loss_module).__name__, value, f"self.{name}"))
    return found


def _loss_candidates(
    output: Tensor, targets: Tensor, context: LossContext
) -> tuple[list[LossCandidate], tuple[Tensor, Tensor] | None]:
    """Every standard loss of ``output`` and ``targets``, and their class pairing when they are class scores."""
    class_pair: tuple[Tensor, Tensor] | None = None
    candidates: list[LossCandidate] = []
    if not targets.is_floating_point() and targets.dtype != torch.bool:
        try:
            class_pair = class_scores(output, targets)
        except NotClassification:
            class_pair = None
        if class_pair is not None and class_pair[0].shape[1] >= 2:
            candidates += class_candidates(class_pair[0], class_pair[1].long(), context)
        else:
            class_pair = None
    candidates += elementwise_candidates(output, targets.float() if targets.dtype == torch.bool else targets)
    return candidates, class_pair


def read_loss(
    output: Tensor, targets: Tensor, loss: float, context: LossContext, graph: str | None = None
) -> LossReading | None:
    """Identify the standard loss that gave ``loss`` on ``output`` and ``targets`` and judge how it reads them.

    ``graph``: the output's last op (:func:`~lightning_sanity.observe.graph_activation`) when ``output`` was detached
    from its graph. ``None`` when no standard loss matches, or several do with different verdicts.
    """
    graph = graph if graph is not None else graph_activation(output)
    output = output.detach()
    tolerance = MATCH_TOLERANCE_HALF if output.dtype in (torch.float16, torch.bfloat16) else MATCH_TOLERANCE
    output, targets = output.float(), targets.detach()
    candidates, class_pair = _loss_candidates(output, targets, context)
    matches = matching(candidates, loss, tolerance)
    readings = {_reading(m, output, targets, class_pair, tolerance, graph) for m in matches}
    verdicts = {reading.verdict for reading in readings}
    if len(verdicts) != 1:
        return None
    return min(readings, key=lambda r: abs(r.matched.value - loss))


def _activation(scores: Tensor, graph: str | None, tolerance: float) -> str | None:
    """:func:`~lightning_sanity.confusion.activation_kind` at step 0, where no training loss can confirm a value range:
    without a graph only softmax rows count."""
    kind = activation_kind(scores, graph, tolerance)
    return kind if graph is not None or kind == "softmax" else None


def _reading(
    matched: LossCandidate,
    output: Tensor,
    targets: Tensor,
    class_pair: tuple[Tensor, Tensor] | None,
    tolerance: float,
    graph: str | None,
) -> LossReading:
    def make(verdict: str, **details: Any) -> LossReading:
        return LossReading(verdict, matched, tuple(output.shape), tuple(targets.shape), **details)

    if matched.broadcast_shape is not None and math.prod(matched.broadcast_shape) > min(
        output.numel(), targets.numel()
    ):
        aligned = None
        if output.numel() == targets.numel():
            aligned = _safe(lambda: _elementwise(matched.name, output.reshape(targets.shape), targets.float()).mean())
        return make("broadcast", correct_value=aligned)
    if class_pair is not None and matched.name in ("cross_entropy", "nll", "nll_of_log"):
        scores, flat = class_pair
        valid = (flat >= 0) & (flat < scores.shape[1])
        scores, flat = scores[valid], flat[valid].long()
        kind = _activation(scores, graph, 10 * tolerance)
        probabilities = kind == "softmax"
        as_probabilities = _safe(lambda: F.nll_loss(scores.clamp_min(1e-12).log(), flat)) if probabilities else None
        if kind is not None and matched.name == "cross_entropy":
            return make("activated", probabilities=kind, correct_value=as_probabilities, num_classes=scores.shape[1])
        if probabilities and matched.name == "nll":
            return make("nll_of_probabilities", probabilities="softmax", correct_value=as_probabilities)
        if matched.name == "nll" and not _is_log_probability_rows(scores, 10 * tolerance):
            return make("ok")  # NLL on raw scores: not a loss we judge at init
        log_likelihood = {
            "cross_entropy": lambda: F.cross_entropy(scores, flat),
            "nll": lambda: F.nll_loss(scores, flat),
            "nll_of_log": lambda: F.nll_loss(scores.clamp_min(1e-12).log(), flat),
        }[matched.name]
        classes = scores.shape[1]
        prior = torch.bincount(flat, minlength=classes).float() / max(len(flat), 1)
        entropy = float(-(prior[prior > 0] * prior[prior > 0].log()).sum())
        return make(
            "ok",
            init_loss=_safe(log_likelihood),
            init_expected=math.log(classes),
            prior_entropy=entropy,
            num_classes=classes,
        )
    if matched.name == "bce_with_logits":
        kind = _activation(output.reshape(len(output), -1), graph, 10 * tolerance)
        if kind is not None:
            squashed = output.reshape(targets.shape)
            correct = None if kind == "relu" else _safe(lambda: _elementwise("bce", squashed, targets.float()).mean())
            return make("activated", probabilities=kind, correct_value=correct)
        rate = float(targets.float().mean().clamp(1e-6, 1 - 1e-6))
        entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
        plain = _safe(lambda: _elementwise("bce_with_logits", output.reshape(targets.shape), targets.float()).mean())
        return make("ok", init_loss=plain, init_expected=math.log(2), prior_entropy=entropy, num_classes=2)
    return make("ok")


@contextmanager
def private_state(root: nn.Module) -> Iterator[None]:
    """Run the pack's own calls of ``root`` (or of a loss module) on private copies of the tensors it holds.

    A forward may write its buffers (a queue, a counter, a cache, a metric's state) and re-bind attributes
    (``self.last = x``) even in eval mode. Inside the block every buffer and tensor attribute of every submodule is a
    clone, so such writes land on the copies; on exit the user's own tensors and attribute values are put back by
    assignment. Nothing the user's graph, batch, module or optimizer holds is written in place: an in-place restore
    bumps a tensor's version counter and breaks the backward of a graph that saved it (a BatchNorm saves its running
    statistics; with NaN inputs they are NaN, which compares unequal to itself, so "restore only what changed" would
    still write them). A tensor of more than :data:`PRIVATE_COPY_MAX_ELEMENTS` elements (a dataset kept on the
    module) or an uninitialised lazy one is left as it is: its identity is still restored.

    Example::

        with private_state(model), torch.no_grad():
            model(sample)  # a buffer the forward updates is updated on a copy
    """
    copies: dict[int, Tensor] = {}  # by id: a tensor held in two places gets one copy, so they stay one tensor

    def private(tensor: Tensor) -> Tensor:
        if is_lazy(tensor) or tensor.numel() > PRIVATE_COPY_MAX_ELEMENTS:
            return tensor
        if id(tensor) not in copies:
            copies[id(tensor)] = _private_copy(tensor)
        return copies[id(tensor)]

    saved: list[tuple[nn.Module, dict[str, Any], dict[str, Tensor | None], dict[str, Any]]] = []
    for module in root.modules():
        attributes = vars(module)
        buffers = dict(module._buffers)
        saved.append((module, dict(attributes), buffers, dict(module._parameters)))
        for name, buffer in buffers.items():
            if buffer is not None:
                module._buffers[name] = private(buffer)
        for name, value in list(attributes.items()):
            if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
                attributes[name] = private(value)
    try:
        yield
    finally:
        for module, attributes, buffers, parameters in saved:
            module._buffers.clear()
            module._buffers.update(buffers)
            module._parameters.clear()
            module._parameters.update(parameters)
            current = vars(module)
            for name in [name for name in current if name not in attributes]:
                del current[name]
            current.update(attributes)


def _private_copy(tensor: Tensor) -> Tensor:
    """A clone that shares no memory and no version counter with ``tensor``, a leaf requiring grad like it."""
    return tensor.detach().clone().requires_grad_(tensor.requires_grad)


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
    ``input.layout_scrambled`` (warning), ``model.batch_mixing`` (error), ``model.input_independent`` (error). The
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
            self._observer = StepObserver(pl_module)
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
        context = LossContext.of(pl_module)
        calls = [c for c in observer.calls if c.returned and c.name == ""] or [c for c in observer.calls if c.returned]
        for call in reversed(calls):
            output = output_tensor(call.output)
            if output is None or not output.is_floating_point() or output.ndim == 0:
                continue
            if parts.targets.ndim == 0 or output.shape[0] != parts.targets.shape[0]:
                continue  # not one output per sample: a loss module's result, or a flattened (N*L, C) view
            reading = read_loss(output, parts.targets, loss, context, call.activation(output))
            if reading is not None:
                self._judge_reading(trainer, reading, loss, call.name or type(pl_module).__name__)
                return

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
