"""Metrics whose per-batch update only queues its inputs, folded a few batched kernels at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchmetrics import Metric
from typing_extensions import override

FOLD_BATCHES = 32
"""Queued batches that trigger a fold."""
FOLD_VALUES = 1 << 22
"""Queued values (elements of the queued tensors) that trigger a fold earlier: bounds the queue's memory (16 MB of
float32)."""


class FoldingMetric(Metric):
    """A :class:`~torchmetrics.Metric` whose :meth:`update` queues what it needs of a batch (small copies, never a
    view of the user's tensors); :meth:`fold` merges the queue into the states in one go.

    Folding happens once ``fold_batches`` batches or ``fold_values`` values are queued, and always before the states
    are read: before :meth:`sync` (so ``compute()`` and the DDP gather see every batch) and :meth:`state_dict`.
    :meth:`reset` drops the queue. Per batch this is a list append plus the copies, instead of one small kernel
    launch (and Python dispatch) per statistic: on CPU and GPU alike that dispatch, not the arithmetic, is the cost.

    Example::

        class Total(FoldingMetric):
            def __init__(self) -> None:
                super().__init__()
                self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")

            def update(self, values: Tensor) -> None:
                self.queue(values.detach().clone(), values.numel())

            def _fold(self, pending: list[Any]) -> None:
                self.total += torch.cat(pending).sum()
    """

    def __init__(self, fold_batches: int = FOLD_BATCHES, fold_values: int = FOLD_VALUES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fold_batches = fold_batches
        self.fold_values = fold_values
        self._pending: list[Any] = []
        self._pending_values = 0

    def queue(self, item: Any, values: int) -> None:
        """Queue one batch's ``item`` (holding ``values`` tensor elements); fold when the queue is full."""
        self._pending.append(item)
        self._pending_values += values
        if len(self._pending) >= self.fold_batches or self._pending_values >= self.fold_values:
            self.fold()

    def fold(self) -> None:
        """Merge every queued batch into the states."""
        pending, self._pending, self._pending_values = self._pending, [], 0
        if pending:
            self._fold(pending)

    def _fold(self, pending: list[Any]) -> None:
        """Add the queued items (in update order) to the states."""
        raise NotImplementedError

    @override
    def sync(
        self,
        dist_sync_fn: Callable | None = None,
        process_group: Any | None = None,
        should_sync: bool = True,
        distributed_available: Callable | None = None,
    ) -> None:
        # compute() always passes through here (gathering only when distributed): the states must be complete first
        self.fold()
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    @override
    def state_dict(self, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        self.fold()
        return super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    @override
    def reset(self) -> None:
        self._pending, self._pending_values = [], 0
        super().reset()
