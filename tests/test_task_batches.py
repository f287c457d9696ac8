"""The default pack on batches that are not ``(x, y)``: a full-batch graph (node masks) and forecasting dicts.

Both programs are written here in plain torch (no torch_geometric, no pytorch-forecasting), with the structures those
libraries give a Trainer: a graph object with ``x``, ``y``, ``edge_index`` and ``train_mask``/``val_mask``, and
``(x: dict[str, Tensor], (target, weight))`` batches. The healthy ones must get every check and no WARNING/ERROR;
their broken twins must be caught; a batch nobody can read is said once, with a ``batch_adapter`` that works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import lightning_sanity as ls
from lightning_sanity import Finding, Severity

NODES, BLOCKS, FEATURES = 300, 3, 16


def describe(findings: list[Finding]) -> str:
    return "\n".join(f"{f.severity} {f.code} [{f.subject}] x{f.count}: {f.message}" for f in findings) or "none"


def loud(findings: list[Finding]) -> list[Finding]:
    """Findings a healthy program must not get: WARNING/ERROR, internal errors, batches not understood."""
    return [
        f
        for f in findings
        if f.severity >= Severity.WARNING or f.code == "sanity.internal_error" or f.key == ("sanity.skipped", "batch")
    ]


# ---- a graph: node classification on a stochastic block model, full batch -----------------------------------------


class Graph:
    """What a PyG ``Data`` holds for node classification (attribute access, no torch_geometric)."""

    def __init__(self, x: Tensor, y: Tensor, edge_index: Tensor, train_mask: Tensor, val_mask: Tensor) -> None:
        self.x, self.y, self.edge_index = x, y, edge_index
        self.train_mask, self.val_mask = train_mask, val_mask


def block_graph(label_as_feature: bool = False) -> Graph:
    """3 blocks of 100 nodes (edge probability 0.08 inside a block, 0.01 across); 16 features, noisy block one-hots."""
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(BLOCKS).repeat_interleave(NODES // BLOCKS)
    probability = torch.where(y[:, None] == y[None, :], 0.08, 0.01)
    upper = (torch.rand(NODES, NODES, generator=generator) < probability).triu(1)
    edge_index = (upper | upper.T).nonzero().T.contiguous()
    x = torch.randn(NODES, FEATURES, generator=generator)
    x[:, :BLOCKS] += 0.8 * F.one_hot(y, BLOCKS)
    if label_as_feature:
        x[:, 3] = y.float()  # the bug: the label copied into the node features
    split = torch.rand(NODES, generator=generator)
    return Graph(x, y, edge_index, train_mask=split < 0.6, val_mask=split >= 0.6)


class GraphConv(nn.Module):
    """Kipf & Welling's graph convolution by scatter-add: symmetric normalisation with self-loops."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        loops = torch.arange(x.shape[0], device=x.device)
        source, target = torch.cat([edge_index[0], loops]), torch.cat([edge_index[1], loops])
        degree = torch.zeros(x.shape[0], device=x.device).index_add(0, target, torch.ones_like(target, dtype=x.dtype))
        weight = (degree[source] * degree[target]).rsqrt()
        h = self.linear(x)
        return torch.zeros_like(h).index_add(0, target, h[source] * weight[:, None])


