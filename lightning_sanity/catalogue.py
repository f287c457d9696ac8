"""The catalogue of finding codes: each code declared once, with its default severity, owner, meaning and fix.

Codes are API (never renamed once released). ``docs/findings.md`` documents each one under its owner's section;
``tests/test_catalogue.py`` proves the two agree and that every code used in the package is declared here.
Adding a code is one line: a :class:`FindingCode` entry in ``_CODES`` (one entry per line, hence no line limit).
"""

# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lightning_sanity.findings import Severity

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclass(frozen=True)
class FindingCode:
    """One declared finding code.

    Attributes:
        code: The stable dotted identifier, e.g. ``"input.unscaled"``.
        severity: Default severity; a user can re-grade it with ``severity={code: ...}``.
        owner: The callback class that makes it (``"SanityCallback"`` for findings of the shared base).
        meaning: One line saying what the finding means.
        hint: One line saying how to fix it (the call site's hint names the culprit and is preferred).
    """

    code: str
    severity: Severity
    owner: str
    meaning: str
    hint: str


_CODES: tuple[FindingCode, ...] = (
    # SanityCallback (shared)
    FindingCode("sanity.internal_error", WARNING, "SanityCallback", "A check raised and was skipped; training continued.", "Report it with the traceback (logger 'lightning_sanity' at DEBUG level)."),
    FindingCode("sanity.skipped", INFO, "SanityCallback", "A callback could not read (inputs, targets) from a batch and skipped its batch checks.", "Pass batch_adapter=lambda batch: (inputs, targets)."),
    FindingCode("sanity.duplicate", INFO, "SanityCallback", "A second callback with the class and options of an earlier one runs no check; its attributes read the earlier one's.", "Remove it, or give it other options to run a different check."),
    FindingCode("sanity.recomputed", INFO, "ConfusionCallback", "No logits were found in the step's output or forward calls; one extra forward pass computes them.", "Return the logits from the step or call self(x) in it."),
    # TransformParityCallback
    FindingCode("transform.normalize_scale", ERROR, "TransformParityCallback", "A Normalize step's mean/std are on another scale than the tensor it receives.", "Put the constants on the scale the step receives (divide by 255 after ToTensor)."),
    FindingCode("transform.normalize_missing", ERROR, "TransformParityCallback", "One split normalises and another does not.", "Add the same Normalize(mean, std) to the other pipeline."),
    FindingCode("transform.normalize_mismatch", ERROR, "TransformParityCallback", "Both splits normalise, with materially different mean/std.", "Normalise every split with the training split's mean/std."),
    FindingCode("transform.scaling_mismatch", ERROR, "TransformParityCallback", "Pixel scaling differs across splits ([0, 1] in one, 0-255 in another).", "Convert images the same way in every split before any Normalize."),
    FindingCode("transform.random_in_eval", WARNING, "TransformParityCallback", "A val/test pipeline contains random augmentation.", "Use deterministic transforms in evaluation, e.g. Resize + CenterCrop."),
    FindingCode("transform.output_mismatch", WARNING, "TransformParityCallback", "A train item and a val/test item differ in shape or dtype.", "Make the final steps of both pipelines produce the same size and dtype."),
    FindingCode("data.split_overlap", ERROR, "TransformParityCallback", "The val/test dataloader shares samples with the train dataloader.", "Split once into disjoint index sets and build each split from its own part."),
    FindingCode("data.eval_on_train", INFO, "TransformParityCallback", "A val/test dataloader deliberately evaluates the training dataset itself: its metrics are training-set metrics.", "Nothing, if training accuracy is what you want; measure generalisation on a disjoint split."),
    FindingCode("transform.unreachable", INFO, "TransformParityCallback", "No transform was found on a dataloader's dataset; its pipeline checks were skipped.", "Expose the pipeline as a `transform` attribute to have it checked."),
    # BatchStatsCallback
    FindingCode("input.non_finite", ERROR, "BatchStatsCallback", "Float model inputs of a split contain NaN or Inf.", "Find the source in the dataset/transforms; impute or drop those samples."),
    FindingCode("input.unscaled", WARNING, "BatchStatsCallback", "Float inputs look like raw 0-255 pixels or unstandardised features.", "Scale pixels to [0, 1] then Normalize; standardise features with training statistics."),
    FindingCode("input.collapsed", ERROR, "BatchStatsCallback", "Every channel of the inputs is nearly constant.", "Use normalisation constants on the scale of the tensor; check the loader."),
    FindingCode("input.split_shift", ERROR, "BatchStatsCallback", "Train and val/test inputs come from clearly different distributions.", "Make scaling/normalisation identical in every split."),
    FindingCode("data.identical_samples", ERROR, "BatchStatsCallback", "Every sample of each of the first training batches is the same input.", "Make the Dataset's __getitem__ use its index; check transforms and collate_fn."),
    FindingCode("target.single_class_batches", WARNING, "BatchStatsCallback", "Most early training batches hold a single class (unshuffled, class-sorted data).", "DataLoader(..., shuffle=True) or a RandomSampler/DistributedSampler(shuffle=True)."),
    FindingCode("target.shape", WARNING, "BatchStatsCallback", "Class-index targets are shaped (N, 1) instead of (N,).", "Return a plain int label, or target.view(-1) before the loss and metrics."),
    FindingCode("target.imbalance", INFO, "BatchStatsCallback", "The most frequent class is at least 10x as frequent as the rarest.", "Report balanced accuracy; consider class weights or a WeightedRandomSampler."),
    FindingCode("target.mask_interpolated", WARNING, "BatchStatsCallback", "Segmentation masks went through bilinear/bicubic interpolation: ids blended at region borders (or fractional float ids).", "Resample masks with InterpolationMode.NEAREST; with transforms.v2 wrap them in tv_tensors.Mask."),
    # GradientFlowCallback
    FindingCode("grad.missing", ERROR, "GradientFlowCallback", "Trainable parameters had no gradient in every checked step.", "Remove the cut in the graph or the unused layer, or freeze it with requires_grad_(False)."),
    FindingCode("grad.cleared_before_step", ERROR, "GradientFlowCallback", "Backward computed gradients, but .grad was empty when the optimizer stepped.", "Call zero_grad() before backward or after step, never between them."),
    FindingCode("grad.zero", WARNING, "GradientFlowCallback", "Parameters whose whole gradient was exactly zero in every checked step.", "Default initialisation, LeakyReLU/GELU, no activation on the logits, a lower learning rate."),
    FindingCode("grad.vanishing", WARNING, "GradientFlowCallback", "The first layers' relative gradients are orders of magnitude below the last layers'.", "ReLU/GELU, normalisation layers, residual connections, Kaiming/Xavier initialisation."),
    FindingCode("grad.exploding", ERROR, "GradientFlowCallback", "The total gradient norm grew by exploding_growth or more over its start.", "Lower the learning rate, add gradient_clip_val, normalise inputs/targets."),
    FindingCode("grad.non_finite", ERROR, "GradientFlowCallback", "NaN or Inf in the gradients of a checked step.", "Find the operation with Trainer(detect_anomaly=True); add epsilons/clamps; lower the learning rate."),
    FindingCode("param.not_updated", ERROR, "GradientFlowCallback", "Trainable parameters with gradients are not optimised, or their update is undone.", "Pass self.parameters() to the optimizer, or freeze them with requires_grad_(False)."),
    FindingCode("update.too_small", WARNING, "GradientFlowCallback", "No layer's update moved its weights by more than min_update_ratio of their norm.", "Raise the learning rate or use Tuner.lr_find."),
    FindingCode("update.too_large", WARNING, "GradientFlowCallback", "The median layer's update exceeded max_update_ratio times its weight norm.", "Lower the learning rate 10-100x, add warm-up."),
    FindingCode("update.lr_collapsed", WARNING, "GradientFlowCallback", "Before half the planned optimizer steps, the LR schedule took every learning rate below 1/1000 of its peak.", "Check the scheduler's interval ('step' vs 'epoch') and the units of step_size/T_max/milestones."),
    FindingCode("grad.not_reset", ERROR, "GradientFlowCallback", "Gradients are never reset between optimizer steps: every step applies the sum of all past gradients.", "Call opt.zero_grad() after opt.step(); to accumulate on purpose, reset after every k-th step."),
    FindingCode("param.unused", INFO, "GradientFlowCallback", "Trainable parameters in modules that forward never called in the checked steps, or whose output the step received beside other outputs and left out of the loss: they never train.", "Nothing to do if deliberate (a library model built larger than used, an extra output); otherwise call the layer in forward, use its output in the loss, or delete it."),
    FindingCode("param.plain_tensor", WARNING, "GradientFlowCallback", "A module holds a tensor as a plain attribute: not a parameter (never optimised) nor a buffer (not saved, not moved).", "nn.Parameter(...) for values to learn; register_buffer(name, tensor) for constants."),
    # ConfusionCallback
    FindingCode("eval.prediction_collapse", ERROR, "ConfusionCallback", "Nearly all predictions on a split fall in one class while the targets do not.", "Check label alignment and shuffling, return raw logits, check the learning rate."),
    FindingCode("eval.chance_level", WARNING, "ConfusionCallback", "After training had its chance, validation accuracy is within noise of chance.", "Check label alignment, the val transforms, the learning rate."),
    FindingCode("eval.below_chance", ERROR, "ConfusionCallback", "Accuracy is far below what predictions ignoring the labels would get: systematically wrong classes.", "Use one label encoding for train and eval; check the eval targets are not reordered."),
    FindingCode("eval.imbalance_masked", WARNING, "ConfusionCallback", "Accuracy looks acceptable only because one class dominates.", "Report balanced accuracy / per-class recall; class weights or a WeightedRandomSampler."),
    FindingCode("eval.metric_mismatch", ERROR, "ConfusionCallback", "A logged accuracy disagrees with the accuracy accumulated over the same batches.", "Accumulate with += and reset per epoch, or log a torchmetrics Accuracy object."),
    FindingCode("eval.loss_at_chance", WARNING, "ConfusionCallback", "The epoch-mean training loss sits flat at ln(C).", "Check labels, remove activations on the logits, check gradient flow and the learning rate."),
    FindingCode("eval.loss_at_prior", WARNING, "ConfusionCallback", "A loss computed inside the model never went below the entropy of its targets' frequencies.", "Check that the labels belong to their inputs and that the model receives its input."),
    FindingCode("output.activated", WARNING, "ConfusionCallback", "The outputs used as logits already went through a softmax, sigmoid or ReLU.", "Return raw logits from forward; apply softmax/sigmoid only for inference outputs."),
    FindingCode("eval.not_classification", INFO, "ConfusionCallback", "The split's targets are not class indices; the callback leaves it alone.", "Nothing for regression/multi-label; for classification return [N, C] logits and int targets."),
    # RegressionCallback
    FindingCode("eval.regression_at_mean", WARNING, "RegressionCallback", "After training had its chance, validation predictions do no better than predicting the training targets' mean (R² within noise of 0, or constant predictions).", "Standardise the targets; check that targets belong to their inputs and that forward uses its input; check the learning rate."),
    # MultiLabelCallback
    FindingCode("eval.multilabel_collapse", ERROR, "MultiLabelCallback", "A multi-label model predicts the same label set (every label negative, or only the prevalent labels) for nearly every sample while the targets vary.", "Check the targets are aligned with the inputs, raw logits into BCEWithLogitsLoss, pos_weight, the learning rate."),
    FindingCode("eval.multilabel_chance_level", WARNING, "MultiLabelCallback", "After training had its chance, no label of a multi-label model is predicted better than chance.", "Check label alignment, the train/val preprocessing, the learning rate."),
    FindingCode("eval.multilabel_metric_mismatch", ERROR, "MultiLabelCallback", "A logged multi-label F1 or accuracy matches none of the correct readings (micro/macro/weighted/samples F1, subset/Hamming accuracy) of the same batches.", "Accumulate with += and reset per epoch, or log a torchmetrics MultilabelF1Score / MultilabelAccuracy object."),
    # ModeGuardCallback
    FindingCode("mode.train_in_eval", ERROR, "ModeGuardCallback", "Mode-dependent modules are in training mode during evaluation.", "Remove the .train() calls from evaluation steps and hooks."),
    FindingCode("mode.bn_updated_in_eval", ERROR, "ModeGuardCallback", "BatchNorm running statistics changed during an evaluation run.", "Keep evaluation in eval mode so the statistics only learn from training data."),
    FindingCode("mode.params_changed_in_eval", ERROR, "ModeGuardCallback", "Parameters changed during an evaluation run.", "Evaluation must not change weights; swap EMA weights per evaluation, never per batch."),
    FindingCode("mode.eval_in_train", WARNING, "ModeGuardCallback", "Modules trained in training mode are in eval mode at a later training batch.", "Restore the mode after a probe: module.train(was_training)."),
    FindingCode("mode.stochastic_eval", ERROR, "ModeGuardCallback", "In eval mode, two forward passes of the same samples give different outputs.", "Pass training=self.training to F.dropout; guard sampling with `if self.training`."),
    FindingCode("mode.grad_in_eval", INFO, "ModeGuardCallback", "Autograd is enabled while the model runs during evaluation.", "Wrap only the code that needs gradients; keep Trainer(inference_mode=True)."),
    FindingCode("mode.bn_tiny_batch", WARNING, "ModeGuardCallback", "BatchNorm layers in training mode normalise batches too small for meaningful batch statistics.", "Use GroupNorm/LayerNorm/InstanceNorm, a larger batch per device, or BatchNorm frozen in eval mode."),
    FindingCode("mode.eval_frozen_but_trained", WARNING, "ModeGuardCallback", "A submodule put in eval mode to freeze it keeps training: its weights are optimised and move.", "module.requires_grad_(False) and leave its parameters out of the optimizer; .eval() only freezes BatchNorm statistics and dropout."),
    # ModelChecksCallback
    FindingCode("loss.init_high", WARNING, "ModelChecksCallback", "The first class loss is far above what an untrained model gives (ln C).", "Keep default or Kaiming/Xavier inits and a small last layer; remove logit scales; check the labels."),
    FindingCode("model.batch_mixing", ERROR, "ModelChecksCallback", "In eval mode, one sample's outputs depend on another sample's inputs.", "Use permute/transpose instead of view on the batch dimension; reduce over the right axis; allow_batch_mixing=True for set models."),
    FindingCode("model.input_independent", ERROR, "ModelChecksCallback", "The model's outputs do not depend on its inputs.", "Find where forward drops its input (multiplied by zero, replaced, detached)."),
    FindingCode("input.layout_scrambled", WARNING, "ModelChecksCallback", "The images are far smoother read as channels-last: a channels-last array was made channels-first with reshape.", "Use permute(0, 3, 1, 2) / transpose(2, 0, 1) or transforms.ToTensor() instead of reshape/view."),
    FindingCode("loss.softmax_multilabel", ERROR, "ModelChecksCallback", "Softmax cross-entropy (or NLL of log_softmax) is trained on multi-hot targets: the labels of a row compete for one unit of probability.", "Use BCEWithLogitsLoss / binary_cross_entropy_with_logits on the multi-hot targets and a sigmoid per label at inference."),
    FindingCode("target.unscaled", WARNING, "ModelChecksCallback", "Regression targets of an MSE/L1-type loss lie far beyond the untrained model's output scale: the model learns little more than their mean.", "Standardise the targets with training-split statistics (invert it on the predictions), or build mean and std into the head."),
    FindingCode("data.target_in_input", ERROR, "ModelChecksCallback", "The target is a copy of something the model receives: token labels equal to the input ids under an unshifted loss, or a feature column equal to (an affine function of) the label.", "Shift the labels for next-token prediction (logits[:, :-1] vs labels[:, 1:]); drop the target column from the features."),
)  # fmt: skip

