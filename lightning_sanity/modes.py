"""Which modules behave differently in training and eval mode, and checksums that tell whether tensors changed.

:func:`mode_kind` classifies one module (dropout, normalization with running statistics, stochastic depth, a
user-defined ``forward`` that reads ``self.training``) and :func:`mode_dependent_modules` lists them under a root.
:class:`Checksums` summarises named tensors (:func:`named_parameters_to_watch`, :func:`named_running_stats`) on their
devices, so that a later summary tells which of them changed. :func:`eval_frozen_subtrees` finds the parts of a model
put in eval mode during training whose weights the optimizer still trains. Used by
:class:`~lightning_sanity.mode_guard.ModeGuardCallback`.

Example::

    for entry in mode_dependent_modules(model):
        print(entry.name, entry.kind)  # e.g. "net.3 dropout"
    before = Checksums.of(named_parameters_to_watch(model))
    ...  # evaluation runs
    changed = before.changed(Checksums.of(named_parameters_to_watch(model)))  # names of the changed parameters
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_sanity import compat

DROPOUT, NORMALIZATION, STOCHASTIC, CUSTOM = "dropout", "normalization", "stochastic", "custom"
RANDOM_KINDS = frozenset({DROPOUT, STOCHASTIC})
"""Kinds that ``allow_stochastic_eval=True`` may leave in training mode during evaluation (MC dropout)."""
_STOCHASTIC_CLASS_NAMES = frozenset({"droppath", "stochasticdepth", "dropblock", "dropblock2d", "droppath2d"})

CHECKSUM_TOLERANCE = 1e-6
"""Relative change of a parameter/buffer sum or norm that counts as changed (unchanged tensors give bit-equal ones)."""
_NORMALIZATION_TYPES = (*compat.NORM_WITH_RUNNING_STATS, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def mode_kind(module: nn.Module) -> str | None:
    """Why ``module`` behaves differently in training and eval mode, or ``None`` if it does not.

    Known types are matched exactly; for user-defined classes the source of ``forward`` is searched
    for ``self.training`` once per class, which is what makes a layer mode-dependent.
    """
    if isinstance(module, compat.DROPOUT):
        return DROPOUT
    if isinstance(module, compat.NORM_WITH_RUNNING_STATS):
        return NORMALIZATION if module.running_mean is not None else None
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        return DROPOUT if module.dropout > 0 else None
    if type(module).__name__.lower() in _STOCHASTIC_CLASS_NAMES:
        return STOCHASTIC
    if _forward_reads_training_flag(type(module)):
        return CUSTOM
    return None


_READS_TRAINING_FLAG: dict[type, bool] = {}


def _forward_reads_training_flag(cls: type) -> bool:
    """Cached per class: reading source is slow and classes do not change."""
    if cls not in _READS_TRAINING_FLAG:
        _READS_TRAINING_FLAG[cls] = _source_reads_training_flag(cls)
    return _READS_TRAINING_FLAG[cls]


def _source_reads_training_flag(cls: type) -> bool:
    if cls.__module__.startswith(("torch.", "lightning.", "pytorch_lightning.", "torchmetrics.")):
        return False
    try:
        source = inspect.getsource(cls.forward)  # type: ignore[attr-defined]
    except (OSError, TypeError, AttributeError):
        return False
    return "self.training" in source


@dataclass(frozen=True)
class ModeDependent:
    name: str
    module: nn.Module
    kind: str


def mode_dependent_modules(root: nn.Module) -> list[ModeDependent]:
    """Every submodule of ``root`` (including itself) whose behaviour depends on its ``training`` flag."""
    found = []
    for name, module in root.named_modules():
        kind = mode_kind(module)
        if kind is not None:
            found.append(ModeDependent(name, module, kind))
    return found


def describe_modules(names: Sequence[str]) -> str:
    """``"`net.1`, `net.5`"`` for a few modules, ``"12 modules under `backbone`"`` for many."""
    shown = [f"`{name or '<root>'}`" for name in names]
    if len(names) <= 3:
        return ", ".join(shown)
    parts = [name.split(".") for name in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    prefix = ".".join(common)
    return f"{len(names)} modules under `{prefix}`" if prefix else f"{len(names)} modules across the model"


@dataclass
class Checksums:
    """Per-tensor ``[sum, L2 norm]`` of named tensors, still on their devices (no host sync to take).

    The signed sum moves with any single changed element (a sign flip too, which leaves both norms equal) and,
    unlike an L1 norm, is one cheap vectorised reduction on CPU; the L2 norm catches changes that cancel in the sum.
    """

    names: list[str]
    groups: list[tuple[list[int], Tensor]]

    @classmethod
    def of(cls, named: Sequence[tuple[str, Tensor]]) -> Checksums:
        by_kind: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for index, (_, tensor) in enumerate(named):
            by_kind.setdefault((tensor.device, tensor.dtype), []).append(index)
        groups = []
        for (_, dtype), indices in by_kind.items():
            tensors = [named[i][1].detach() for i in indices]
            if dtype.is_floating_point:
                accumulate = torch.promote_types(dtype, torch.float32)
                sums = torch.stack([t.sum(dtype=accumulate) for t in tensors])
                norms = torch.stack([sums, torch.stack(compat.foreach_norm(tensors, 2, dtype=accumulate))], 1)
            else:
                norms = torch.stack([t.double().sum() for t in tensors]).unsqueeze(1).expand(-1, 2)
            groups.append((indices, norms.double()))
        return cls([name for name, _ in named], groups)

    def changed(self, later: Checksums) -> list[str]:
        """Names whose norms differ in ``later`` (reads the comparison to the host once per group)."""
        changed: list[int] = []
        for (indices, before), (_, after) in zip(self.groups, later.groups, strict=True):
            same = torch.isclose(before, after, rtol=CHECKSUM_TOLERANCE, atol=0.0, equal_nan=True).all(1)
            changed.extend(indices[i] for i in (~same).nonzero().flatten().tolist())
        return [self.names[i] for i in sorted(changed)]

    def l2_norm(self) -> float:
        """The L2 norm of all the summarised tensors together (one host read per group)."""
        return math.sqrt(sum(float(norms[:, 1].square().sum()) for _, norms in self.groups))


def named_parameters_to_watch(module: nn.Module) -> list[tuple[str, Tensor]]:
    return [(name, p) for name, p in module.named_parameters() if p.is_floating_point() and not p.is_meta]


def named_running_stats(modules: Sequence[ModeDependent]) -> list[tuple[str, Tensor]]:
    stats = []
    for entry in modules:
        if entry.kind != NORMALIZATION:
            continue
        for buffer_name in ("running_mean", "running_var", "num_batches_tracked"):
            buffer = getattr(entry.module, buffer_name, None)
            if isinstance(buffer, Tensor) and not isinstance(buffer, nn.parameter.UninitializedBuffer):
                stats.append((f"{entry.name}.{buffer_name}" if entry.name else buffer_name, buffer))
    return stats


def owners(tensor_names: Sequence[str]) -> list[str]:
    """The modules owning the named tensors, in order, without repeats."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in tensor_names))


