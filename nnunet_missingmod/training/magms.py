"""MAG-MS: modality-agnostic learning through multi-modality self-distillation (He et al., ISBI 2024).

One network serves every subset of modalities with the same weights: an encoder per modality,
mean fusion of the present ones at every level, one shared decoder
(:mod:`nnunet_missingmod.networks.modality_fusion_unet`). Training supervises the fused output
and every single-modality output with nnU-Net's loss, and distils the fused path into each
single-modality path (KL on the predictions, MSE on the features). See docs/magms.md.
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_missingmod.losses.self_distillation import distillation_kl, feature_mse
from nnunet_missingmod.networks.modality_fusion_unet import FusionTrainingOutput, ModalityFusionUNet
from nnunet_missingmod.training.base import MissingModalityTrainer

__all__ = ["MAGMSTrainer", "MAGMSTrainerMasked", "MAGMSTrainerNoDistillation"]

Output = torch.Tensor | list[torch.Tensor]


class MAGMSTrainer(MissingModalityTrainer):
    """MAG-MS on nnU-Net. ``network_weights`` is the fusion network; ``nnUNetv2_predict`` runs it.

    Loss (defaults as the paper and its reference code)::

        L = seg(fused) + single_segmentation_weight * sum_m seg(single_m)
            + lambda * sum_m T^2 KL(fused || single_m)       (full-resolution output, per voxel)
            + gamma  * sum_m MSE(features_m, fused features)  (every encoder level, after projection)

    ``seg`` is nnU-Net's deep-supervised loss (DC+CE, or BCE+Dice for region datasets, where the
    KL is the Bernoulli KL of each region's sigmoid). A single-modality output counts only for the
    samples in which its modality is present.

    Class attributes (override in a subclass):
        self_distillation_weight: lambda, the weight of the KL term.
        feature_distillation_weight: gamma, the weight of the feature MSE.
        temperature: T of the KL term.
        single_segmentation_weight: weight of the single-modality segmentation losses.
        detach_fused_target: stop gradients into the fused side of KL and MSE (the reference
            code does not).
        mask_modalities: randomly zero modalities in training (the paper trains with all).
    """

    mask_modalities = False
    self_distillation_weight: float = 1.0
    feature_distillation_weight: float = 1.0
    temperature: float = 1.0
    single_segmentation_weight: float = 1.0
    detach_fused_target: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
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
        self.single_modality_loss = self._build_single_modality_loss()

    def _build_single_modality_loss(self):
        """nnU-Net's loss, for outputs scored on the sub-batch of samples that have the modality.

        Under DDP, nnU-Net's batch Dice all-gathers per-sample statistics, which needs the same
        batch on every rank; sub-batches differ between ranks, so here the Dice statistics are
        pooled over this process's samples only (without DDP the loss is nnU-Net's own).
        """
        if not self.is_ddp:
            return self.loss
        self.is_ddp = False
        try:
            return self._build_loss()
        finally:
            self.is_ddp = True

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"MAG-MS: lambda (self_distillation_weight) {self.self_distillation_weight}, gamma "
            f"(feature_distillation_weight) {self.feature_distillation_weight}, T {self.temperature}, single-modality "
            f"segmentation weight {self.single_segmentation_weight}, fused target detached: {self.detach_fused_target}")

    # --- training ------------------------------------------------------------------------------

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            terms = self.compute_loss(output, target)
            loss = sum(terms.values())

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), **{k: float(v.detach()) for k, v in terms.items()}}

    def compute_loss(self, output: FusionTrainingOutput, target: Output) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one training forward; the training loss is their sum."""
        present = output.present
        weights = present.t().float()  # (M, B): which (modality, sample) pairs count
        terms = {"segmentation_fused": self.loss(output.fused, target)}
        if self.single_segmentation_weight:
            terms["segmentation_single"] = self.single_segmentation_weight * self.single_modality_segmentation(
                output.single, target, present)
        if self.self_distillation_weight:
            teacher, student = _full_resolution(output.fused), _full_resolution(output.single)
            if self.detach_fused_target:
                teacher = teacher.detach()
            kl = distillation_kl(teacher.unsqueeze(0), student, self.temperature,
                                 multilabel=self.label_manager.has_regions, channel_dim=2)
            terms["self_distillation"] = self.self_distillation_weight * _sum_over_present(kl, weights)
        if self.feature_distillation_weight:
            teacher = [f.unsqueeze(0) for f in output.fused_features]
            if self.detach_fused_target:
                teacher = [f.detach() for f in teacher]
            mse = feature_mse(teacher, output.single_features, channel_dim=2)
            terms["feature_distillation"] = self.feature_distillation_weight * _sum_over_present(mse, weights)
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


def _full_resolution(output: Output) -> torch.Tensor:
    return output[0] if isinstance(output, list) else output


def _samples(x: Output, keep: torch.Tensor) -> Output:
    return [t[keep] for t in x] if isinstance(x, list) else x[keep]


def _sum_over_present(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(M, B)`` per-pair values -> per sample the sum over its present modalities, mean over samples."""
    return (values * weights).sum(0).mean()
