"""Output interpretation: what a model's or a step's output holds, read as class scores against targets.

Where the predictions are in an output (a tensor, a dict key, ``.logits``, a tuple's first element), how ``[N, C]``,
``[N, C, H, W]`` and ``[N, L, C]`` scores line up with their targets, which class each row predicts, and which
activation scores used as logits went through. Read by :class:`~lightning_sanity.ConfusionCallback` on every
evaluation batch and by the loss identification of :mod:`lightning_sanity.losses` at step zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_sanity.observe import ForwardCall, StepObserver

OUTPUT_KEYS = ("logits", "preds", "y_hat", "outputs")
"""Keys of a step's returned dict that hold the predictions."""

# Thresholds; the calibration behind each number is in docs/findings.md (ConfusionCallback section).
RELU_ZERO_FRACTION = 0.05
"""Share of exact zeros in non-negative logits that reveals a ReLU (a linear head never hits 0.0 exactly)."""
PROBABILITY_NLL_RATIO = 0.7
"""Outputs whose NLL as probabilities is this far below the floor would have let a probability loss go below it."""


class ClassPredictions(NamedTuple):
    """Predicted and true class per element, flattened; ``valid`` masks ignored targets."""

    predicted: Tensor
    targets: Tensor
    valid: Tensor
    num_classes: int


class NotClassification(ValueError):
    """The outputs and targets of a batch are not class scores and class indices."""


