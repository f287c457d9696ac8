"""What a gradient-flow check measures, and the pure rules on it.

The per-parameter numbers of a check (exact gradient L2 norms; weight and update norms and the gradient's mean/max
from fixed pseudo-random samples), their aggregation into the owning modules, the evidence kept per optimizer across
checks, and the rules that need no trainer state (which steps are checked, the depth ratio, the growth of the gradient
norm, learning-rate phases, module names). :class:`~lightning_sanity.gradient_flow.GradientFlowCallback` decides when
to measure, and reports.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import Metric

from lightning_sanity import compat
from lightning_sanity.base import is_number
from lightning_sanity.findings import Severity

_DECAYED_LR = 0.5
"""Below this fraction of its peak a learning rate has been decayed on purpose: too-small updates are expected."""
NAMES_SHOWN = 5
SAMPLE = 4096
"""Elements per parameter sampled for its weight and update L2 norms and its gradient's L1 and max-abs norms (all of
a smaller parameter); the gradient L2 norm, what is judged, is exact."""
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_LIGHTNING_TENSOR_ATTRIBUTES = frozenset({"_example_input_array"})
"""Tensors Lightning itself keeps on a LightningModule (not model state)."""


@dataclass(frozen=True)
class PlainTensor:
    """A tensor held as a plain attribute of a module: neither a parameter nor a buffer.

    Attributes:
        name: ``module.attribute`` path from the LightningModule.
        module_type: Class name of the owning module.
        kind: ``"requires_grad"`` (meant to be learned), ``"uniform"`` (a 1-D float vector filled with one value, how
            learnable scales/offsets are initialised) or ``"constant"`` (anything else: should be a buffer).
    """

    name: str
    module_type: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    tensor: Tensor = field(repr=False, compare=False)


@dataclass(frozen=True)
class ParamInfo:
    name: str
    module: str
    module_ref: nn.Module | None
    numel: int
    is_layer_weight: bool
    """A matrix (or conv kernel) outside an embedding: what the vanishing comparison orders by depth."""


@dataclass
class PendingCheck:
    """A check whose gradients were measured before the step; the update is measured after it."""

    optimizer_index: int
    step: int
    infos: list[ParamInfo]
    params: list[Tensor]
    lrs: list[float]
    group_lrs: list[float]
    group_references: list[float]
    grad_stats: Tensor | None
    """``[4, n]``: gradient L2 norm, and the gradient L1, max-abs and weight L2 norms of each parameter's sample (scaled
    to the whole parameter on the host), still on the device."""
    snapshot: list[Tensor]
    """Each parameter's :func:`sample_elements` before the step."""
    sampled_out_of: list[float]
    """Per parameter, its elements per sampled element (1.0 when sampled whole)."""
    without_grad: list[ParamInfo]


@dataclass
class CheckSummary:
    """The numbers of one check of one optimizer, as judged.

    Attributes:
        optimizer_index: Index of the optimizer in ``trainer.optimizers``.
        step: Optimizer steps of that optimizer before this one.
        total_grad_norm: L2 norm of all gradients of the optimizer's trainable parameters.
        update_ratio: ``||update|| / ||weights||`` over all of them.
        max_layer_update_ratio: The largest per-layer update ratio.
        median_layer_step: The median per-layer ``||update|| / ||weights at the layer's first check||``:
            unlike the update ratio it does not shrink when a destructive step has blown the weights up.
        depth_ratio: Relative gradient (``||grad|| / ||weight||``) of the first layers over the last ones.
        judgeable_lr: False while the learning rate warms up or after it was decayed below half its peak.
        learning_rates: The learning rate of each param group at this step.
    """

    optimizer_index: int
    step: int
    total_grad_norm: float
    update_ratio: float
    max_layer_update_ratio: float
    median_layer_step: float
    depth_ratio: float | None
    judgeable_lr: bool
    learning_rates: list[float] = field(default_factory=list)


