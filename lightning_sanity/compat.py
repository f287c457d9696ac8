"""The compatibility boundary: every use of Lightning's or torch's private API lives here, nowhere else.

Each entry names what it relies on; ``tests/test_compat.py`` exercises every one of them against the installed
``lightning`` and ``torch`` and fails loudly (naming the entry) when a release changes it. When that happens, fix
the entry here, with a fallback for the versions we still admit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.loss import _Loss

NORM_WITH_RUNNING_STATS: tuple[type[nn.Module], ...] = (_NormBase,)
"""Base class of BatchNorm*/InstanceNorm*/SyncBatchNorm (torch private ``_NormBase``; ``running_mean`` may be None)."""

BATCH_NORM: tuple[type[nn.Module], ...] = (_BatchNorm,)
"""Base class of BatchNorm1d/2d/3d and SyncBatchNorm, without InstanceNorm (torch private ``_BatchNorm``)."""

DROPOUT: tuple[type[nn.Module], ...] = (_DropoutNd,)
"""Base class of Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout (torch private ``_DropoutNd``)."""

LOSS: tuple[type[nn.Module], ...] = (_Loss,)
"""Base class of torch's loss modules (torch private ``_Loss``)."""


def logged_results(trainer: pl.Trainer) -> Mapping[str, Any] | None:
    """What the LightningModule logged in the running loop: Lightning's private ``trainer._results``.

    A mapping ``"<fx>.<name>" -> result`` whose values have ``meta`` (``fx``, ``name``, ``on_epoch``,
    ``is_mean_reduction``, ``dataloader_idx``, ``add_dataloader_idx``), ``is_tensor`` and ``value``; ``None``
    outside a loop or if Lightning changed it.
    """
    results = getattr(trainer, "_results", None)
    return results if results is not None and hasattr(results, "values") else None


def completed_epochs(trainer: pl.Trainer) -> int:
    """Training epochs completed in this trainer (Lightning's loop progress counters, not public API)."""
    return int(trainer.fit_loop.epoch_progress.current.completed)


def is_compiled(module: nn.Module) -> bool:
    """Was ``module`` (or a submodule) compiled with ``torch.compile``? Reads Lightning's private
    ``LightningModule._compiler_ctx`` and torch's ``OptimizedModule`` wrapper (matched by name: it is private too)."""
    if getattr(module, "_compiler_ctx", None) is not None:
        return True
    return any(type(m).__name__ == "OptimizedModule" for m in module.modules())


def module_slots(module: nn.Module) -> tuple[dict[str, Any], ...]:
    """The dicts a module keeps its parameters, buffers and children in (torch private ``_parameters``,
    ``_buffers``, ``_modules``): what ``module.weight`` resolves through, so swapping an entry swaps what forward
    reads without touching the tensor the user holds."""
    return module._parameters, module._buffers, module._modules


def foreach_norm(tensors: Sequence[Tensor], ord: float = 2, dtype: torch.dtype | None = None) -> list[Tensor]:
    """Norms of many tensors in one fused call (torch private ``_foreach_norm``)."""
    if dtype is None:
        return list(torch._foreach_norm(list(tensors), ord))
    return list(torch._foreach_norm(list(tensors), ord, dtype=dtype))


def foreach_sub(tensors: Sequence[Tensor], others: Sequence[Tensor]) -> list[Tensor]:
    """``tensors[i] - others[i]`` for many tensors in one fused call (torch private ``_foreach_sub``)."""
    return list(torch._foreach_sub(list(tensors), list(others)))