def class_scores(output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
    """Align ``output`` with ``targets`` as ``([M, C] scores, [M] targets)``, ``None`` if their shapes do not fit.

    The class dimension is dim 1 (the ``CrossEntropyLoss`` convention: ``[N, C]``, ``[N, C, H, W]``) or the last
    one (``[N, L, C]`` token classification). An output shaped like its targets is a single-logit head (``C = 1``).

    Raises:
        NotClassification: on multi-label targets (``[N, C]`` multi-hot), which this callback does not judge.

    Example::

        >>> scores, flat = class_scores(torch.zeros(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
        >>> tuple(scores.shape), tuple(flat.shape)
        ((32, 5), (32,))
    """
    if output.ndim == 0 or targets.ndim == 0 or output.shape[0] != targets.shape[0] or output.numel() == 0:
        return None
    if output.ndim == targets.ndim + 1:
        if output.shape[2:] == targets.shape[1:]:
            return output.movedim(1, -1).reshape(-1, output.shape[1]), targets.reshape(-1)
        if output.shape[1:-1] == targets.shape[1:]:
            return output.reshape(-1, output.shape[-1]), targets.reshape(-1)
        return None
    if output.shape == targets.shape:
        if output.ndim == 2 and output.shape[1] > 1:
            raise NotClassification(f"multi-label outputs and targets of shape {tuple(output.shape)}")
        return output.reshape(-1, 1), targets.reshape(-1)
    if output.ndim == targets.ndim and output.shape[-1] == 1 and output.shape[:-1] == targets.shape[:-1]:
        return output.reshape(-1, 1), targets.reshape(-1)
    return None


def class_predictions(
    scores: Tensor, targets: Tensor, num_classes: int | None, ignore_index: int | None
) -> ClassPredictions:
    """Predicted class per row of ``scores`` (argmax; a single logit is thresholded at 0, integers are classes)."""
    if not scores.is_floating_point():
        if num_classes is None:
            raise NotClassification("the step returned class indices; pass num_classes to the callback")
        predicted, classes = scores[:, 0].long(), num_classes
    elif scores.shape[1] == 1:
        predicted, classes = (scores[:, 0] > 0).long(), 2
    else:
        predicted, classes = scores.argmax(dim=1), scores.shape[1]
    if num_classes is not None and scores.is_floating_point() and scores.shape[1] > 1 and num_classes != classes:
        raise NotClassification(f"the outputs have {classes} classes but num_classes={num_classes}")
    targets = targets.long()
    valid = (targets >= 0) & (targets < classes)
    if not scores.is_floating_point():  # an argmax or a threshold is always a class
        valid &= (predicted >= 0) & (predicted < classes)
    if ignore_index is not None:
        valid &= targets != ignore_index
    return ClassPredictions(predicted, targets, valid, classes)


def activation_kind(scores: Tensor, graph: str | None = None, tolerance: float = 1e-3) -> str | None:
    """Name the activation that ``[M, C]`` scores used as logits went through: softmax, sigmoid, relu or ``None``.

    ``graph`` is :func:`~lightning_sanity.observe.graph_activation` of the tensor the scores come from: with a
    graph, its last op decides (exact), and values add only rows summing to 1 (a hand-written softmax; raw logits
    never do that). Without one, values decide: probabilities are non-negative and sum to 1 per row (softmax) or lie
    in [0, 1] without exact zeros (sigmoid); ReLU outputs are non-negative with many exact zeros and some positive
    values. Rows that are all alike (an all-zero head, outputs ignoring the input) show no activation. Sigmoid and
    ReLU read from values are weak evidence that needs the training loss to confirm it
    (:func:`is_logit_loss_on_probabilities`).

    Example::

        >>> activation_kind(torch.randn(64, 3).softmax(dim=1)), activation_kind(torch.randn(64, 3))
        ('softmax', None)
        >>> activation_kind(torch.zeros(64, 3)), activation_kind(torch.rand(64, 1) * 0.1, graph="")
        (None, None)
    """
    if graph in ("sigmoid", "softmax", "relu"):
        return graph
    scores = scores.detach().float()
    if scores.numel() == 0 or not bool(torch.isfinite(scores).all()) or float(scores.min()) < 0:
        return None
    if scores.shape[1] > 1 and bool(torch.allclose(scores.sum(dim=1), torch.ones(len(scores)), atol=tolerance)):
        return "softmax"
    if graph is not None or bool((scores == scores[0]).all()):
        return None
    zero_share = float((scores == 0).float().mean())
    if zero_share > 0:
        relu = zero_share >= RELU_ZERO_FRACTION and float((scores > 0).float().mean()) >= RELU_ZERO_FRACTION
        return "relu" if relu else None
    return "sigmoid" if float(scores.max()) <= 1 else None


def not_class_indices(scores: Tensor, targets: Tensor, ignore_index: int | None) -> str | None:
    """Why non-empty ``targets`` aligned with ``[M, C]`` ``scores`` are not class indices (real numbers, complex
    values, a single output against targets above 1), ``None`` if they can be. A host read.

    Example::

        >>> not_class_indices(torch.zeros(4, 1), torch.tensor([0, 1, 2, 3]), None)
        'a single output but targets up to 3'
    """
    if targets.is_floating_point():
        if not bool(torch.equal(targets, targets.round())):
            return f"targets are real numbers (dtype {targets.dtype})"
    elif targets.dtype.is_complex:
        return f"targets have dtype {targets.dtype}"
    if scores.shape[1] == 1 and scores.is_floating_point():
        high = int(targets.max())
        ignored = {ignore_index} if ignore_index is not None else set()
        if high > 1 and high not in ignored and high not in (255,):
            return f"a single output but targets up to {high}"
    return None


def is_logit_loss_on_probabilities(lowest_train_loss: float, probability_nll: float, floor: float) -> bool:
    """The training loss never went below the floor of a logit loss on probabilities, although the outputs read as
    probabilities are confident enough (NLL well below that floor) that a probability loss would have."""
    return lowest_train_loss >= floor - 1e-4 and probability_nll <= PROBABILITY_NLL_RATIO * floor


def probability_loss_floor(num_classes: int) -> float:
    """The smallest loss a logit loss can reach on probabilities in [0, 1]: ``CE(p, y) >= ln(C - 1 + e) - 1``.

    Reached with 1 for the target and 0 elsewhere, whether the C columns are softmax rows or C sigmoids; for one
    sigmoid output fed to ``BCEWithLogitsLoss`` (C = 2) it is ``ln(1 + 1/e)``. A model that really returns
    probabilities to a probability loss (NLL of log, BCELoss) goes below it once it learns.
    """
    return math.log(num_classes - 1 + math.e) - 1.0


def output_tensor(output: Any) -> Tensor | None:
    """The prediction tensor in a step's or forward's output: a tensor, a dict key, a ``.logits`` attribute, or the
    first element of a tuple."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        return next((output[k] for k in OUTPUT_KEYS if isinstance(output.get(k), Tensor)), None)
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def reconstructs_input(output: Tensor, call: ForwardCall, targets: Tensor) -> bool:
    """Is ``output`` of ``call`` a reconstruction of its input rather than class scores (an autoencoder)?

    A flat ``[N, D]`` output shaped like a floating input of the same call, whose D columns are more than the
    classes the targets use (a host read: call it on check steps only). A tabular classifier with as many features
    as classes still has its targets spanning its D columns.
    """
    if output.ndim != 2 or not output.is_floating_point() or targets.numel() == 0 or targets.is_floating_point():
        return False
    shaped_like_input = any(t.is_floating_point() and t.shape == output.shape for t in call.tensors())
    return shaped_like_input and int(targets.max()) + 1 < output.shape[1]


def model_graph(observer: StepObserver | None, scores: Tensor, targets: Tensor) -> str | None:
    """The last op of the model's output (:func:`~lightning_sanity.observe.graph_activation`) when that output is
    where ``scores`` came from (same aligned shape); ``None`` without a graph (evaluation runs under no_grad)."""
    call = observer.model_call if observer is not None else None
    output = output_tensor(call.output) if call is not None else None
    if call is None or output is None:
        return None
    try:
        aligned = class_scores(output, targets)
    except NotClassification:
        return None
    return call.activation(output) if aligned is not None and aligned[0].shape == scores.shape else None


def scored_outputs(outputs: Any, observer: StepObserver | None) -> list[tuple[str, Any, ForwardCall | None]]:
    """Candidate predictions of a step with their source: the step's output, the top-level calls (the module itself
    first, then its direct children, the last one first: a head after a backbone), then the outputs of the children
    that ``forward`` called, the last one first."""
    calls = [call for call in observer.calls if call.returned] if observer is not None else []
    observed = [*(call for call in calls if call.name == ""), *(call for call in reversed(calls) if call.name)]
    nested = [*reversed(observer.child_outputs)] if observer is not None else []
    return [
        ("step", outputs, None),
        *((f"call:{call.name}", call.output, call) for call in observed),
        *((f"child:{index}", output, None) for index, output in enumerate(nested)),
    ]
