"""A loss computed inside the model (Hugging Face ``labels=``): its learnability against the entropy of its targets.

Real ``Trainer.fit`` runs of tiny random-init Hugging Face models. Triggers: a causal LM whose labels are random
tokens, or whose ``input_ids`` were shuffled across the batch while the labels were kept (nothing beyond the token
frequencies is learnable), and a sequence classifier on random labels: ``eval.loss_at_prior``. Healthy twins: the
same models on data with structure (a sparse Markov chain, sentiment by vocabulary half) stay quiet.
``benchmarks/calibrate_internal_loss.py`` runs these programs over seeds, learning rates and sizes.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from test_clients import SEQ_LEN, VOCAB, DictDataset, HFModule, markov_text, sentiment_data, tiny_bert
from torch import nn
from torch.utils.data import DataLoader

from lightning_sanity import ConfusionCallback, Severity, collect_findings
from lightning_sanity.position_prior import entropy_levels
from lightning_sanity.target_prior import PositionTokenCounts, UnigramCounts, position_entropy

transformers = pytest.importorskip("transformers")

LM_BUGS = ("random labels", "shuffled inputs")
POSITIONAL_BUGS = ("labels of another phrase sequence",)
"""Nothing learnable from the input but where each target tends to be (QA program t21): the position prior is the
bar."""
CLASSIFIER_BUGS = ("random labels",)


def lm_data(n: int, seed: int, bug: str | None) -> DictDataset:
    """Markov-chain token sequences with ``labels=input_ids`` (GPT-2 shifts them inside), or one of ``LM_BUGS``."""
    ids = markov_text(n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    if bug == "labels of another phrase sequence":  # positional text: the targets depend on their position only
        return phrase_data(n, seed, shuffled_labels=True)
    labels = ids
    if bug == "random labels":
        labels = torch.randint(1, VOCAB, ids.shape, generator=generator)
    elif bug == "shuffled inputs":  # the inputs of other rows: the labels' own history is never seen
        ids = ids[torch.randperm(n, generator=generator)]
    return DictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def phrase_text(n: int, seed: int) -> torch.Tensor:
    """Sequences of 4-token phrases drawn from 8 fixed ones: each phrase starts at a fixed offset, so a token's
    position alone says much about it (its offset in the phrase), and its history says the rest of its phrase."""
    phrases = torch.randint(1, VOCAB, (8, 4), generator=torch.Generator().manual_seed(1234))
    picks = torch.randint(0, len(phrases), (n, SEQ_LEN // 4), generator=torch.Generator().manual_seed(seed))
    return phrases[picks].reshape(n, SEQ_LEN)


def phrase_data(n: int, seed: int, shuffled_labels: bool = False) -> DictDataset:
    """Phrase text with ``labels=input_ids``, or with the labels of another sequence (a shuffled copy)."""
    ids = phrase_text(n, seed)
    labels = ids[torch.randperm(n, generator=torch.Generator().manual_seed(seed + 100))] if shuffled_labels else ids
    return DictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def classifier_data(n: int, seed: int, bug: str | None) -> DictDataset:
    data = sentiment_data(n, seed)
    if bug == "random labels":
        data.columns["labels"] = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed + 100))
    return data


def gpt2(seed: int, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=width, n_layer=2, n_head=2, n_positions=SEQ_LEN)
    return transformers.GPT2LMHeadModel(config)


def bert(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(tiny_bert(num_labels=2))


def program(
    task: str, bug: str | None, seed: int = 0, n: int = 128, batch: int = 4, lr: float = 3e-3
) -> tuple[pl.LightningModule, DataLoader, DataLoader]:
    """A causal LM (``"lm"``) or a sequence classifier (``"classifier"``) with its train and val loaders."""
    data, model = (lm_data, gpt2) if task == "lm" else (classifier_data, bert)
    train = DataLoader(data(n, seed + 1, bug), batch_size=batch, shuffle=True)
    val = DataLoader(data(max(n // 4, 32), seed + 2, bug), batch_size=16)
    return HFModule(model(seed), lr=lr), train, val


def run(make_trainer: Any, task: str, bug: str | None, epochs: int = 4, **kwargs: Any) -> tuple[Any, ConfusionCallback]:
    pl.seed_everything(kwargs.get("seed", 0), verbose=False)
    module, train, val = program(task, bug, **kwargs)
    callback = ConfusionCallback(figure_every_n_epochs=0)
    trainer = make_trainer(callbacks=[callback], max_epochs=epochs)
    trainer.fit(module, train, val)
    return trainer, callback


def loud(trainer: Any) -> list[str]:
    return [f"{f.code} [{f.subject}]: {f.message}" for f in collect_findings(trainer) if f.severity >= Severity.WARNING]


@pytest.mark.parametrize("bug", LM_BUGS + POSITIONAL_BUGS)
def test_causal_lm_that_learns_only_token_frequencies_is_loss_at_prior(make_trainer: Any, bug: str) -> None:
    trainer, callback = run(make_trainer, "lm", bug)
    [finding] = [f for f in collect_findings(trainer) if f.code == "eval.loss_at_prior"]
    assert finding.severity is Severity.WARNING and finding.standing, loud(trainer)
    assert finding.evidence["shifted_targets"] is True  # GPT-2 shifts the labels inside: counted as it reads them
    assert finding.evidence["epoch_losses"][-1] >= finding.evidence["prior_floor"]
    if bug == "labels of another phrase sequence":  # the unigram entropy is beaten: the position prior is the bar
        assert finding.evidence["bar"] == "position prior", finding.evidence
        assert finding.evidence["position_prior_entropy"] < finding.evidence["prior_entropy"]
        assert "from its position in the sequence alone" in finding.message
        return
    assert finding.evidence["bar"] == "unigram prior" and "labels" in finding.hint
    assert "entropy of the frequencies" in finding.message
    watch = callback.internal_loss
    assert watch is not None and watch.train_prior is not None
    assert watch.train_prior.entropy < torch.log(torch.tensor(float(VOCAB))).item()  # the prior, not ln V


def test_causal_lm_on_text_with_structure_is_quiet(make_trainer: Any) -> None:
    trainer, callback = run(make_trainer, "lm", None)
    assert loud(trainer) == []
    watch = callback.internal_loss
    assert watch is not None and watch.train_prior is not None
    assert callback.train_losses.epoch_losses[-1] < watch.train_prior.entropy - 0.5  # learned below the prior
    skipped = [f for f in collect_findings(trainer) if f.code == "sanity.skipped" and f.subject == "pairing"]
    assert skipped and "learnability is still judged" in skipped[0].message


def test_causal_lm_on_positional_text_is_quiet(make_trainer: Any) -> None:
    """The healthy twin of "labels of another phrase sequence": the same phrases with ``labels=input_ids`` beat the
    position prior (the phrase is read from its first token)."""
    pl.seed_everything(0, verbose=False)
    callback = ConfusionCallback(figure_every_n_epochs=0)
    trainer = make_trainer(callbacks=[callback], max_epochs=4)
    train, val = DataLoader(phrase_data(128, 1), batch_size=4, shuffle=True), DataLoader(phrase_data(32, 2), 16)
    trainer.fit(HFModule(gpt2(0)), train, val)
    assert loud(trainer) == []
    watch = callback.internal_loss
    assert watch is not None and watch.train_prior is not None and watch.train_prior.position is not None
    assert watch.train_prior.by_position  # the position prior is the bar, and the model went below it
    assert callback.train_losses.epoch_losses[-1] < watch.train_prior.entropy


def test_position_counts_shift_leave_out_ignored_targets_and_stay_within_budget() -> None:
    labels = torch.tensor([[5, 1, 2, -100], [2, 3, 3, 3]])
    counts = PositionTokenCounts(4, shifted=True)
    counts.update(labels)
    assert counts.compute()[:3].tolist() == [[0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]]  # -100 left out
    assert labels.tolist() == [[5, 1, 2, -100], [2, 3, 3, 3]]  # the user's tensor untouched
    large = PositionTokenCounts(50257, shifted=True)  # GPT-2's vocabulary on 1024-token sequences
    large.update(torch.randint(0, 50257, (2, 1025)))
    assert large.counts.numel() <= (1 << 22) + 50258 and large.width == 16  # buckets of 16 positions, 32 MB
    assert int(large.compute().sum()) == 2 * 1024


def test_position_entropy_is_held_out_not_the_plug_in() -> None:
    """Few sequences per position on a large vocabulary: the plug-in ``H(target | position)`` and its Miller-Madow
    correction lie far below what a model ignoring its input scores; the held-out estimate does not."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 2000, (100, 64), generator=generator)  # uniform: any input-free model scores ln 2000
    counts = torch.zeros(64, 2000, dtype=torch.long)
    counts.scatter_add_(1, targets.T, torch.ones_like(targets.T))
    prior = position_entropy(counts, 1)
    assert prior is not None
    per_position = entropy_levels(counts.T)[0][1]  # Miller-Madow at one position per bucket
    assert per_position < 5.5 < 7.6 - 0.1 < prior.entropy  # ln 2000 = 7.6


