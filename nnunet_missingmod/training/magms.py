"""MAG-MS: modality-agnostic learning through multi-modality self-distillation (He et al., ISBI 2024).

One network serves every subset of modalities with the same weights: an encoder per modality,
mean fusion of the present ones at every level, one shared decoder
(:mod:`nnunet_missingmod.networks.modality_fusion_unet`). Training supervises the fused output
and every single-modality output with nnU-Net's loss, and distils the fused path into each
single-modality path (KL on the predictions, MSE on the features). See docs/magms.md.
"""

from __future__ import annotations

import torch

from nnunet_missingmod.losses.self_distillation import distillation_kl, feature_mse
from nnunet_missingmod.modalities import available_modalities
from nnunet_missingmod.networks.modality_fusion_unet import FusionTrainingOutput, ModalityFusionUNet
from nnunet_missingmod.training.base import MissingModalityTrainer, unwrap
from nnunet_missingmod.training.nnunet_internals import segmentation_loss

__all__ = ["MAGMSTrainer", "MAGMSTrainerMasked", "MAGMSTrainerNoDistillation", "MAGMSTrainerNoFeatureDistillation",
           "MAGMSTrainerDetachedTarget", "MAGMSTrainerSampledPath", "MAGMSTrainerDecoderMean"]

Output = torch.Tensor | list[torch.Tensor]