@dataclass
class Watch:
    """Evidence gathered across the checks of one optimizer."""

    steps: int = 0
    checks: int = 0
    judged: bool = False
    names_checked: dict[str, ParamInfo] = field(default_factory=dict)
    had_grad: set[str] = field(default_factory=set)
    nonzero_grad: set[str] = field(default_factory=set)
    stepped_with_grad: dict[str, int] = field(default_factory=dict)
    moved: set[str] = field(default_factory=set)
    baseline_norms: list[float] = field(default_factory=list)
    depth_ratios: list[float] = field(default_factory=list)
    depth_layers: list[str] = field(default_factory=list)
    initial_weight_norms: dict[str, float] = field(default_factory=dict)
    small_updates: int = 0
    healthy_update_seen: bool = False
    large_updates: int = 0
    nonfinite_streak: int = 0
    peak_lrs: list[float] = field(default_factory=list)
    last_lrs: list[float] = field(default_factory=list)
    used_peak_lrs: list[float] = field(default_factory=list)
    """Per param group, the highest learning rate seen at a check: a warm-up's target is never counted as used."""
    reset_window: ResetWindow | None = None
    kept_gradient: list[Tensor | None] = field(default_factory=list)
    """Per closed window: the smallest norm a probe's gradient had when a new one arrived, or ``None`` if reset."""
    reset_judged: bool = False
    gradient_arrived: set[int] = field(default_factory=set)
    """``id`` of each probed parameter whose gradient backward computed since this optimizer's last step."""
    cleared_before_step: int = 0
    """Checked steps where backward computed a probe's gradient but its ``.grad`` was empty at the step."""
    returned: dict[str, str] = field(default_factory=dict)
    """Modules without a gradient whose output an enclosing call returned to the step beside other outputs: where."""
    dropped: set[str] = field(default_factory=set)
    """Modules without a gradient whose output, at some check, was dropped inside the computation."""

    def note_outputs(
        self, without_grad: Sequence[ParamInfo], returned_unused: Callable[[Iterable[nn.Module]], dict[int, str]]
    ) -> None:
        """Where the outputs of the modules without a gradient at this check went (``returned_unused``: see
        :meth:`~lightning_sanity.module_calls.ModuleCalls.returned_unused`), read while the step's graph is known."""
        modules = {id(info.module_ref): info for info in without_grad if info.module_ref is not None}
        returned = returned_unused([info.module_ref for info in modules.values() if info.module_ref]) if modules else {}
        for key, info in modules.items():
            if key in returned:
                self.returned.setdefault(info.module, returned[key])
            else:
                self.dropped.add(info.module)

    def split_missing(
        self, missing: Sequence[ParamInfo], never_called: Callable[[nn.Module | None], bool] | None
    ) -> tuple[list[ParamInfo], list[ParamInfo], list[ParamInfo]]:
        """``missing`` (parameters without a gradient in every check) as held by modules forward never called, by
        modules whose output reached the step beside other outputs at every check, and the rest (a cut graph)."""
        unused = [info for info in missing if never_called is not None and never_called(info.module_ref)]
        ran = [info for info in missing if info not in unused]
        returned = [info for info in ran if info.module in self.returned and info.module not in self.dropped]
        return unused, returned, [info for info in ran if info not in returned]


@dataclass
class ResetWindow:
    """What the probes' ``.grad`` held whenever a new gradient arrived between two steps of one optimizer."""

    saw_reset: bool = False
    held_norms: list[Tensor] = field(default_factory=list)


@dataclass
class Layer:
    grad_norm: float
    mean_abs_grad: float
    max_abs_grad: float
    relative_grad: float
    update_ratio: float | None
    weight_norm: float
    update_norm: float
    is_layer: bool