CATALOGUE: Mapping[str, FindingCode] = MappingProxyType({entry.code: entry for entry in _CODES})
"""Every declared finding code, by code."""


def declared(code: str) -> FindingCode | None:
    """The catalogue entry of ``code``, or ``None`` for a code nobody declared (e.g. a test's own callback)."""
    return CATALOGUE.get(code)


def validate_ignore(ignore: Iterable[str] | None) -> frozenset[str]:
    """Check user-given codes to silence; unknown codes fail fast with :class:`ValueError`."""
    if ignore is None:
        return frozenset()
    if isinstance(ignore, str) or not isinstance(ignore, Iterable):
        raise ValueError(f"ignore must be a list of finding codes, got {ignore!r}")
    codes = frozenset(ignore)
    _require_declared(codes, "ignore")
    return codes


def validate_severity(severity: Mapping[str, str | int | Severity] | None) -> dict[str, Severity]:
    """Check user-given ``{code: severity}`` re-grading; unknown codes or severities fail fast with ValueError."""
    if severity is None:
        return {}
    if not isinstance(severity, Mapping):
        raise ValueError(f"severity must be a mapping of finding code to 'info'/'warning'/'error', got {severity!r}")
    _require_declared(severity.keys(), "severity")
    return {code: Severity.parse(value) for code, value in severity.items()}


def _require_declared(codes: Iterable[str], option: str) -> None:
    unknown = sorted(str(code) for code in codes if code not in CATALOGUE)
    if unknown:
        raise ValueError(
            f"{option} names unknown finding code(s) {unknown}; known codes are listed in docs/findings.md"
        )
