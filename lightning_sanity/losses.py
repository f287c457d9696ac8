"""Loss identification: which standard loss a step's returned loss is, read from the step's outputs and targets.

:func:`read_loss` recomputes every standard loss of a captured output and target (cross-entropy on the outputs as
logits, NLL on them or on their log, BCE with logits, BCE, MSE, L1, smooth L1; label smoothing, class weights and
ignore indices found on the model, sum reduction; the model's own loss modules) and keeps the one that gives the
returned value: the evidence the step-zero checks (:mod:`lightning_sanity.model_checks`) and the pairing of
:class:`~lightning_sanity.ConfusionCallback` judge from.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sanity import compat
from lightning_sanity.isolation import private_state
from lightning_sanity.observe import graph_activation, own_forward
from lightning_sanity.outputs import NotClassification, activation_kind, class_scores
from lightning_sanity.rng import forked_rng

log = logging.getLogger("lightning_sanity")

# Thresholds; the calibration behind each number is in docs/findings.md (ModelChecksCallback section).
MATCH_TOLERANCE = 2e-5
"""Relative distance between the returned loss and a recomputed standard loss that counts as the same loss (fp32)."""
MATCH_TOLERANCE_HALF = 1e-2
"""The same for outputs in bf16/fp16."""
SMOOTHINGS = (0.05, 0.1, 0.15, 0.2, 0.3)
"""Label smoothing values tried besides the ones set on a ``CrossEntropyLoss`` module of the model."""


@dataclass(frozen=True)
class LossCandidate:
    """A standard loss recomputed from a step's outputs and targets.

    Attributes:
        name: ``cross_entropy``, ``nll``, ``nll_of_log``, ``soft_cross_entropy`` (float targets over the classes),
            ``bce_with_logits``, ``bce``, ``mse``, ``l1``, ``smooth_l1``.
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
            pos_weight = loss_attribute(sub, "pos_weight", Tensor)
            if pos_weight is not None and _is_class_weights(pos_weight, nonnegative=True):
                weights.append((f"{name}.pos_weight", pos_weight.detach()))
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


ELEMENTWISE_LOSSES = ("mse", "l1", "smooth_l1", "bce_with_logits", "bce")


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


def positive_weight_candidates(output: Tensor, targets: Tensor, context: LossContext) -> list[LossCandidate]:
    """BCE-with-logits readings of ``[N, C]`` logits against same-shaped targets in ``[0, 1]`` with each ``[C]``
    weight of the model as ``pos_weight`` (the usual remedy for rare labels: a buffer passed to
    ``F.binary_cross_entropy_with_logits(..., pos_weight=...)``, or a ``BCEWithLogitsLoss(pos_weight=...)``).

    Example::

        >>> logits, targets, weight = torch.randn(8, 3), torch.randint(0, 2, (8, 3)).float(), torch.tensor([1.0, 2, 5])
        >>> value = float(F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight))
        >>> context = LossContext(weights=[("pos_weight", weight)])
        >>> [c.variant for c in positive_weight_candidates(logits, targets, context) if abs(c.value - value) < 1e-6]
        ['pos_weight=pos_weight']
    """
    if output.ndim < 2 or output.shape != targets.shape or not output.is_floating_point() or targets.is_complex():
        return []
    target = targets.to(output.dtype)
    if not bool(((target >= 0) & (target <= 1)).all()):
        return []
    found = []
    for name, weight in context.weights:
        if len(weight) != output.shape[-1]:
            continue
        positive = weight.to(output)
        value = _safe(lambda: F.binary_cross_entropy_with_logits(output, target, pos_weight=positive))  # noqa: B023
        if value is not None:
            found.append(LossCandidate("bce_with_logits", value, f"pos_weight={name}"))
    return found


def soft_target_candidates(output: Tensor, targets: Tensor) -> list[LossCandidate]:
    """Softmax cross-entropy of ``output`` (logits, class dimension 1) against float targets of the same shape in
    ``[0, 1]``: ``F.cross_entropy`` with probability targets, or NLL of ``log_softmax`` written by hand (the same
    value: ``log_softmax`` of log-probabilities gives them back). Averaged over rows (the default), summed, or averaged
    over every element (``-(y * log_softmax(x)).mean()``).

    Example::

        >>> logits, soft = torch.randn(8, 3), torch.randn(8, 3).softmax(dim=1)
        >>> value = float(F.cross_entropy(logits, soft))
        >>> [c.label for c in soft_target_candidates(logits, soft) if abs(c.value - value) < 1e-6]
        ['soft_cross_entropy']
    """
    if output.ndim < 2 or output.shape != targets.shape or output.shape[1] < 2 or targets.is_complex():
        return []
    target = targets.to(output.dtype)
    if not bool(((target >= 0) & (target <= 1)).all()):
        return []
    rows = -(target * output.log_softmax(dim=1)).sum(dim=1)
    found = []
    for variant, value in (("", rows.mean()), ("sum", rows.sum()), ("per_element", rows.mean() / output.shape[1])):
        if math.isfinite(float(value)):
            found.append(LossCandidate("soft_cross_entropy", float(value), variant))
    return found


