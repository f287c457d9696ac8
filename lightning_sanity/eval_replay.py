"""The pack's own replays of an evaluation step's forward calls: re-masking explained, stochastic outputs traced.

Two checks of :class:`~lightning_sanity.mode_guard.ModeGuardCallback` run the user's modules again on a few samples
of an evaluation batch, on private copies of every tensor the modules hold
(:func:`~lightning_sanity.isolation.private_state`), RNG forked:

- the re-masking replay: :class:`OutermostCalls` records the outermost module calls of the run's first step; they are
  run again on the weights from before evaluation (:func:`host_copies`), and :func:`other_values` names the weights
  the replay does not bring to their values at the end (:class:`Replay`: what is left unexplained).
- the stochastic-output check: two passes are compared with :func:`relative_difference`; when they differ, both are
  run again from the first pass's :class:`RngState` while an :class:`ActivationRecorder` fingerprints every module's
  inputs and outputs, to find where the randomness starts.

Example::

    recorder = OutermostCalls(pl_module, samples=4)  # while the first evaluation step runs
    ...
    recorder.close()
    with forked_rng(), torch.no_grad(), private_state(pl_module, before):
        for call in recorder.calls:
            call.run()
        unexplained = other_values(pl_module, live)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchmetrics import Metric

from lightning_sanity.modes import CHECKSUM_TOLERANCE, named_parameters_to_watch
from lightning_sanity.observe import ForwardCall, is_own_forward, private_copy

_ATTRIBUTION_TOLERANCE = 1e-4
"""Relative tolerance when comparing per-module activation fingerprints to find where randomness starts."""


def output_tensors(output: Any) -> list[Tensor]:
    """The tensors in a forward output: a tensor, or nested mappings, sequences and dataclasses of them."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in output_tensors(value)]
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in output_tensors(value)]
    if hasattr(output, "__dataclass_fields__") and not isinstance(output, type):
        return [t for name in output.__dataclass_fields__ for t in output_tensors(getattr(output, name))]
    return []


def relative_difference(first: Sequence[Tensor], second: Sequence[Tensor]) -> float:
    """Largest ``max|a - b| / max|a|`` over matching output tensors; ``inf`` if the structures differ."""
    if len(first) != len(second) or any(a.shape != b.shape for a, b in zip(first, second, strict=True)):
        return math.inf
    worst = 0.0
    for a, b in zip(first, second, strict=True):
        if a.numel() == 0:
            continue
        a64 = torch.nan_to_num(a.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)
        b64 = torch.nan_to_num(b.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)
        scale = max(a64.abs().max().item(), b64.abs().max().item(), 1e-12)
        worst = max(worst, (a64 - b64).abs().max().item() / scale)
    return worst


def activation_fingerprint(values: Any) -> Tensor:
    """``[sum, sum|x|, sum x^2]`` over the floating tensors in ``values``: changed by any dropout mask."""
    tensors = [t.detach().double() for t in output_tensors(values) if t.is_floating_point() and t.numel()]
    if not tensors:
        return torch.zeros(3, dtype=torch.float64)
    flat = torch.cat([torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0).flatten().cpu() for t in tensors])
    return torch.stack([flat.sum(), flat.abs().sum(), flat.square().sum()])


def fingerprints_match(first: Tensor, second: Tensor, tolerance: float) -> Tensor:
    """Row-wise: do two ``[n, 3]`` activation fingerprints agree within ``tolerance``?"""
    sum_close = (first[:, 0] - second[:, 0]).abs() <= tolerance * torch.maximum(first[:, 1], second[:, 1]) + 1e-12
    square_close = (first[:, 2] - second[:, 2]).abs() <= tolerance * torch.maximum(first[:, 2], second[:, 2]) + 1e-12
    return sum_close & square_close


def innermost_sources(names: Sequence[str]) -> list[str]:
    """The names in ``names`` with no descendant (``name.child``) also in ``names``, order kept."""
    return [
        n for n in names if not any(other != n and other.startswith(f"{n}.") or (n == "" and other) for other in names)
    ]


