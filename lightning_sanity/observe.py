"""What the user's own step passed to the model and what the model returned: the shared observation layer.

A :class:`StepObserver` watches one training/evaluation step. It records the top-level forward calls the step makes:
calls of the LightningModule itself, or, for a LightningModule without its own ``forward`` whose step calls
``self.model(...)``, calls of its direct children. For each call it keeps a private copy of the arguments (positional
and keyword), the detached output, and which module was called. Extra forward passes that a sanity check runs itself
are wrapped in :func:`own_forward` and never recorded. Hooks live only while the observer is open: :meth:`close` (or
leaving the ``with`` block) removes them, also when the step raised.

Callbacks that need a step's model inputs/outputs reuse this instead of registering their own forward hooks.

Example::

    observer = StepObserver(pl_module)  # in on_train_batch_start
    ...  # the user's training_step runs self(x)
    observer.close()  # in on_before_backward / on_train_batch_end / on_exception
    call = observer.model_call
    if call is not None:
        print(call.name, [tuple(t.shape) for t in call.tensors()], type(call.output))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchmetrics import Metric

from lightning_sanity import compat

_own_depth = 0


@contextmanager
def own_forward() -> Iterator[None]:
    """Mark the forward passes run inside this block as the pack's own: no :class:`StepObserver` records them.

    Example::

        with own_forward(), torch.no_grad():
            outputs = pl_module(sample)
    """
    global _own_depth
    _own_depth += 1
    try:
        yield
    finally:
        _own_depth -= 1


def is_own_forward() -> bool:
    """Is a forward pass of the pack itself running (inside :func:`own_forward`)?"""
    return _own_depth > 0


def can_replay(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether the pack may run extra forward passes of ``pl_module``: not under sharded strategies (FSDP, DeepSpeed
    run collectives inside ``forward``, which the other ranks would not join) nor on compiled models (a sliced
    replay would trigger a recompilation)."""
    return isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)) and not compat.is_compiled(pl_module)


