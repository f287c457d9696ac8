"""The pack on the libraries Lightning users train with: Hugging Face, timm, smp, pytorch-forecasting, PyG.

Each client is a healthy program that learns (real ``Trainer.fit``, a small random-init model built from a config,
offline data made here or shipped with scikit-learn): the pack must stay quiet on it and never fail internally. The
libraries come with the ``clients`` extra (``pip install -e ".[dev,clients]"``); without one, its tests are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_sanity as ls
from lightning_sanity import Finding, Severity
from lightning_sanity.demos import DigitImages

VOCAB = 100
PAD = 0
SEQ_LEN = 16


def describe(findings: list[Finding]) -> str:
    """Every finding on one line each, so that a failing assertion shows what the pack said."""
    return "\n".join(f"{f.severity} {f.code} [{f.subject}] x{f.count}: {f.message}" for f in findings) or "none"


class Program(NamedTuple):
    """A client program, and the logged metric that shows it learned: ``metric`` ends below ``learned_below``.

    The bound sits about half-way between what the untrained model scores and what the program reaches, so that
    it holds on any machine and still fails for a program that does not learn.
    """

    module: pl.LightningModule
    train: Any
    val: Any
    epochs: int
    metric: str
    learned_below: float


def fit_quietly(make_trainer: Callable[..., pl.Trainer], program: Program) -> None:
    """``Trainer.fit`` with the default pack: no WARNING or ERROR finding, no internal error, and the model learned."""
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=program.epochs)
    trainer.fit(program.module, program.train, program.val)
    findings = ls.collect_findings(trainer)
    loud = [f for f in findings if f.severity >= Severity.WARNING or f.code == "sanity.internal_error"]
    assert loud == [], f"findings on a healthy program:\n{describe(findings)}"
    reached = float(trainer.callback_metrics[program.metric])
    assert reached < program.learned_below, f"not a healthy program: {program.metric} ended at {reached:.3f}"


class DictDataset(Dataset):
    """Rows of equally long tensors served as dicts, as Hugging Face collators produce them."""

    def __init__(self, **columns: Tensor) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: column[index] for key, column in self.columns.items()}


class HFModule(pl.LightningModule):
    """A Hugging Face model whose loss is the one it computes itself from the batch's ``labels``."""

    def __init__(self, model: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def padded(ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``ids`` cut to random lengths (6 to ``SEQ_LEN``), padded with ``PAD``; the ids and the attention mask."""
    lengths = torch.randint(6, SEQ_LEN + 1, (len(ids), 1), generator=generator)
    mask = torch.arange(SEQ_LEN) < lengths
    return ids.masked_fill(~mask, PAD), mask.long()


def tiny_bert(**kwargs: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN,
        **kwargs,
    )


def sentiment_data(n: int, seed: int) -> DictDataset:
    """Sequences whose class is the vocabulary half most of their tokens come from (80 %, the rest anywhere)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    half = (VOCAB - 2) // 2
    own = 2 + labels[:, None] * half + torch.randint(0, half, (n, SEQ_LEN), generator=generator)
    noise = torch.randint(2, VOCAB, (n, SEQ_LEN), generator=generator)
    ids = torch.where(torch.rand(n, SEQ_LEN, generator=generator) < 0.8, own, noise)
    ids, mask = padded(ids, generator)
    return DictDataset(input_ids=ids, attention_mask=mask, labels=labels)


def tagging_data(n: int, seed: int) -> DictDataset:
    """Sequences tagged token by token with the third of the vocabulary each token is in; -100 on padding."""
    generator = torch.Generator().manual_seed(seed)
    ids, mask = padded(torch.randint(3, VOCAB, (n, SEQ_LEN), generator=generator), generator)
    tags = ((ids - 3) * 3 // (VOCAB - 3)).masked_fill(mask == 0, -100)
    return DictDataset(input_ids=ids, attention_mask=mask, labels=tags)


def markov_text(n: int, seed: int) -> Tensor:
    """Token sequences from a sparse Markov chain (each token has two successors): an LM can learn ~ln(2) nats."""
    generator = torch.Generator().manual_seed(0)
    successors = torch.randint(1, VOCAB, (VOCAB, 2), generator=generator)
    generator.manual_seed(seed)
    ids = torch.empty(n, SEQ_LEN, dtype=torch.long)
    ids[:, 0] = torch.randint(1, VOCAB, (n,), generator=generator)
    for t in range(1, SEQ_LEN):
        pick = torch.randint(0, 2, (n,), generator=generator)
        ids[:, t] = successors[ids[:, t - 1], pick]
    return ids


def loaders(train: Dataset, val: Dataset, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def bert_sequence_program() -> Program:
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForSequenceClassification(tiny_bert(num_labels=2))
    train, val = loaders(sentiment_data(512, seed=1), sentiment_data(128, seed=2))
    return Program(HFModule(model), train, val, epochs=4, metric="val_loss", learned_below=0.35)  # ln 2 = 0.69


def bert_token_program() -> Program:
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForTokenClassification(tiny_bert(num_labels=3))
    train, val = loaders(tagging_data(512, seed=1), tagging_data(128, seed=2))
    return Program(HFModule(model), train, val, epochs=4, metric="val_loss", learned_below=0.5)  # ln 3 = 1.10


def gpt2_program() -> Program:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=SEQ_LEN)

    def text(n: int, seed: int) -> DictDataset:
        ids = markov_text(n, seed)
        # labels=input_ids is right: the model shifts them inside, predicting token t+1 from tokens <= t.
        return DictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)

    train, val = loaders(text(512, seed=1), text(128, seed=2))
    # Uniform guessing scores ln 99 = 4.6 nats, knowing the chain ln 2 = 0.69.
    return Program(HFModule(transformers.GPT2LMHeadModel(config)), train, val, 4, "val_loss", learned_below=3.0)


class ImageClassifier(pl.LightningModule):
    """A timm backbone trained with cross-entropy on integer class labels."""

    def __init__(self, net: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digit_images(split: str) -> DigitImages:
    """scikit-learn digits as 3x32x32 tensors, normalised with the training split's own statistics."""
    from torchvision import transforms

    # The rendered digits' pixel mean and std on the [0, 1] scale (train split, all channels alike).
    normalize = transforms.Normalize([0.3091] * 3, [0.3238] * 3)
    return DigitImages(transforms.Compose([transforms.ToTensor(), normalize]), split=split)  # type: ignore[arg-type]


def timm_program() -> Program:
    timm = pytest.importorskip("timm")
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    train, val = loaders(digit_images("train"), digit_images("val"))
    return Program(ImageClassifier(net), train, val, epochs=3, metric="val_loss", learned_below=1.0)  # ln 10 = 2.3


def shapes(n: int, seed: int, size: int = 32) -> tuple[Tensor, Tensor]:
    """Noisy RGB images of one disc (class 1, red) and one square (class 2, green) on background 0; their masks."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx, r = torch.randint(6, size - 6, (2,), generator=generator).tolist() + [
            int(torch.randint(3, 7, (1,), generator=generator))
        ]
        masks[i][(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 1
        y0, x0 = torch.randint(0, size - 8, (2,), generator=generator).tolist()
        side = int(torch.randint(4, 9, (1,), generator=generator))
        masks[i, y0 : y0 + side, x0 : x0 + side] = 2
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    images = colours[masks].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=generator)
    return (images - images.mean()) / images.std(), masks


class Segmenter(pl.LightningModule):
    """An smp model trained with an smp loss on ``[N, H, W]`` integer masks."""

    def __init__(self, net: nn.Module, loss: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def tensor_loaders(train: tuple[Tensor, ...], val: tuple[Tensor, ...], batch_size: int) -> tuple[DataLoader, ...]:
    return loaders(TensorDataset(*train), TensorDataset(*val), batch_size)


def smp_program() -> Program:
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=3, decoder_channels=(64, 32, 16, 16, 8))
    module = Segmenter(net, smp.losses.DiceLoss("multiclass"))
    train, val = tensor_loaders(shapes(256, seed=1), shapes(64, seed=2), batch_size=32)
    return Program(module, train, val, epochs=3, metric="val_loss", learned_below=0.4)


def sine_waves(series: int = 8, length: int = 160, offset: float = 0.0, scale: float = 1.0) -> Any:
    """A long-format frame of noisy sine waves, one period and phase per series."""
    pd = pytest.importorskip("pandas")
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(length, dtype=torch.float32)
    frames = []
    for s in range(series):
        period = 12.0 + 4.0 * s
        phase = float(torch.rand(1, generator=generator)) * 2 * math.pi
        value = torch.sin(2 * math.pi * t / period + phase) + 0.1 * torch.randn(length, generator=generator)
        frames.append(pd.DataFrame({"series": str(s), "time_idx": t.long().numpy(), "value": value.numpy()}))
    frame = pd.concat(frames, ignore_index=True)
    frame["value"] = offset + scale * frame["value"]
    return frame


def forecasting_program(frame: Any, **dataset_options: Any) -> tuple[pl.LightningModule, DataLoader, DataLoader]:
    """pytorch-forecasting's own N-BEATS and its own dataloaders on ``frame``; the last 24 steps validate."""
    forecasting = pytest.importorskip("pytorch_forecasting")
    cutoff = int(frame["time_idx"].max()) - 24
    training = forecasting.TimeSeriesDataSet(
        frame[frame["time_idx"] <= cutoff],
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        max_encoder_length=24,
        max_prediction_length=6,
        time_varying_unknown_reals=["value"],
        **dataset_options,
    )
    validation = forecasting.TimeSeriesDataSet.from_dataset(training, frame, min_prediction_idx=cutoff + 1)
    model = forecasting.NBeats.from_dataset(training, learning_rate=1e-2, widths=[32, 32], backcast_loss_ratio=0.1)
    return (
        model,
        training.to_dataloader(train=True, batch_size=32, num_workers=0),
        validation.to_dataloader(train=False, batch_size=64, num_workers=0),
    )


def nbeats_program() -> Program:
    # Forecasting the series' mean scores a mean absolute error of 2/pi = 0.64 on these unit sine waves.
    return Program(*forecasting_program(sine_waves()), epochs=3, metric="val_MAE", learned_below=0.4)


def block_graph(features_leak_label: bool = False) -> Any:
    """A 3-block stochastic block model (300 nodes) whose 16 node features are noisy one-hots of the block."""
    pyg = pytest.importorskip("torch_geometric")
    generator = torch.Generator().manual_seed(0)
    sizes = [100, 100, 100]
    probs = torch.full((3, 3), 0.01).fill_diagonal_(0.08)
    torch.manual_seed(0)  # stochastic_blockmodel_graph draws from the global generator
    edge_index = pyg.utils.stochastic_blockmodel_graph(sizes, probs)
    y = torch.arange(3).repeat_interleave(100)
    x = torch.randn(300, 16, generator=generator)
    x[:, :3] += 0.8 * F.one_hot(y, 3)
    if features_leak_label:
        x[:, 3] = y.float()
    split = torch.rand(300, generator=generator)
    return pyg.data.Data(x=x, edge_index=edge_index, y=y, train_mask=split < 0.6, val_mask=split >= 0.6)


class NodeClassifier(pl.LightningModule):
    """A two-layer GCN trained full-batch: one graph per step, losses on the train and val node masks."""

    def __init__(self, in_features: int, num_classes: int, lr: float = 1e-2) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1 = GCNConv(in_features, 32)
        self.conv2 = GCNConv(32, num_classes)
        self.lr = lr

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv2(F.dropout(F.relu(self.conv1(x, edge_index)), 0.5, self.training), edge_index)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        logits = self(batch.x, batch.edge_index)
        loss = F.cross_entropy(logits[batch.train_mask], batch.y[batch.train_mask])
        self.log("train_loss", loss, batch_size=1)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits = self(batch.x, batch.edge_index)
        self.log("val_loss", F.cross_entropy(logits[batch.val_mask], batch.y[batch.val_mask]), batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=5e-4)


def graph_loaders(graph: Any) -> tuple[Any, Any]:
    from torch_geometric.loader import DataLoader as GraphLoader

    return GraphLoader([graph], batch_size=1), GraphLoader([graph], batch_size=1)


def gcn_program() -> Program:
    train, val = graph_loaders(block_graph())
    return Program(NodeClassifier(16, 3), train, val, epochs=40, metric="val_loss", learned_below=0.6)  # ln 3 = 1.10


@pytest.mark.slow
@pytest.mark.parametrize(
    "program",
    [bert_sequence_program, bert_token_program, gpt2_program, timm_program, smp_program, nbeats_program, gcn_program],
    ids=lambda program: program.__name__.removesuffix("_program"),
)
def test_healthy_client_is_quiet(make_trainer: Callable[..., pl.Trainer], program: Callable[[], Program]) -> None:
    pl.seed_everything(0, verbose=False)
    fit_quietly(make_trainer, program())


def nbeats_unscaled_targets() -> tuple[pl.LightningModule, Any, Any]:
    """BUG: a series around -2700 with no target normaliser; N-BEATS reads the raw history as its encoder input."""
    return forecasting_program(sine_waves(offset=-2700.0, scale=50.0), target_normalizer=None)


def gcn_label_as_feature() -> tuple[pl.LightningModule, Any, Any]:
    """BUG: node feature 3 is a copy of the label."""
    return (NodeClassifier(16, 3), *graph_loaders(block_graph(features_leak_label=True)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "broken, code",
    [(nbeats_unscaled_targets, "input.unscaled"), (gcn_label_as_feature, "data.target_in_input")],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_broken_client_is_caught(
    make_trainer: Callable[..., pl.Trainer], broken: Callable[[], tuple[Any, Any, Any]], code: str
) -> None:
    """The library's own batches are read (no ``sanity.skipped [batch]``) and the twin's bug is found in one epoch."""
    pl.seed_everything(0, verbose=False)
    module, train, val = broken()
    trainer = make_trainer(callbacks=ls.default_callbacks(), max_epochs=1)
    trainer.fit(module, train, val)
    findings = ls.collect_findings(trainer)
    assert code in {f.code for f in findings if f.severity >= Severity.WARNING}, describe(findings)
    assert not [f for f in findings if f.key == ("sanity.skipped", "batch") or f.code == "sanity.internal_error"]
