"""The pack's own forward calls run on private copies of the user's tensors.

Several checks call the user's modules themselves: the step-zero probes of
:class:`~lightning_sanity.model_checks.ModelChecksCallback`, the loss modules tried by
:func:`~lightning_sanity.losses.module_candidates`, the replays of
:class:`~lightning_sanity.mode_guard.ModeGuardCallback`. A forward may write what it holds even in eval mode and under
``no_grad``: a buffer (a queue, a counter, a metric's state), its own weights (``w.data *= mask``, ``masked_fill_``,
a forward pre-hook that re-masks), an attribute (``self.last = x``). :func:`private_state` makes every such write
land on a copy, and puts the user's objects back by assignment only: an in-place restore would bump a version
counter and break the backward of a graph that saved the tensor, in the user's own ``backward()`` where no guard of
ours can catch it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from lightning_sanity import compat

PRIVATE_COPY_MAX_ELEMENTS = 1 << 24
"""Buffers and tensor attributes above this size (a dataset kept on the module) are not copied, only put back."""


@contextmanager
def private_state(root: nn.Module, parameters: Mapping[str, Tensor] | None = None) -> Iterator[None]:
    """Run the pack's own calls of ``root`` on private copies of every tensor it holds.

    Inside the block every parameter, buffer and tensor attribute of every submodule is a copy: ``parameters[name]``
    for the parameters named there (e.g. the weights from before an evaluation, for a replay), a clone of the current
    value otherwise. Each module slot holds a new tensor object over the copy and each of the user's tensor objects is
    pointed at the same copy (``tensor.data = copy``), so whatever a forward writes through (the module, ``.data``, a
    hook, a closure holding a parameter) lands in the copy, and its in-place ops count in the new objects' version
    counters. A tensor held in two places gets one copy, so the two stay one tensor. On exit every slot and attribute
    gets its own object back (attributes the calls added are removed) and every tensor its own data and gradient, by
    assignment only. Buffers and attributes of more than :data:`PRIVATE_COPY_MAX_ELEMENTS` elements and
    uninitialised lazy tensors are left as they are (their identity is still restored).

    Raises:
        RuntimeError: ``root`` holds an inference tensor and inference mode is off (its data cannot be swapped).

    Example::

        with forked_rng(), private_state(model), torch.no_grad():
            model(sample)  # a buffer, a weight or an attribute the forward writes is written on a copy
    """
    named = {id(p): parameters[name] for name, p in root.named_parameters() if parameters and name in parameters}
    saved: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for module in root.modules():
        holders = (vars(module), *compat.module_slots(module))
        saved.extend((holder, dict(holder)) for holder in holders)
    tensors = {id(t): t for _, content in saved for t in content.values() if isinstance(t, Tensor) and _copied(t)}
    if not torch.is_inference_mode_enabled() and any(t.is_inference() for t in tensors.values()):
        raise RuntimeError("an inference tensor outside inference mode cannot be swapped for a private copy")
    own: list[tuple[Tensor, Tensor, Tensor | None]] = []
    try:
        fresh: dict[int, Tensor] = {}
        for identity, tensor in tensors.items():
            own.append((tensor, tensor.data, tensor.grad if tensor.is_leaf else None))
            copy = named[identity].to(tensor.device) if identity in named else tensor.detach().clone()
            tensor.data = copy
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None
                fresh[identity] = nn.Parameter(copy, requires_grad=tensor.requires_grad)
            else:
                fresh[identity] = copy.requires_grad_(tensor.requires_grad) if tensor.is_leaf else copy
        for slots, content in saved:
            for name, value in content.items():
                if isinstance(value, Tensor) and id(value) in fresh:
                    slots[name] = fresh[id(value)]
        yield
    finally:
        for slots, content in saved:
            for name in [name for name in slots if name not in content]:
                del slots[name]
            for name, value in content.items():
                if slots.get(name) is not value:
                    slots[name] = value
        for tensor, data, grad in reversed(own):
            tensor.data = data
            if tensor.is_leaf:
                tensor.grad = grad


def _copied(tensor: Tensor) -> bool:
    """Parameters always (a forward may re-mask them); other tensors unless lazy or as large as a dataset."""
    if isinstance(tensor, nn.Parameter):
        return not is_lazy(tensor)
    return not is_lazy(tensor) and tensor.numel() <= PRIVATE_COPY_MAX_ELEMENTS