class OutermostCalls:
    """Record the outermost module calls of one evaluation step, whichever modules of ``root`` they are.

    The LightningModule for ``self(x)``, a child for ``self.model(x)``, and for a step that calls ``self.forward(x)``
    (no hook of the LightningModule runs) each module that ``forward`` calls, grandchildren in a ``ModuleList``
    included. Each call keeps private copies of its arguments cut to their first ``samples`` samples
    (:meth:`~lightning_sanity.observe.ForwardCall.head`), so the step's forward can be replayed cheaply. Metrics are
    not watched (calling one updates its state); hooks live until :meth:`close`.

    Example::

        recorder = OutermostCalls(pl_module, samples=4)  # at the start of the first evaluation batch
        ...  # the user's validation_step runs
        recorder.close()
        for call in recorder.calls:
            call.run()  # the pack's own pass: nothing records it
    """

    _KEPT = 32
    """A step calls a few modules; a cell called once per time step needs only its first calls replayed."""

    def __init__(self, root: nn.Module, samples: int) -> None:
        self.samples = samples
        self.calls: list[ForwardCall] = []
        self._depth = 0
        self._handles: list[RemovableHandle] = []
        unhooked = (Metric, torch.jit.ScriptModule)  # a metric's call updates its state; scripted modules take no hooks
        skipped = {id(sub) for module in root.modules() if isinstance(module, unhooked) for sub in module.modules()}
        for name, module in root.named_modules():
            if id(module) not in skipped:
                self._handles.append(module.register_forward_pre_hook(self._before(name), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._after, with_kwargs=True, always_call=True))

    def close(self) -> None:
        """Remove every hook; safe to call more than once."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if is_own_forward():
                return
            self._depth += 1
            if self._depth == 1 and len(self.calls) < self._KEPT:
                head_args, head_kwargs = ForwardCall(module, name, args, kwargs).head(self.samples)
                self.calls.append(ForwardCall(module, name, private_copy(head_args), private_copy(head_kwargs)))

        return record

    def _after(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not is_own_forward() and self._depth > 0:
            self._depth -= 1


def host_copies(named: Sequence[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Copies of the named tensors in host memory: the device keeps all its memory for the user's evaluation."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in named}


def other_values(root: nn.Module, live: Mapping[str, Tensor]) -> list[str]:
    """The names of ``live`` whose parameter in ``root`` holds other values (relative tolerance
    ``CHECKSUM_TOLERANCE`` per element, for reductions that are not bit-reproducible on some devices)."""
    now = dict(named_parameters_to_watch(root))
    return [
        name
        for name, value in live.items()
        if name not in now
        or now[name].shape != value.shape
        or not (
            torch.equal(now[name], value)  # the usual case, in one cheap pass
            or bool(torch.isclose(now[name], value, rtol=CHECKSUM_TOLERANCE, atol=0.0, equal_nan=True).all())
        )
    ]


@dataclass(frozen=True)
class Replay:
    """What replaying the first step's forward calls on the weights from before evaluation showed."""

    unexplained: list[str]
    """The changed parameters that the replay does not bring to their values at the end (all when it failed)."""

    def __bool__(self) -> bool:
        """Is the whole change the forward's own re-parametrisation?"""
        return not self.unexplained


@dataclass
class RngState:
    """Every random stream a forward pass may draw from on ``device``, to replay a pass exactly."""

    device: torch.device
    cpu: Tensor = field(default_factory=torch.get_rng_state)
    python: Any = field(default_factory=random.getstate)
    numpy: Any = field(default_factory=np.random.get_state)
    cuda: Tensor | None = None

    def __post_init__(self) -> None:
        if self.device.type == "cuda":
            self.cuda = torch.cuda.get_rng_state(self.device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class ActivationRecorder:
    """Fingerprints every module call's inputs and outputs over consecutive forward passes (uncompiled models)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.calls: list[tuple[str, str, Tensor, Tensor]] = []
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> ActivationRecorder:
        for name, module in self.root.named_modules():
            self.handles.append(module.register_forward_hook(self._recorder(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            inputs = activation_fingerprint([args, kwargs])
            self.calls.append((name, type(module).__name__, inputs, activation_fingerprint(output)))

        return record

    def random_sources(self) -> list[tuple[str, str]]:
        """Innermost modules whose inputs were equal in the first two passes but whose outputs were not."""
        if len(self.calls) < 2:
            return []
        per_pass = _split_passes(self.calls, self.root)
        if len(per_pass) < 2 or len(per_pass[0]) != len(per_pass[1]):
            return []
        first, second = per_pass[0], per_pass[1]
        if any(a[0] != b[0] for a, b in zip(first, second, strict=True)):
            return []
        inputs_equal = fingerprints_match(
            torch.stack([c[2] for c in first]), torch.stack([c[2] for c in second]), _ATTRIBUTION_TOLERANCE
        )
        outputs_equal = fingerprints_match(
            torch.stack([c[3] for c in first]), torch.stack([c[3] for c in second]), _ATTRIBUTION_TOLERANCE
        )
        suspects = [i for i in range(len(first)) if bool(inputs_equal[i]) and not bool(outputs_equal[i])]
        names = innermost_sources(list(dict.fromkeys(first[i][0] for i in suspects)))
        types = {first[i][0]: first[i][1] for i in suspects}
        return [(name, types[name]) for name in names]


def _split_passes(
    calls: list[tuple[str, str, Tensor, Tensor]], root: nn.Module
) -> list[list[tuple[str, str, Tensor, Tensor]]]:
    """Cut the call log after each call of the root module (forward hooks fire children first, root last)."""
    passes: list[list[tuple[str, str, Tensor, Tensor]]] = [[]]
    for call in calls:
        passes[-1].append(call)
        if call[0] == "":
            passes.append([])
    return [p for p in passes if p]