class MAGMSTrainer(MissingModalityTrainer):
    """MAG-MS on nnU-Net. ``network_weights`` is the fusion network; ``nnUNetv2_predict`` runs it.

    Loss (the reference code's terms and weights)::

        L = seg(fused) + single_segmentation_weight * sum_m seg(single_m)
            + lambda * sum_m T^2 KL(fused || single_m)        (full-resolution output, per voxel)
            + gamma  * sum_m MSE(features_m, fused features)

    ``seg`` is nnU-Net's deep-supervised loss (DC+CE, or BCE+Dice for region datasets, where the
    KL is the Bernoulli KL of each region's sigmoid, averaged over the regions as nnU-Net's BCE
    averages them). A single-modality output counts only for the samples in which its modality is
    present.

    ``sgd_calibration`` is this port's: the reference trains with Adam, whose step is about the
    same size for every parameter whatever the scale of its gradient, so the sum over 1 + M paths
    is harmless there. Under nnU-Net's SGD the step is the gradient, and the shared decoder, which
    every path goes through, would step (1 + M) times as far as nnU-Net's. Two remedies, both
    keeping every ratio between the terms the reference's (docs/magms.md):

    - ``"loss"``: the loss divided by 1 + M. The decoder steps at nnU-Net's scale, each encoder at
      about 1 / (1 + M) of it (its own path and 1/M of the fused one, divided by 1 + M);
    - ``"shared_decoder"``: the decoder's gradient divided by the 1 + M paths that share it, each
      encoder and projection keeping the gradient of its own terms: every parameter near
      nnU-Net's scale, as Adam would have it.

    Class attributes (override in a subclass):
        self_distillation_weight: lambda, the weight of the KL term.
        feature_distillation_weight: gamma, the weight of the feature MSE.
        temperature: T of the KL term.
        single_segmentation_weight: weight of the single-modality segmentation losses.
        detach_fused_target: stop gradients into the fused side of KL and MSE (the reference
            code does not).
        sgd_calibration: ``"loss"``, ``"shared_decoder"`` (see above) or ``"none"`` (the reference's sum).
        sample_single_path: decode one present modality per sample instead of all M; the
            single-modality segmentation and KL of that path are scaled by the sample's number of
            present modalities (an unbiased estimate of their sum), the feature MSE stays exact.
        mask_modalities: randomly zero modalities in training (the paper trains with all).
    """

    mask_modalities = False
    self_distillation_weight: float = 1.0
    feature_distillation_weight: float = 1.0
    temperature: float = 1.0
    single_segmentation_weight: float = 1.0
    detach_fused_target: bool = False
    sgd_calibration: str = "loss"
    sample_single_path: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.sgd_calibration not in ("loss", "shared_decoder", "none"):
            raise ValueError(f"{type(self).__name__}.sgd_calibration must be 'loss', 'shared_decoder' or 'none', "
                             f"got {self.sgd_calibration!r}")
        if self.configuration_manager.previous_stage_name is not None:
            raise ValueError(f"{type(self).__name__} cannot train the cascade configuration {configuration}: its "
                             f"extra input channels (the previous stage's segmentation) are not modalities")
        self.single_modality_loss = None

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return ModalityFusionUNet.from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            enable_deep_supervision)

    def initialize(self):
        super().initialize()
        # Single-modality outputs are scored on the sub-batch that has the modality. Under DDP,
        # nnU-Net pools batch-Dice statistics over the ranks, which needs the same batch on every
        # rank; sub-batches differ, so this loss pools over this process's samples only.
        self.single_modality_loss = segmentation_loss(self, ddp=False) if self.is_ddp else self.loss
        if self.sgd_calibration == "shared_decoder":
            paths = 1 + len(self.modalities)
            for parameter in unwrap(self.network).decoder.parameters():
                parameter.register_hook(lambda gradient: gradient / paths)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"MAG-MS: lambda (self_distillation_weight) {self.self_distillation_weight}, gamma "
            f"(feature_distillation_weight) {self.feature_distillation_weight}, T {self.temperature}, single-modality "
            f"segmentation weight {self.single_segmentation_weight}, fused target detached: {self.detach_fused_target}, "
            f"SGD calibration: {self.sgd_calibration}, one single path decoded per sample: "
            f"{self.sample_single_path}")

    # --- training ------------------------------------------------------------------------------

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        data = batch["data"]
        if self.sample_single_path:
            output = self.network(data, single_paths=self.draw_single_paths(data))
        else:
            output = self.network(data)
        return self.compute_loss(output, batch["target"])

    def draw_single_paths(self, data: torch.Tensor) -> torch.Tensor:
        """Per sample, one of its present modalities, uniformly."""
        present = available_modalities(data)
        return torch.multinomial(present.float(), 1).squeeze(1)

    def compute_loss(self, output: FusionTrainingOutput, target: Output) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one training forward; the training loss is their sum."""
        present = output.present
        weights = present.t().float()  # (M, B): which (modality, sample) pairs count
        num_paths = 1 + present.shape[1]
        terms = {"segmentation_fused": self.loss(output.fused, target)}
        single = output.single
        if output.single_paths is not None:
            # one decoded path per sample stands for the sum over the sample's present modalities
            single_weights = present.sum(1).float().unsqueeze(0)  # (1, B)
            single_present = torch.ones_like(present[:, :1])
        else:
            single_weights, single_present = weights, present
        if self.single_segmentation_weight:
            segmentation = self.single_modality_segmentation(single, target, single_present)
            if output.single_paths is not None:
                segmentation = segmentation * single_weights.mean()
            terms["segmentation_single"] = self.single_segmentation_weight * segmentation
        if self.self_distillation_weight:
            teacher, student = _full_resolution(output.fused), _full_resolution(single)
            if self.detach_fused_target:
                teacher = teacher.detach()
            kl = distillation_kl(teacher.unsqueeze(0), student, self.label_manager.has_regions, self.temperature,
                                 channel_dim=2)
            terms["self_distillation"] = self.self_distillation_weight * _sum_over_present(kl, single_weights)
        if self.feature_distillation_weight:
            teacher = [f.unsqueeze(0) for f in output.fused_features]
            if self.detach_fused_target:
                teacher = [f.detach() for f in teacher]
            mse = feature_mse(teacher, output.single_features, channel_dim=2)
            terms["feature_distillation"] = self.feature_distillation_weight * _sum_over_present(mse, weights)
        if self.sgd_calibration == "loss":
            terms = {name: value / num_paths for name, value in terms.items()}
        return terms

    def single_modality_segmentation(self, single: Output, target: Output, present: torch.Tensor) -> torch.Tensor:
        """Sum over modalities of nnU-Net's loss on that modality's output, over the samples that have it."""
        everywhere, somewhere = present.all(0).tolist(), present.any(0).tolist()
        total = 0
        for m in range(present.shape[1]):
            output_m = [s[m] for s in single] if isinstance(single, list) else single[m]
            if everywhere[m]:
                total = total + self.single_modality_loss(output_m, target)
            elif somewhere[m]:
                keep = present[:, m]
                total = total + self.single_modality_loss(_samples(output_m, keep), _samples(target, keep))
        return total


class MAGMSTrainerMasked(MAGMSTrainer):
    """MAG-MS trained on randomly masked inputs: per sample one non-empty subset, drawn uniformly.

    The fused path then also learns means over 2..M-1 modalities, which inference uses and the
    paper's training never shows the decoder. Single-modality terms count only present modalities.
    """

    mask_modalities = True


class MAGMSTrainerNoDistillation(MAGMSTrainer):
    """The ablation without self-distillation: segmentation losses on the fused and single outputs only."""

    self_distillation_weight = 0.0
    feature_distillation_weight = 0.0


class MAGMSTrainerNoFeatureDistillation(MAGMSTrainer):
    """The ablation without the feature MSE (gamma = 0): the KL self-distillation alone."""

    feature_distillation_weight = 0.0


class MAGMSTrainerDetachedTarget(MAGMSTrainer):
    """The ablation whose fused output and features are detached as the distillation targets: the
    KL and feature terms move the single-modality paths only, never the fused path."""

    detach_fused_target = True


class MAGMSTrainerDecoderMean(MAGMSTrainer):
    """MAG-MS with the other SGD calibration: the shared decoder's gradient averaged over the 1 + M
    paths, every encoder and projection stepping on the gradient of its own terms."""

    sgd_calibration = "shared_decoder"


class MAGMSTrainerSampledPath(MAGMSTrainer):
    """MAG-MS at about half the cost: per sample the fused path and one randomly chosen present
    modality's path are decoded (2 decoder passes instead of 1 + M); same objective in expectation."""

    sample_single_path = True


def _full_resolution(output: Output) -> torch.Tensor:
    return output[0] if isinstance(output, list) else output


def _samples(x: Output, keep: torch.Tensor) -> Output:
    return [t[keep] for t in x] if isinstance(x, list) else x[keep]


def _sum_over_present(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(M, B)`` per-pair values -> per sample the sum over its present modalities, mean over samples."""
    return (values * weights).sum(0).mean()