def multi_hot_rows(targets: Tensor) -> tuple[int, int, int] | None:
    """``(rows, rows with 2 or more positives, rows that are not one-hot)`` of ``[N, C, ...]`` targets (class dimension
    1) whose values are all 0 or 1; ``None`` for other targets (soft labels, smoothing, mixup).

    Example::

        >>> multi_hot_rows(torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]]))
        (3, 1, 2)
        >>> multi_hot_rows(torch.tensor([[0.9, 0.05, 0.05]])) is None
        True
    """
    if targets.ndim < 2 or targets.shape[1] < 2 or targets.numel() == 0:
        return None
    target = targets.detach().float()
    if not bool(((target == 0) | (target == 1)).all()):
        return None
    positives = target.movedim(1, -1).reshape(-1, target.shape[1]).sum(dim=1)
    return len(positives), int((positives >= 2).sum()), int((positives != 1).sum())


def matching(candidates: Sequence[LossCandidate], loss: float, tolerance: float) -> list[LossCandidate]:
    """The candidates equal to ``loss`` within ``tolerance`` (relative, at least 1e-6 absolute)."""
    return [c for c in candidates if abs(c.value - loss) <= tolerance * max(abs(loss), 1e-2)]


@dataclass(frozen=True)
class LossReading:
    """What the step's returned loss is, read from its outputs and targets."""

    verdict: str
    """``activated`` (a logits loss on activated outputs), ``nll_of_probabilities``, ``broadcast``, ``multilabel``
    (softmax cross-entropy on multi-hot targets) or ``ok``."""
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
    multi_hot: tuple[int, int, int] | None = None
    """For ``multilabel``: :func:`multi_hot_rows` of the targets."""


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

        >>> class Dice(compat.LOSS[0]):
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
    candidates += soft_target_candidates(output, targets)
    candidates += positive_weight_candidates(output, targets, context)
    return candidates, class_pair


def read_loss(
    output: Tensor, targets: Tensor, loss: float, context: LossContext, graph: str | None = None
) -> LossReading | None:
    """Identify the standard loss that gave ``loss`` on ``output`` and ``targets`` and judge how it reads them.

    ``graph``: the output's last op (:func:`~lightning_sanity.observe.graph_activation`) when ``output`` was detached
    from its graph. ``None`` when no standard loss matches, or several do with different verdicts; except that an
    elementwise loss read both aligned and broadcast (every output against every target) reads as aligned: on targets
    far from the outputs their common offset dominates both values, which the loss then cannot tell apart, and that
    offset is the finding (``target.unscaled``).
    """
    graph = graph if graph is not None else graph_activation(output)
    output = output.detach()
    tolerance = MATCH_TOLERANCE_HALF if output.dtype in (torch.float16, torch.bfloat16) else MATCH_TOLERANCE
    output, targets = output.float(), targets.detach()
    candidates, class_pair = _loss_candidates(output, targets, context)
    matches = matching(candidates, loss, tolerance)
    readings = {_reading(m, output, targets, class_pair, tolerance, graph) for m in matches}
    verdicts = {reading.verdict for reading in readings}
    if verdicts == {"ok", "broadcast"} and all(r.matched.name in ELEMENTWISE_LOSSES for r in readings):
        readings, verdicts = {r for r in readings if r.verdict == "ok"}, {"ok"}
    if len(verdicts) != 1:
        return None
    return min(readings, key=lambda r: abs(r.matched.value - loss))


def _activation(scores: Tensor, graph: str | None, tolerance: float) -> str | None:
    """:func:`~lightning_sanity.outputs.activation_kind` at step 0, where no training loss can confirm a value range:
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
    if matched.name == "soft_cross_entropy":
        rows = multi_hot_rows(targets)
        if rows is None or rows[1] == 0:
            return make("ok")  # distributions over the classes (one-hot, smoothed, mixed): what softmax models
        per_label = _safe(lambda: _elementwise("bce_with_logits", output, targets.float()).mean())
        return make("multilabel", correct_value=per_label, multi_hot=rows, num_classes=output.shape[1])
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