@dataclass
class EvalFrozen:
    """A subtree in eval mode during training whose non-normalization layers have trainable, optimized weights."""

    name: str
    module_type: str
    params: list[tuple[str, Tensor]]
    before: Checksums
    mode_dependent: list[str]
    dedicated_groups: bool
    """Its weights sit in optimizer param groups holding nothing else: the optimizer was built around it."""


def eval_frozen_subtrees(root: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> list[EvalFrozen]:
    """Topmost modules in eval mode (under a root in training mode) holding trainable, optimized weights of layers
    that are not normalization layers. A BatchNorm put in eval mode alone (frozen statistics while fine-tuning)
    is not one: only a ``.eval()`` on a whole block puts its convolutions and linear layers in eval mode."""
    if not root.training:
        return []  # the whole model in eval mode: mode.eval_in_train's business
    groups = [[id(p) for p in group["params"]] for optimizer in optimizers for group in optimizer.param_groups]
    optimized = {pid for group in groups for pid in group}
    found: list[EvalFrozen] = []
    for name, module in root.named_modules():
        if module.training or any(name.startswith(f"{f.name}.") for f in found):
            continue
        trainable = [
            (f"{name}.{param_name}", param)
            for owner_name, owner in module.named_modules()
            if not isinstance(owner, _NORMALIZATION_TYPES)
            for param_name, param in (
                (f"{owner_name}.{n}" if owner_name else n, p) for n, p in owner.named_parameters(recurse=False)
            )
            # a gradient at the first step: the optimizer trains it (an EMA copy in eval mode gets none)
            if param.requires_grad and id(param) in optimized and param.grad is not None
        ]
        if not trainable:
            continue
        mine = {id(p) for p in module.parameters()}
        touching = [set(group) for group in groups if mine & set(group)]
        found.append(
            EvalFrozen(
                name=name,
                module_type=type(module).__name__,
                params=trainable,
                before=Checksums.of(trainable),
                mode_dependent=[
                    f"{name}.{m.name}" if m.name else name
                    for m in mode_dependent_modules(module)
                    if not m.module.training
                ],
                dedicated_groups=all(group <= mine for group in touching),
            )
        )
    return found
