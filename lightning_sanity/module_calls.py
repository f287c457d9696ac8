"""Which modules the user's training forward calls, and where their outputs go.

:class:`ModuleCalls` watches the training steps of :class:`~lightning_sanity.gradient_flow.GradientFlowCallback`'s
dense phase with one global forward pre-hook and one global forward hook, and answers the two questions that tell a
trainable parameter without a gradient on purpose from a cut graph: was its module ever called (``param.unused``),
and, if it ran, did its output leave the computation as one of several outputs of a call the step received (a
library model's ``pooler_output``, an auxiliary head's logits: the step chose not to use it), or was it dropped
inside ``forward`` (``.detach()``, ``torch.no_grad()``, a branch never combined: ``grad.missing``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_sanity.observe import is_own_forward

_MAX_CALLS = 10_000
"""Calls whose outputs are kept per training step (a module called per time step of a long sequence stops there)."""
_MAX_OUTPUTS = 32
"""Tensors read from one call's returned structure, at most :data:`_MAX_DEPTH` levels deep."""
_MAX_DEPTH = 3


@dataclasses.dataclass(eq=False)
class _Call:
    """One call of a watched module in the current step: who called it, and the autograd nodes of what it returned
    (``(key, grad_fn)`` of each returned tensor that requires a gradient; nodes, not tensors, so no activation is
    kept alive once backward freed the graph)."""

    module: int
    parent: _Call | None
    outputs: list[tuple[str, Any]] = dataclasses.field(default_factory=list)