class NodeClassifier(pl.LightningModule):
    """A two-layer GCN; each split's loss is computed on the nodes of its mask."""

    def __init__(self, dropout_in_eval: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = GraphConv(FEATURES, 32), GraphConv(32, BLOCKS)
        self.dropout_in_eval = dropout_in_eval

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        hidden = F.relu(self.conv1(x, edge_index))
        # the bug of the twin: dropout that ignores the mode
        hidden = F.dropout(hidden, 0.5, training=self.training or self.dropout_in_eval)
        return self.conv2(hidden, edge_index)

    def training_step(self, batch: Graph, batch_idx: int) -> Tensor:
        logits = self(batch.x, batch.edge_index)
        loss = F.cross_entropy(logits[batch.train_mask], batch.y[batch.train_mask])
        self.log("train_loss", loss, batch_size=1)
        return loss

    def validation_step(self, batch: Graph, batch_idx: int) -> None:
        logits = self(batch.x, batch.edge_index)
        self.log("val_loss", F.cross_entropy(logits[batch.val_mask], batch.y[batch.val_mask]), batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=5e-4)


def fit_graph(make_trainer: Callable[..., pl.Trainer], module: NodeClassifier, graph: Graph) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=30)
    loader = DataLoader([graph], batch_size=None)  # one graph per step, as PyG's loader gives a full-batch graph
    trainer.fit(module, loader, loader)
    return trainer