def test_sequence_classifier_on_random_labels_gets_a_learnability_verdict(make_trainer: Any) -> None:
    """A HF classifier's ``.logits`` against the batch's ``labels`` reproduce its own loss: the run is judged as the
    classification it is (confusion matrix, learnability verdicts), not as a loss computed inside the model."""
    trainer, callback = run(make_trainer, "classifier", "random labels", epochs=5, n=96)
    assert callback.task is not None and callback.task.kind == "multiclass" and callback.internal_loss is None
    assert {"eval.chance_level", "eval.prediction_collapse"} & {f.code for f in collect_findings(trainer)}


def test_sequence_classifier_on_a_learnable_task_is_quiet(make_trainer: Any) -> None:
    trainer, _ = run(make_trainer, "classifier", None, epochs=5, n=96)
    assert loud(trainer) == []


def test_unigram_counts_leave_out_ignored_targets_and_shift_like_a_causal_lm() -> None:
    labels = torch.tensor([[5, 1, 1, -100], [2, 3, 3, 3]])
    shifted = UnigramCounts(4, shifted=True)
    shifted.update(labels)
    assert shifted.compute().tolist() == [0, 2, 0, 3]  # the first position of each row is no target
    plain = UnigramCounts(6, shifted=False)
    plain.update(labels)
    assert plain.compute().tolist() == [0, 2, 1, 3, 0, 1]
    assert labels.tolist() == [[5, 1, 1, -100], [2, 3, 3, 3]]  # the user's tensor untouched


class ScaledLossLM(nn.Module):
    """Returns twice the shifted cross-entropy as its ``loss``: no cross-entropy of its logits gives it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Any:
        logits = self.embed(input_ids)
        loss = 2 * nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return transformers.modeling_outputs.CausalLMOutput(loss=loss, logits=logits)


def test_an_internal_loss_its_logits_do_not_give_is_not_judged(make_trainer: Any) -> None:
    """The targets are confirmed before they are counted: an unconfirmed loss gets the INFO and no verdict."""
    pl.seed_everything(0, verbose=False)
    data = lm_data(32, 1, None)
    trainer = make_trainer(callbacks=[ConfusionCallback(figure_every_n_epochs=0)], max_epochs=1)
    trainer.fit(HFModule(ScaledLossLM()), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    [skipped] = [f for f in collect_findings(trainer) if f.code == "sanity.skipped"]
    assert "nor its learnability" in skipped.message
    assert "eval.loss_at_prior" not in {f.code for f in collect_findings(trainer)}