def map_tensors(value: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples, lists and mappings; other values are kept as they are."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(item, fn) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(item, fn) for item in value)
    return value


def tensors_in(value: Any) -> list[Tensor]:
    """Every tensor in nested tuples, lists and mappings, in order."""
    found: list[Tensor] = []
    map_tensors(value, found.append)
    return found


def dataloader_label(split: str, key: int | str = 0) -> str:
    """The one name of a dataloader in findings, reports, figures and logged scalars.

    The first (or only) dataloader of a split is the split itself; evaluation dataloaders after it carry
    Lightning's own suffix (the one in the keys it logs for several dataloaders); a named dataloader (a key of a
    dict of training dataloaders) carries its name.

    Example::

        dataloader_label("val")  # "val"
        dataloader_label("val", 1)  # "val/dataloader_idx_1"
        dataloader_label("train", "images")  # "train/images"
    """
    if isinstance(key, str):
        return f"{split}/{key}"
    return split if key == 0 else f"{split}/dataloader_idx_{key}"


GRAPH_ACTIVATIONS = {"SigmoidBackward0": "sigmoid", "SoftmaxBackward0": "softmax", "ReluBackward0": "relu"}
"""Autograd nodes of the activations that must not come before a logits loss."""
_GRAPH_PASS_THROUGH = (
    "View", "UnsafeView", "Reshape", "Squeeze", "Unsqueeze", "Permute", "Transpose", "TBackward", "Clone", "Expand",
    "Slice", "Select", "Alias", "ToCopy", "Unbind", "Split",
)  # fmt: skip
"""Prefixes of autograd nodes that only move, cut or cast values: the activation before them is still the output's."""


def graph_activation(output: Tensor) -> str | None:
    """The last op that made ``output``, read from its autograd graph through view, reshape, slice and cast nodes.

    ``"sigmoid"``, ``"softmax"`` or ``"relu"`` for those activations, ``""`` for any other op (a linear layer, an
    addition, a log_softmax), ``None`` when ``output`` has no graph (computed under ``no_grad``, or a leaf): then only
    its values can tell.

    Example::

        >>> import torch
        >>> logits = torch.nn.Linear(3, 2)(torch.randn(4, 3))
        >>> graph_activation(logits.sigmoid().squeeze()), graph_activation(logits), graph_activation(logits.detach())
        ('sigmoid', '', None)
    """
    node = output.grad_fn
    while node is not None:
        name = node.name()
        if name in GRAPH_ACTIVATIONS:
            return GRAPH_ACTIVATIONS[name]
        parents = [parent for parent, _ in node.next_functions if parent is not None]
        if not name.startswith(_GRAPH_PASS_THROUGH) or len(parents) != 1:
            return ""
        node = parents[0]
    return None


@dataclass
class ForwardCall:
    """One top-level forward call made by the user's step.

    Attributes:
        module: The module that was called (the LightningModule or one of its direct children).
        name: Its attribute name: ``""`` for the LightningModule itself, e.g. ``"model"`` for a child.
        args: Private (cloned, detached) copies of the positional arguments (detached views with ``copy_args=False``).
        kwargs: Private copies of the keyword arguments.
        output: What the call returned, tensors detached; ``None`` until the call returned (or if it raised).
        returned: Whether the call has finished.
        activations: :func:`graph_activation` of each returned tensor, read before it was detached, by ``id`` of
            its detached copy in ``output`` (use :meth:`activation`).
    """

    module: nn.Module
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None
    returned: bool = False
    activations: dict[int, str | None] = field(default_factory=dict)

    def activation(self, tensor: Tensor) -> str | None:
        """:func:`graph_activation` of ``tensor`` (a tensor of ``output``) when it was returned; ``None`` if unknown."""
        return self.activations.get(id(tensor))

    def tensors(self) -> list[Tensor]:
        """The tensors among the arguments, positional first."""
        return tensors_in((self.args, self.kwargs))

    def batch_size(self) -> int | None:
        """Dim 0 of the first tensor argument with a dim: the batch size, if the call has one."""
        return next((tensor.shape[0] for tensor in self.tensors() if tensor.ndim > 0), None)

    def rows_indexed(self) -> bool:
        """Whether an argument indexes into the batch's rows, which then are not independent samples: an integer
        tensor that does not have one row per sample (dim 0 is not the batch size) and whose values point at rows
        beyond the first, e.g. a graph's ``edge_index`` into its node features, or a gather index into a table.

        Example::

            >>> import torch
            >>> nodes, edges = torch.randn(5, 3), torch.tensor([[0, 1, 4], [1, 4, 0]])
            >>> ForwardCall(torch.nn.Identity(), "", (nodes, edges), {}).rows_indexed()
            True
            >>> ids, lengths = torch.randint(0, 100, (5, 7)), torch.tensor([7, 3, 5, 2, 6])
            >>> ForwardCall(torch.nn.Identity(), "", (ids, lengths), {}).rows_indexed()
            False
        """
        batch_size = self.batch_size()
        if batch_size is None or batch_size < 2:
            return False
        for tensor in self.tensors():
            integer = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
            if integer and tensor.ndim > 0 and tensor.shape[0] != batch_size and tensor.numel() > 0:
                largest = int(tensor.max())
                if 0 < largest < batch_size and int(tensor.min()) >= 0:
                    return True
        return False

    def head(self, samples: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The recorded arguments cut to their first ``samples`` samples, to replay the call cheaply.

        The batch size is dim 0 of the first tensor argument; only tensors whose dim 0 is that size are sliced (a
        mask, a lookup table or a scalar is passed as it is). When another argument indexes into those rows
        (:meth:`rows_indexed`: a graph's nodes with its ``edge_index``), the rows are one sample together: nothing
        is cut and the call is replayed whole.
        """
        batch_size = self.batch_size()
        if batch_size is None or self.rows_indexed():
            return self.args, self.kwargs

        def cut(tensor: Tensor) -> Tensor:
            return tensor[:samples] if tensor.ndim > 0 and tensor.shape[0] == batch_size else tensor

        return map_tensors(self.args, cut), map_tensors(self.kwargs, cut)

    def head_size(self, samples: int) -> int:
        """How many rows :meth:`head` replays: ``samples`` (at most the batch size), or every row when it cuts none."""
        batch_size = self.batch_size()
        if batch_size is None:
            return 1
        return batch_size if self.rows_indexed() else min(samples, batch_size)

    def run(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None) -> Any:
        """Call the module again (as the pack's own pass) with these arguments, by default the recorded ones."""
        with own_forward():
            return self.module(*(self.args if args is None else args), **(self.kwargs if kwargs is None else kwargs))


class StepObserver:
    """Record the top-level forward calls of one step of ``pl_module`` (see the module docstring).

    Args:
        pl_module: The LightningModule whose step is watched.
        max_calls: Keep at most this many top-level calls (a step calls its model once or a few times).
        keep_child_outputs: Also keep the (detached) outputs of the direct children that a top-level call of the
            LightningModule ran, e.g. the head's logits when ``forward`` returns something else.
        copy_args: Keep private copies of the arguments (to replay the call). ``False`` keeps detached views: no
            copy per step, for a caller that only reads their shapes.
    """

    _CHILD_OUTPUTS_KEPT = 16

    def __init__(
        self,
        pl_module: pl.LightningModule,
        max_calls: int = 4,
        keep_child_outputs: bool = False,
        copy_args: bool = True,
    ) -> None:
        self.max_calls = max_calls
        self._copy = private_copy if copy_args else _detached
        self.calls: list[ForwardCall] = []
        self.child_outputs: list[Any] = []
        """With ``keep_child_outputs``: outputs of direct children called inside a top-level call, in call order."""
        self._keep_child_outputs = keep_child_outputs
        self.loss: Tensor | None = None
        """The loss ``training_step`` returned (detached), once :meth:`note_loss` was given it."""
        self._names: dict[int, str] = {id(pl_module): ""}
        self._depth = 0
        self._handles: list[RemovableHandle] = []
        watched: list[nn.Module] = [pl_module]
        for name, child in pl_module.named_children():
            if not isinstance(child, (Metric, *compat.LOSS)):
                self._names[id(child)] = name
                watched.append(child)
        for module in watched:
            self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._after, with_kwargs=True, always_call=True))

    def __enter__(self) -> StepObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model_call(self) -> ForwardCall | None:
        """The call that received the batch: the first call of the LightningModule, else the first child call."""
        returned = [call for call in self.calls if call.returned]
        return next((call for call in returned if call.name == ""), returned[0] if returned else None)

    def note_loss(self, trainer: pl.Trainer, loss: Tensor) -> None:
        """Keep the loss ``training_step`` returned, from the tensor ``on_before_backward`` receives.

        Automatic optimisation divides the loss by ``accumulate_grad_batches`` before backward, which is undone here.
        Under a gradient scaler (fp16) the tensor is scaled by an unknown factor and no loss is kept.
        """
        if getattr(trainer.precision_plugin, "scaler", None) is not None or loss.numel() != 1:
            return
        automatic = trainer.lightning_module.automatic_optimization
        self.loss = loss.detach() * (trainer.accumulate_grad_batches if automatic else 1)

    def close(self) -> None:
        """Remove every hook; safe to call more than once."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if is_own_forward():
            return
        self._depth += 1
        if self._depth == 1 and len(self.calls) < self.max_calls:
            copy = self._copy
            self.calls.append(ForwardCall(module, self._names[id(module)], copy(args), copy(kwargs)))

    def _after(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if is_own_forward() or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self.calls and self.calls[-1].module is module and not self.calls[-1].returned:
            call = self.calls[-1]

            def detach(tensor: Tensor) -> Tensor:
                detached = tensor.detach()
                call.activations[id(detached)] = graph_activation(tensor)
                return detached

            call.output, call.returned = map_tensors(output, detach), True
        elif self._keeps_child_output(module):
            self.child_outputs.append(map_tensors(output, Tensor.detach))

    def _keeps_child_output(self, module: nn.Module) -> bool:
        """A direct child returned inside the LightningModule's call (a recursive call of the module is not kept)."""
        nested = self._depth > 0 and self._names[id(module)] != ""
        return self._keep_child_outputs and nested and len(self.child_outputs) < self._CHILD_OUTPUTS_KEPT


class StepCapture:
    """A callback's one :class:`StepObserver` at a time: started when a batch begins, handed over when it ends, and
    closed on an exception or at the run's end, so no hook outlives the step it watches.

    The outputs are read, the arguments only for their shapes (no call is replayed): no copy per step.

    Example::

        capture = StepCapture()
        capture.start(pl_module)  # on_*_batch_start
        observer = capture.stop()  # on_*_batch_end: the calls the step made, or None
    """

    def __init__(self) -> None:
        self._observer: StepObserver | None = None

    def start(self, module: pl.LightningModule) -> None:
        """Watch ``module``'s forward calls (and its direct children's outputs) until :meth:`stop`."""
        self.stop()
        self._observer = StepObserver(module, keep_child_outputs=True, copy_args=False)

    def stop(self) -> StepObserver | None:
        """Stop watching; the observer of the step, ``None`` if none was started."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.close()
        return observer


def _detached(value: Any) -> Any:
    """Detached views, no copy: enough to read shapes (a replay would see in-place edits made by forward)."""
    return map_tensors(value, Tensor.detach)


def private_copy(value: Any) -> Any:
    """Detached clones, so in-place edits by the user's forward do not change what we replay."""
    return map_tensors(value, lambda tensor: tensor.detach().clone())