def test_healthy_graph_gets_every_check_and_no_finding(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = fit_graph(make_trainer, NodeClassifier(), block_graph())
    findings = ls.collect_findings(trainer)
    assert loud(findings) == [], describe(findings)
    # the stochastic-evaluation replay ran on the whole graph: nothing skipped by ModeGuard
    assert not [f for f in findings if f.code == "sanity.skipped" and f.callback == "ModeGuardCallback"]
    assert float(trainer.callback_metrics["val_loss"]) < 0.6, "not a healthy program"  # ln 3 = 1.10
    # the evaluation reads the per-node outputs cut to the val nodes, as the step does: a node confusion matrix
    assert not [f for f in findings if f.code == "eval.not_classification" or f.key == ("sanity.skipped", "pairing")]
    confusion = next(cb for cb in trainer.callbacks if isinstance(cb, ls.ConfusionCallback))
    assert confusion.task is not None and confusion.task.kind == "multiclass" and confusion.task.num_classes == BLOCKS
    matrix = confusion.confusion_matrices["val"]
    assert matrix.shape == (BLOCKS, BLOCKS) and int(matrix.sum()) == int(block_graph().val_mask.sum())
    assert confusion.summaries["val"].accuracy > 0.8


def test_graph_with_the_label_as_a_node_feature(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = fit_graph(make_trainer, NodeClassifier(), block_graph(label_as_feature=True))
    findings = ls.collect_findings(trainer)
    [leak] = [f for f in findings if f.code == "data.target_in_input"]
    # the loss was read on the training nodes only, as the step computes it
    assert leak.evidence["column"] == 3 and leak.evidence["samples"] == int(block_graph().train_mask.sum())
    assert not [f for f in findings if f.key == ("sanity.skipped", "batch") or f.code == "sanity.internal_error"]


def test_graph_with_dropout_left_on_in_evaluation(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = fit_graph(make_trainer, NodeClassifier(dropout_in_eval=True), block_graph())
    findings = ls.collect_findings(trainer)
    [stochastic] = [f for f in findings if f.code == "mode.stochastic_eval"]
    assert stochastic.severity is Severity.ERROR and stochastic.evidence["samples"] == NODES  # replayed whole


# ---- forecasting: (x dict, (target, weight)) batches ---------------------------------------------------------------

ENCODER, HORIZON = 24, 6


class Windows(Dataset):
    """Windows of noisy sine waves: 24 past values in, the next 6 out; ``offset``/``scale`` move the targets only."""

    def __init__(self, n: int, seed: int, offset: float = 0.0, scale: float = 1.0) -> None:
        generator = torch.Generator().manual_seed(seed)
        t = torch.arange(ENCODER + HORIZON, dtype=torch.float32)
        period = 8.0 + 16.0 * torch.rand(n, 1, generator=generator)
        phase = 2 * math.pi * torch.rand(n, 1, generator=generator)
        values = torch.sin(2 * math.pi * t / period + phase) + 0.1 * torch.randn(n, len(t), generator=generator)
        self.past, self.future = values[:, :ENCODER], offset + scale * values[:, ENCODER:]

    def __len__(self) -> int:
        return len(self.past)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.past[index], self.future[index]


def collate(items: list[tuple[Tensor, Tensor]]) -> tuple[dict[str, Tensor], tuple[Tensor, None]]:
    """pytorch-forecasting's batch layout: an input dict, and the target with its (absent) weight."""
    past = torch.stack([past for past, _ in items])
    x = {
        "encoder_cat": torch.zeros(len(items), ENCODER, 0, dtype=torch.long),
        "encoder_cont": past[..., None],
        "encoder_lengths": torch.full((len(items),), ENCODER),
        "decoder_lengths": torch.full((len(items),), HORIZON),
    }
    return x, (torch.stack([future for _, future in items]), None)


class Forecaster(pl.LightningModule):
    """An MLP from the encoder window to the horizon; ``forward`` takes the input dict, as the library's models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(ENCODER, 64), nn.ReLU(), nn.Linear(64, HORIZON))

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return self.net(x["encoder_cont"][..., 0])

    def _loss(self, batch: tuple[dict[str, Tensor], tuple[Tensor, None]]) -> Tensor:
        x, (target, _) = batch
        return F.mse_loss(self(x), target)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def fit_forecaster(make_trainer: Callable[..., pl.Trainer], offset: float = 0.0, scale: float = 1.0) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    train = DataLoader(Windows(512, 1, offset, scale), batch_size=32, shuffle=True, collate_fn=collate)
    val = DataLoader(Windows(128, 2, offset, scale), batch_size=64, collate_fn=collate)
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=3)
    trainer.fit(Forecaster(), train, val)
    return trainer


def test_healthy_forecaster_gets_every_check_and_no_finding(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = fit_forecaster(make_trainer)
    findings = ls.collect_findings(trainer)
    assert loud(findings) == [], describe(findings)
    # predicting the mean scores the variance of a unit sine wave plus noise, about 0.51
    assert float(trainer.callback_metrics["val_loss"]) < 0.3, "not a healthy program"


def test_forecaster_on_unscaled_targets(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = fit_forecaster(make_trainer, offset=-2700.0, scale=50.0)
    findings = ls.collect_findings(trainer)
    [unscaled] = [f for f in findings if f.code == "target.unscaled"]
    assert unscaled.evidence["target_mean"] == pytest.approx(-2700, abs=50)
    assert not [f for f in findings if f.key == ("sanity.skipped", "batch") or f.code == "sanity.internal_error"]


# ---- a batch nobody understands ------------------------------------------------------------------------------------


class Nested(Dataset):
    """Items whose tensors sit under names the pack does not know."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.features = torch.randn(96, 8, generator=generator)
        self.answers = (self.features[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"sample": {"measurements": self.features[index]}, "answer": self.answers[index]}


class NestedClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["sample"]["measurements"]), batch["answer"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_an_unread_batch_is_said_once_with_an_adapter_that_reads_it(make_trainer: Callable[..., pl.Trainer]) -> None:
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=2)
    trainer.fit(NestedClassifier(), DataLoader(Nested(), batch_size=16))
    [skipped] = [f for f in ls.collect_findings(trainer) if f.key == ("sanity.skipped", "batch")]
    assert skipped.severity is Severity.INFO and skipped.count > 1
    assert set(skipped.evidence["skipped"]) == {
        "BatchStatsCallback",
        "ConfusionCallback",
        "RegressionCallback",
        "MultiLabelCallback",
        "ModelChecksCallback",
    }
    example = skipped.evidence["adapter_example"]
    assert example == "lambda batch: (batch['sample']['measurements'], batch['answer'])" and example in skipped.hint

    adapter = eval(example)  # the hint's adapter, as a user would paste it
    trainer = make_trainer(callbacks=ls.default_callbacks(batch_adapter=adapter), max_epochs=2)
    trainer.fit(NestedClassifier(), DataLoader(Nested(), batch_size=16))
    findings = ls.collect_findings(trainer)
    assert not [f for f in findings if f.key == ("sanity.skipped", "batch")], describe(findings)