class ResetProbes:
    """Gradient hooks on each optimizer's ``per_optimizer`` largest parameters, reporting into ``watches`` (by optimizer
    index): a hook on a leaf runs before the new gradient is added to ``.grad``, so it sees whether the gradient of the
    last step was reset (``None`` or zeroed) or is kept (``grad.not_reset``), and that backward computed one.

    Example::

        probes = ResetProbes(trainer.optimizers, watches, 2)  # a Watch's reset_window armed at a check step
        ...
        ResetProbes.close_window(watch)  # at that optimizer's next step
        probes.remove()
    """

    def __init__(self, optimizers: Sequence[Optimizer], watches: Mapping[int, Watch], per_optimizer: int) -> None:
        self.probed: dict[int, list[Tensor]] = {}
        self._watches = watches
        self._handles: list[Any] = []
        for index, optimizer in enumerate(optimizers):
            params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
            self.probed[index] = sorted(params, key=lambda p: -p.numel())[:per_optimizer]
            for param in self.probed[index]:
                self._handles.append(param.register_hook(self._probe(index, param)))

    def __bool__(self) -> bool:
        """Hooked (not yet removed)."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.probed = {}

    @staticmethod
    def close_window(watch: Watch) -> None:
        """At an optimizer step: keep what the window since the last check step saw, if a gradient arrived in it."""
        window, watch.reset_window = watch.reset_window, None
        if window is None or (not window.saw_reset and not window.held_norms):
            return  # no gradient reached the probes between the two steps: no evidence either way
        watch.kept_gradient.append(None if window.saw_reset else torch.stack(window.held_norms).min())

    def _probe(self, index: int, param: Tensor) -> Any:
        def note_held_gradient(grad: Tensor) -> None:
            watch = self._watches.get(index)
            if watch is not None:
                watch.gradient_arrived.add(id(param))
            window = watch.reset_window if watch is not None else None
            if window is None or window.saw_reset:
                return
            held = param.grad
            if held is None:
                window.saw_reset = True
            else:
                window.held_norms.append(torch.linalg.vector_norm(held.detach(), dtype=torch.float32))

        return note_held_gradient


def is_check_step(step: int, dense_steps: int, every_n_steps: int) -> bool:
    """Whether the ``step``-th (0-based) optimizer step is checked: all dense steps, then one in ``every_n_steps``."""
    return step < dense_steps or (step - dense_steps) % every_n_steps == every_n_steps - 1


def depth_ratio(relative_grads: Sequence[float]) -> float | None:
    """Median relative gradient of the first quarter of the layers over that of the last quarter.

    ``relative_grads`` are ``||grad|| / ||weight||`` per layer in depth order. ``None`` with fewer than
    four layers, where "depth" says nothing.
    """
    values = [value for value in relative_grads if math.isfinite(value)]
    if len(values) < 4:
        return None
    quarter = max(1, len(values) // 4)
    late = statistics.median(values[-quarter:])
    if late <= 0:
        return None
    return statistics.median(values[:quarter]) / late


def exploding_growth(baseline: float, norm: float) -> float | None:
    """How many times ``norm`` exceeds the early ``baseline`` norm; ``None`` when there is no usable baseline."""
    if not (baseline > 0 and math.isfinite(baseline) and math.isfinite(norm)):
        return None
    return norm / baseline


def collapse_module_names(names: Iterable[str], all_names: Iterable[str]) -> list[str]:
    """The shortest module names covering ``names``: a parent replaces its children when all of them are in ``names``.

    Example::

        collapse_module_names({"backbone.0", "backbone.2"}, {"backbone.0", "backbone.2", "head"}) == ["backbone"]
    """
    chosen = set(names)
    everything = set(all_names)
    parents = sorted({".".join(n.split(".")[:depth]) for n in chosen for depth in range(1, n.count(".") + 1)}, key=len)
    collapsed: set[str] = set()
    for parent in parents:
        if any(parent == c or parent.startswith(c + ".") for c in collapsed):
            continue
        below = {n for n in everything if n == parent or n.startswith(parent + ".")}
        if below and below <= chosen:
            collapsed.add(parent)
    kept = {n for n in chosen if not any(n == c or n.startswith(c + ".") for c in collapsed)}
    return sorted(collapsed | kept)


def unused_finding(
    unused: Sequence[ParamInfo], all_modules: Iterable[str], root: nn.Module, index: int, watch: Watch
) -> tuple[str, str, dict[str, Any]]:
    """Message, hint and evidence of ``param.unused`` for these parameters of modules forward never called.

    Each module is named with the class that holds it (whose ``forward`` skips it): a library's class says "built
    larger than used", the user's own class "defined and forgotten", and only the user knows which was meant.
    """
    modules = collapse_module_names({info.module for info in unused}, all_modules)
    checks = watch.checks
    holders = {name: type(root.get_submodule(name.rpartition(".")[0])) for name in modules}
    values = sum(info.numel for info in unused)
    message = (
        f"{len(unused)} trainable parameter(s) ({values:,} values) of optimizer {index} are in modules forward never "
        f"called in {checks} checked steps: {shorten(modules)} (held by "
        f"{shorten(sorted({holder.__qualname__ for holder in holders.values()}))}). They never train and only hold "
        "memory."
    )
    hint = (
        "Nothing is wrong if they are unused on purpose (a library model built larger than it is used, e.g. an "
        "encoder deeper than its encoder_depth, or a head for another phase); otherwise call them in forward (a "
        "layer defined and forgotten) or delete them. requires_grad_(False) on them silences this; under DDP, "
        "trainable parameters without a gradient need strategy='ddp_find_unused_parameters_true'."
    )
    evidence = {
        "modules": modules,
        "parameters": [info.name for info in unused],
        "values": values,
        "held_by": {name: f"{holder.__module__}.{holder.__qualname__}" for name, holder in holders.items()},
        "checks": checks,
    }
    return message, hint, evidence


def returned_finding(
    returned: Sequence[ParamInfo], all_modules: Iterable[str], root: nn.Module, index: int, watch: Watch
) -> tuple[str, str, dict[str, Any]]:
    """Message, hint and evidence of ``param.unused`` for these parameters of modules that ran, and whose output an
    enclosing call returned to the step beside other outputs (:attr:`Watch.returned`: "returned by `bert` as
    `pooler_output`"), which the step left out of the loss: its choice, like a module never called."""
    modules = collapse_module_names({info.module for info in returned}, all_modules)
    where, checks = watch.returned, watch.checks
    returned_by = {
        name: next(where[i.module] for i in returned if i.module == name or i.module.startswith(f"{name}."))
        for name in modules
    }
    values = sum(info.numel for info in returned)
    message = (
        f"{len(returned)} trainable parameter(s) ({values:,} values) of optimizer {index} got no gradient in {checks} "
        "checked steps because the step leaves their output out of the loss: "
        + ", ".join(f"{name} ({returned_by[name]} but not used by the loss)" for name in modules[:NAMES_SHOWN])
        + (f" and {len(modules) - NAMES_SHOWN} more" if len(modules) > NAMES_SHOWN else "")
        + ". They never train and only hold memory."
    )
    hint = (
        "Nothing is wrong if the output is left out on purpose (a library model's extra output, e.g. BertModel's "
        "pooler_output when classifying from last_hidden_state, or an auxiliary head used only at inference); "
        "otherwise add it to the loss. Building the model without them (BertModel(config, add_pooling_layer=False)) "
        "or requires_grad_(False) on them silences this; under DDP, trainable parameters without a gradient need "
        "strategy='ddp_find_unused_parameters_true'."
    )
    evidence = {
        "modules": modules,
        "parameters": [info.name for info in returned],
        "values": values,
        "returned_by": returned_by,
        "checks": checks,
    }
    return message, hint, evidence


def spread(names: Sequence[str], count: int) -> list[str]:
    """At most ``count`` of ``names``, evenly spread and always including the first and the last."""
    if count <= 0:
        return []
    if len(names) <= count:
        return list(names)
    if count == 1:
        return [names[-1]]
    step = (len(names) - 1) / (count - 1)
    return [names[round(i * step)] for i in range(count)]


def per_layer(
    infos: Sequence[ParamInfo], columns: Sequence[Sequence[float]], order: dict[str, int]
) -> dict[str, Layer]:
    """Aggregate per-parameter norms (gradient L2, L1, max-abs, weight L2, update L2) into their owning modules."""
    sums: dict[str, list[float]] = {}
    is_layer: dict[str, bool] = {}
    for info, (g2, g1, gmax, w2, u2) in zip(infos, zip(*columns, strict=True), strict=True):
        acc = sums.setdefault(info.module, [0.0] * 6)
        acc[0] += g2 * g2
        # L1 and max-abs come from a sample: kept within what the exact L2 norm allows (L2 <= L1 <= sqrt(n) L2,
        # max >= L2 / sqrt(n)), so a gradient the sample missed is not drawn as zero
        acc[1] += min(max(g1, g2), g2 * math.sqrt(info.numel))
        acc[2] = max(acc[2], gmax, g2 / math.sqrt(info.numel))
        acc[3] += w2 * w2
        acc[4] += u2 * u2
        acc[5] += info.numel
        is_layer[info.module] = is_layer.get(info.module, False) or info.is_layer_weight
    layers: dict[str, Layer] = {}
    for module in sorted(sums, key=lambda name: order.get(name, len(order))):
        g2_sq, g1, gmax, w2_sq, u2_sq, numel = sums[module]
        weight = math.sqrt(w2_sq)
        layers[module] = Layer(
            grad_norm=math.sqrt(g2_sq),
            mean_abs_grad=g1 / max(numel, 1.0),
            max_abs_grad=gmax,
            relative_grad=math.sqrt(g2_sq) / weight if weight > 0 else math.nan,
            update_ratio=math.sqrt(u2_sq) / weight if weight > 0 else None,
            weight_norm=weight,
            update_norm=math.sqrt(u2_sq),
            is_layer=is_layer[module],
        )
    return layers


def describe_parameters(pl_module: pl.LightningModule) -> dict[int, ParamInfo]:
    """Name every parameter after its owning module; a tied parameter belongs to its first owner."""
    infos: dict[int, ParamInfo] = {}
    root = type(pl_module).__name__
    for module_name, module in pl_module.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in infos:
                continue
            infos[id(param)] = ParamInfo(
                name=f"{module_name}.{param_name}" if module_name else param_name,
                module=module_name or root,
                module_ref=module,
                numel=param.numel(),
                is_layer_weight=param.ndim >= 2 and not isinstance(module, _EMBEDDINGS),
            )
    return infos


def plain_tensor_attributes(root: nn.Module) -> list[PlainTensor]:
    """Tensors held as plain attributes of ``root``'s modules (torchmetrics metric states and aliases of a parameter
    or buffer excepted): ``nn.Module.__setattr__`` files parameters and buffers away, so what is left in a module's
    ``__dict__`` is neither.

    Example::

        for tensor in plain_tensor_attributes(model):
            print(tensor.name, tensor.kind)  # e.g. "act.alpha uniform"
    """
    registered = {
        t.untyped_storage().data_ptr()
        for t in (*root.parameters(), *root.buffers())
        if t.numel() and t.layout == torch.strided and not t.is_meta
    }
    skipped: list[str] = []
    found: list[PlainTensor] = []
    for module_name, module in root.named_modules():
        if any(module_name == s or module_name.startswith(f"{s}.") for s in skipped):
            continue
        if isinstance(module, Metric):
            skipped.append(module_name)  # metric states are plain attributes by design (add_state)
            continue
        for attribute, value in vars(module).items():
            if not isinstance(value, Tensor) or isinstance(value, nn.Parameter) or value.is_meta:
                continue
            if value.layout != torch.strided:
                continue  # sparse/nested tensors: rare, and their storage cannot be compared
            if attribute in _LIGHTNING_TENSOR_ATTRIBUTES or value.grad_fn is not None:
                continue
            if value.numel() and value.untyped_storage().data_ptr() in registered:
                continue  # a view of a registered tensor (e.g. self.w = self.linear.weight.data)
            found.append(
                PlainTensor(
                    name=f"{module_name}.{attribute}" if module_name else attribute,
                    module_type=type(module).__name__,
                    kind=_plain_tensor_kind(value),
                    shape=tuple(value.shape),
                    dtype=str(value.dtype).removeprefix("torch."),
                    device=str(value.device),
                    tensor=value,
                )
            )
    return found


_PLAIN_TENSOR_GRADES = {
    "requires_grad": (
        Severity.ERROR,
        "require gradients but are plain attributes, not nn.Parameter: no optimizer sees them, so they never train",
    ),
    "uniform": (
        Severity.WARNING,
        "are 1-D float vectors filled with one value (how learnable scales and offsets are initialised) held as plain "
        "attributes: if meant to be learned they never train",
    ),
    "constant": (Severity.INFO, "are plain tensor attributes, neither parameters nor buffers"),
}
"""``param.plain_tensor``'s severity and wording by :attr:`PlainTensor.kind`."""
PLAIN_TENSOR_HINT = (
    "Wrap values to learn in nn.Parameter(...) (e.g. self.alpha = nn.Parameter(torch.zeros(n))); register constants "
    "with self.register_buffer(name, tensor) (persistent=False to keep them out of checkpoints)."
)


def plain_tensor_verdicts(
    kept: Sequence[PlainTensor], parameter_device: str | None
) -> list[tuple[str, Severity, str, dict[str, Any]]]:
    """``param.plain_tensor``'s findings on the plain tensors a module still holds after a step: one ``(kind, severity,
    message, evidence)`` per kind present, graded by what the tensors evidently are."""
    verdicts: list[tuple[str, Severity, str, dict[str, Any]]] = []
    for kind, (severity, what) in _PLAIN_TENSOR_GRADES.items():
        tensors = [p for p in kept if p.kind == kind]
        if not tensors:
            continue
        elsewhere = [p.name for p in tensors if parameter_device is not None and p.device != parameter_device]
        message = (
            f"{len(tensors)} tensor(s) {what}; they are also missing from state_dict (checkpoints), not moved by "
            f".to()/the Trainer's device placement and not synchronised by DDP: "
            + ", ".join(f"{p.name} ({p.module_type}, {list(p.shape)})" for p in tensors[:NAMES_SHOWN])
            + (f" and {len(tensors) - NAMES_SHOWN} more" if len(tensors) > NAMES_SHOWN else "")
            + (f"; {len(elsewhere)} of them are not on the parameters' device {parameter_device}" if elsewhere else "")
            + "."
        )
        evidence = {
            "tensors": [p.name for p in tensors],
            "shapes": [list(p.shape) for p in tensors],
            "dtypes": [p.dtype for p in tensors],
            "devices": [p.device for p in tensors],
            "parameter_device": parameter_device,
        }
        verdicts.append((kind, severity, message, evidence))
    return verdicts


def _plain_tensor_kind(tensor: Tensor) -> str:
    if tensor.requires_grad:
        return "requires_grad"
    if tensor.is_floating_point() and tensor.ndim == 1 and tensor.numel() > 1:
        with torch.no_grad():
            if bool((tensor == tensor[0]).all()):  # once per fit, on a small vector
                return "uniform"
    return "constant"


def anonymous_info(param: Tensor, number: int) -> ParamInfo:
    """A parameter the optimizer holds but the LightningModule does not (e.g. a loss module kept outside)."""
    return ParamInfo(f"param{number}", "(outside the model)", None, param.numel(), False)


def sample_elements(tensor: Tensor) -> Tensor:
    """At most :data:`SAMPLE` of ``tensor``'s elements, at fixed pseudo-random positions (all of a smaller tensor, as
    a view). Random single elements, neither an even stride nor contiguous runs: a stride aliases with a layer's
    structure (a stride of 8 over a digits classifier's first weight reads only the always-blank first pixel of each
    image row, whose weights never move), and runs of neighbours are correlated (mean |grad| 15 % off there)."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() <= SAMPLE:
        return flat
    return flat.index_select(0, _sample_positions(flat.numel(), flat.device))


@functools.lru_cache(maxsize=1024)
def _sample_positions(numel: int, device: torch.device) -> Tensor:
    """The same positions at every check, drawn from a generator of our own (the global RNG stays untouched)."""
    generator = torch.Generator().manual_seed(numel)
    return torch.randint(numel, (SAMPLE,), generator=generator).sort().values.to(device)


def copied(tensors: Iterable[Tensor]) -> list[Tensor]:
    """Copies of ``tensors``: views into one concatenated copy when they share a device and dtype (one call)."""
    tensors = list(tensors)
    if len({(t.device, t.dtype) for t in tensors}) > 1:
        return [t.clone() for t in tensors]
    return list(torch.cat(tensors).split([t.numel() for t in tensors]))


def float_vector(values: Sequence[Tensor], device: torch.device) -> Tensor:
    """Per-tensor scalars as one float32 vector on ``device`` (with model parallelism they sit on several devices)."""
    if any(value.device != device for value in values):
        values = [value.to(device) for value in values]
    return torch.stack(list(values)).float()


def read_to_host(pending: Sequence[PendingCheck]) -> list[list[list[float]]]:
    """Measure the updates of the pending checks and read all their numbers to the host in one transfer."""
    rows: list[Tensor] = []
    for check in pending:
        if check.grad_stats is None:
            continue
        with torch.no_grad():
            changes = compat.foreach_sub([sample_elements(param) for param in check.params], check.snapshot)
            updates = compat.foreach_norm(changes, 2, dtype=torch.float32)
            rows.append(torch.cat([check.grad_stats, float_vector(updates, check.grad_stats.device)[None]]))
        check.snapshot = []
    if not rows:
        return [[] for _ in pending]
    device = rows[0].device
    flat = torch.cat([row.to(device) for row in rows], dim=1).tolist()
    numbers: list[list[list[float]]] = []
    offset = 0
    for check in pending:
        width = len(check.params)
        if width:
            g2, g1, gmax, w2, u2 = (column[offset : offset + width] for column in flat)
            # a sample's L1 norm scales with the elements it stands for, its L2 norms with their square root
            roots = [math.sqrt(out_of) for out_of in check.sampled_out_of]
            g1 = [value * out_of for value, out_of in zip(g1, check.sampled_out_of, strict=True)]
            w2 = [value * root for value, root in zip(w2, roots, strict=True)]
            u2 = [value * root for value, root in zip(u2, roots, strict=True)]
            numbers.append([g2, g1, gmax, w2, u2])
        else:
            numbers.append([])
        offset += width
    return numbers


def clipping_factor(trainer: pl.Trainer, total_grad_norm: float) -> float | None:
    """How many times the trainer's gradient clipping shrinks a gradient of this norm, when at least 10x (the
    callbacks see gradients before Lightning clips them); ``None`` without such clipping."""
    clip, algorithm = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
    if not clip or getattr(algorithm, "value", algorithm or "norm") != "norm" or not math.isfinite(total_grad_norm):
        return None  # "value" clipping shrinks elements, not the norm: its effect is not this ratio
    factor = total_grad_norm / float(clip)
    return factor if factor >= 10 else None


def find_optimizer_index(trainer: pl.Trainer, optimizer: Optimizer) -> int:
    for index, candidate in enumerate(trainer.optimizers):
        if candidate is optimizer or getattr(optimizer, "optimizer", None) is candidate:
            return index
    return len(trainer.optimizers)


def group_peaks(optimizer: Optimizer) -> list[float]:
    """Each group's reference learning rate: the one set by the user, before an LR scheduler scaled it."""
    return [float(group.get("initial_lr", group.get("lr", 0.0))) for group in optimizer.param_groups]