class ModuleCalls:
    """Which modules of ``root`` the user's forward calls between :meth:`start` and :meth:`stop` (the training
    batches of the dense phase), and whether the outputs of a module that ran reach the step.

    Tells a module that never runs (:meth:`never_called`: unused) from one that runs and gets no gradient, and among
    those the module whose output an enclosing call returned beside other outputs (:meth:`returned_unused`: the step
    left it out of the loss, e.g. a Hugging Face ``BertModel``'s ``pooler_output``) from one whose output is dropped
    inside forward (a cut graph). One global forward pre-hook and one global forward hook while open, so nothing is
    stored on the user's modules (a ``deepcopy`` of the model, e.g. an EMA teacher, takes no hook with it) and nothing
    runs once :meth:`close` removed them; the outputs of the current step are held as autograd nodes only, and
    dropped at :meth:`stop`. The pack's own forward passes are not counted. Modules added to ``root`` later, and
    ``root`` itself (whose steps read its own parameters directly), count as called: only evidence of never running
    makes a module unused.

    Example::

        calls = ModuleCalls(model)
        calls.start()  # around the user's training step
        main, aux = model(x)
        F.cross_entropy(main, y).backward()
        calls.returned_unused([model.aux_head])  # {id(model.aux_head): "returned by `model` as `[1]`"}
        calls.stop()
        calls.close()
        calls.never_called(model.unused_head)  # True
    """

    def __init__(self, root: nn.Module) -> None:
        self.recording = False
        self.failure: Exception | None = None
        """An error of the hooks (which run inside the user's forward, where nothing may raise), to report; outputs are
        not followed after it (no module is then found returned), calls still are."""
        self._follow_outputs = True
        self._root = id(root)
        self._names = {id(module): name or type(root).__name__ for name, module in root.named_modules()}
        self._called: set[int] = set()
        self._open: list[_Call] = []
        self._calls: list[_Call] = []
        global_hooks = torch.nn.modules.module  # public API: hooks on every module's calls
        self._handles = [
            global_hooks.register_module_forward_pre_hook(self._enter),
            global_hooks.register_module_forward_hook(self._leave),
        ]

    def start(self) -> Exception | None:
        """Record the calls of a training step; returns (once) an error the hooks met since the last start."""
        self.stop()
        self.recording = bool(self._handles)
        failure, self.failure = self.failure, None
        return failure

    def stop(self) -> None:
        """Stop recording and drop the step's outputs (what was called stays known)."""
        self.recording = False
        self._open = []
        self._calls = []

    def never_called(self, module: nn.Module | None) -> bool:
        """``module`` is one of ``root``'s (not ``root``) and was never called while recording."""
        key = id(module)
        return module is not None and key != self._root and key in self._names and key not in self._called

    def returned_unused(self, modules: Iterable[nn.Module]) -> dict[int, str]:
        """Of ``modules`` (that ran in this step and got no gradient), those whose output an enclosing call returned
        beside outputs it does not feed, in every call this step: ``{id(module): "returned by `bert` as
        `pooler_output`"}``. An output that reaches no enclosing call's return, or is the whole of the outermost
        return (the step cut all of it), is dropped inside the computation and is not listed."""
        reach: dict[int, set[Any]] = {}

        def reachable(node: Any) -> set[Any]:
            """Every autograd node ``node`` is computed from (the returned tensor's ancestors), itself included."""
            if id(node) not in reach:
                seen: set[Any] = set()
                stack = [node]
                while stack:
                    current = stack.pop()
                    if current is not None and current not in seen:
                        seen.add(current)
                        stack.extend(parent for parent, _ in current.next_functions)
                reach[id(node)] = seen
            return reach[id(node)]

        found: dict[int, str] = {}
        for module in modules:
            calls = [call for call in self._calls if call.module == id(module)]
            where = [self._returned_as(call, reachable) for call in calls]
            if where and all(where):
                found[id(module)] = str(where[0])
        return found

    def close(self) -> None:
        """Remove the hooks; which modules were called stays readable. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.stop()

    def _returned_as(self, call: _Call, reachable: Any) -> str | None:
        """Walk up the enclosing calls while ``call``'s output is all they return; where it is one of several
        outputs, name the call and the keys that hold it."""
        if not call.outputs:
            return None  # nothing that can carry a gradient: computed under torch.no_grad() or detached
        own = {node for _, node in call.outputs}
        caller = call.parent
        while caller is not None:
            holding = [key for key, node in caller.outputs if not own.isdisjoint(reachable(node))]
            if not holding:
                return None  # dropped inside the caller's forward
            if len(holding) < len(caller.outputs):
                keys = ", ".join(f"`{key}`" for key in holding)
                return f"returned by `{self._names.get(caller.module, '?')}` as {keys}"
            caller = caller.parent
        return None  # the whole of what the step received, and no gradient: cut in the step

    def _enter(self, module: nn.Module, args: Any) -> None:
        if not self.recording or is_own_forward():
            return
        key = id(module)
        self._called.add(key)
        if key in self._names:
            self._open.append(_Call(key, self._open[-1] if self._open else None))

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self.recording or is_own_forward() or id(module) not in self._names:
            return
        try:
            depth = next((i for i in range(len(self._open) - 1, -1, -1) if self._open[i].module == id(module)), None)
            if depth is None:
                return
            call = self._open[depth]
            del self._open[depth:]  # calls left open above it raised inside forward, which the user caught
            if self._follow_outputs and len(self._calls) < _MAX_CALLS and torch.is_grad_enabled():
                _graph_outputs(output, "", 0, call.outputs)
                if call.outputs:
                    self._calls.append(call)
        except Exception as error:  # inside the user's forward: never raise there
            self.failure, self._follow_outputs = error, False
            self._open, self._calls = [], []


def _graph_outputs(value: Any, key: str, depth: int, found: list[tuple[str, Any]]) -> None:
    """``(key, grad_fn)`` of every tensor requiring a gradient in a returned structure: tensors, tuples, lists,
    namedtuples, mappings (a Hugging Face ``ModelOutput``) and dataclasses; keys read like ``pooler_output`` or
    ``[1].logits``."""
    if len(found) >= _MAX_OUTPUTS:
        return
    if isinstance(value, torch.Tensor):
        if value.grad_fn is not None:
            found.append((key or "output", value.grad_fn))
        return
    if depth >= _MAX_DEPTH:
        return
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)
        items = zip(fields, value, strict=False) if fields else enumerate(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((field.name, getattr(value, field.name, None)) for field in dataclasses.fields(value))
    else:
        return
    for name, item in items:
        part = f"[{name}]" if isinstance(name, int) else str(name)
        joined = f"{key}{part}" if isinstance(name, int) or not key else f"{key}.{part}"
        _graph_outputs(item, joined, depth + 1, found)