def lr_is_judgeable(watch: Watch, lrs: Sequence[float], references: Sequence[float]) -> bool:
    """False while a learning rate warms up (rises, or sits far below its reference) or was decayed on purpose."""
    if len(watch.peak_lrs) != len(lrs):
        watch.peak_lrs = [0.0] * len(lrs)
        watch.last_lrs = []
    rising = len(watch.last_lrs) == len(lrs) and any(
        now > before for now, before in zip(lrs, watch.last_lrs, strict=True)
    )
    watch.peak_lrs = [max(peak, now, ref) for peak, now, ref in zip(watch.peak_lrs, lrs, references, strict=True)]
    watch.last_lrs = list(lrs)
    scaled_down = any(peak > 0 for peak in watch.peak_lrs) and all(
        now < _DECAYED_LR * peak for now, peak in zip(lrs, watch.peak_lrs, strict=True) if peak > 0
    )
    return not rising and not scaled_down


def in_training_mode(info: ParamInfo) -> bool:
    return info.module_ref is None or info.module_ref.training


def has_grad_scaler(trainer: pl.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def l2(values: Iterable[float]) -> float:
    return math.sqrt(sum(value * value for value in values))


def shorten(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown} and {len(names) - NAMES_SHOWN} more"


def format_lrs(lrs: Sequence[float]) -> str:
    return "/".join(f"{lr:.1e}" for lr in lrs) or "?"


def is_fraction(value: Any) -> bool:
    return is_number(value) and 0 < value < 1
