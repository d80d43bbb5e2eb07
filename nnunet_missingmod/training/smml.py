"""SMMLTrainer: Semantic-guided Masked Mutual Learning (Liang et al., AAAI 2025) on nnU-Net.

Two peer networks, each the plans' U-Net with its own weights, see every training sample under
two different modality subsets (the masking transform draws the pair). Each is trained with
nnU-Net's loss and, after the first 10% of the epochs, with hierarchical consistency constraints
that let it learn from its peer: at the pixel level where the peer is the more reliable one, at
the feature level through sample and class relations of the bottleneck features. With Segment
Anything priors on disk (``nnUNetv2_smml_priors``), a training-only refinement head per branch
refines the branch's prediction with the SAM maps of its present modalities and feeds a
consistency term back. Inference averages the two branches' logits inside one module, so
``nnUNetv2_predict`` deploys the pair. Formulas, choices and deviations: docs/smml.md.

Optimisation. ``self.network`` is the two-branch module, optimised by nnU-Net's SGD with one
parameter group per branch (SGD keeps its state per parameter, so this is two optimisers in one
object, with one checkpoint entry and one LR schedule) and with gradients clipped per branch. The
consistency terms detach the peer, so the sum of the two branches' losses, back-propagated once,
gives each branch exactly the gradient of its own loss: each branch learns at nnU-Net's rate, as
each of the official code's two optimisers steps on its own branch's loss. The refinement heads are
an auxiliary with their own SGD optimiser and schedule.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_missingmod.losses.consistency import (class_fractions, pixel_consistency, prior_consistency,
                                                  relation_consistency)
from nnunet_missingmod.networks.refinement_head import BranchRefinementHeads, RefinementHead
from nnunet_missingmod.networks.two_branch import TwoBranchNetwork
from nnunet_missingmod.priors.storage import PriorsMetadata, check_priors, prior_targets, priors_folder
from nnunet_missingmod.training.base import MissingModalityTrainer, unwrap
from nnunet_missingmod.training.prior_data_loader import PRIORS_KEY, DatasetWithPriors, PriorDataLoader

__all__ = ["SMMLTrainer", "SMMLTrainerNoPriors", "SMMLTrainerNoPixelConsistency",
           "SMMLTrainerNoFeatureConsistency", "SMMLTrainerNoConsistency"]

REFINEMENT = "refinement_heads"


def _full_resolution(output):
    return output[0] if isinstance(output, (list, tuple)) else output


class SMMLTrainer(MissingModalityTrainer):
    """SMML with every term on, the paper's setting (all weights 1).

    Class attributes (a subclass per setting, selected with ``-tr``):
        use_priors: use SAM priors when they are on disk (refinement heads + prior consistency).
        refinement_weight: weight of the refinement heads' own segmentation loss.
        refinement_head_features: width of each stage of a refinement head (its depth).
        prior_consistency_weight / prior_consistency_temperature: KL from a branch's refined
            prediction (detached) to the branch.
        pixel_consistency_weight / pixel_consistency_temperature: reliability-gated KL between the
            branches (pixel level).
        inter_sample_weight, inter_class_weight: relation matching of bottleneck features between
            the branches (feature level).
        consistency_start_fraction: the consistency terms are on from epoch
            ``ceil(fraction * num_epochs)``; before, each branch learns from the labels alone.
    """

    num_mask_views = 2  # two different non-empty subsets per sample, one per branch
    keep_unmasked_image = True  # each branch's input is built from the unmasked image and its mask

    use_priors: bool = True
    refinement_weight: float = 1.0
    refinement_head_features: tuple = (8, 16, 32)
    prior_consistency_weight: float = 1.0
    prior_consistency_temperature: float = 1.0
    pixel_consistency_weight: float = 1.0
    pixel_consistency_temperature: float = 2.0
    inter_sample_weight: float = 1.0
    inter_class_weight: float = 1.0
    consistency_start_fraction: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.priors_folder = priors_folder(self.preprocessed_dataset_folder_base,
                                           self.configuration_manager.data_identifier)
        self.priors_metadata: Optional[PriorsMetadata] = None
        self.refinement = None
        self.refinement_optimizer = None

    # --- network and optimisers ----------------------------------------------------------------

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> TwoBranchNetwork:
        branches = [nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                             num_output_channels, enable_deep_supervision)
                    for _ in range(2)]
        return TwoBranchNetwork(*branches)

    def configure_optimizers(self):
        branches = unwrap(self.network).branches
        return self.sgd([{"params": b.parameters(), "branch": i} for i, b in enumerate(branches)])

    def initialize(self):
        super().initialize()
        self.priors_metadata = self._find_priors()
        if self.priors_metadata is None:
            return
        heads = BranchRefinementHeads([
            RefinementHead.from_plans(self.configuration_manager, self.priors_metadata.num_channels,
                                      self.label_manager.num_segmentation_heads, self.refinement_head_features)
            for _ in range(2)])
        self.refinement_optimizer, schedule = self.sgd(heads.parameters())
        self.refinement = self.register_auxiliary(REFINEMENT, heads, self.refinement_optimizer, schedule)

    def _find_priors(self) -> Optional[PriorsMetadata]:
        if not self.use_priors:
            return None
        if not os.path.isdir(self.priors_folder):
            self.print_to_log_file(
                f"SMML: no Segment Anything priors in {self.priors_folder}; training without the refinement heads "
                f"and the prior consistency. Compute them with: nnUNetv2_smml_priors "
                f"-d {self.plans_manager.dataset_name} -c {self.configuration_name} -p {self.plans_manager.plans_name}")
            return None
        identifiers = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
        return check_priors(self.priors_folder, prior_targets(self.label_manager), self.modalities.names, identifiers)

    def _drop_refinement(self) -> None:
        self.auxiliaries.pop(REFINEMENT, None)
        self.refinement = self.refinement_optimizer = self.priors_metadata = None

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """The checkpoint decides whether the refinement heads exist, so that ``--c`` continues the
        method it started with (and ``--val`` works) whatever priors are on disk now."""
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, str):
            saved = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False).get("auxiliaries", {})
            if self.refinement is not None and REFINEMENT not in saved:
                self.print_to_log_file("SMML: the checkpoint was trained without priors; continuing without them "
                                       "(the priors on disk are not used)")
                self._drop_refinement()
            elif self.refinement is None and REFINEMENT in saved:
                self.print_to_log_file("SMML: WARNING: the checkpoint was trained with priors, which are not "
                                       "available now; continuing without the refinement heads")
        super().load_checkpoint(filename_or_checkpoint)

    # --- data ----------------------------------------------------------------------------------

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.priors_metadata is not None:
            dataset_tr = DatasetWithPriors(dataset_tr, self.priors_folder, len(self.modalities))
        return dataset_tr, dataset_val

    def data_loader_class(self) -> type:
        return super().data_loader_class() if self.priors_metadata is None else PriorDataLoader

    def on_train_start(self):
        super().on_train_start()
        priors = (f"{self.priors_metadata.model} maps of {len(self.priors_metadata.targets)} targets x "
                  f"{len(self.priors_metadata.modalities)} modalities from {self.priors_folder}"
                  if self.priors_metadata is not None else "none")
        self.print_to_log_file(f"SMML: two branches; priors: {priors}; consistency terms from epoch "
                               f"{self.consistency_start_epoch}")

    # --- training ------------------------------------------------------------------------------

    @property
    def consistency_start_epoch(self) -> int:
        return math.ceil(self.consistency_start_fraction * self.num_epochs)

    @property
    def consistency_active(self) -> bool:
        return self.current_epoch >= self.consistency_start_epoch

    def branch_inputs(self, batch: dict):
        """Each branch's input, the unmasked image with that branch's subset; and the masks (B, 2, M)."""
        image, masks = batch["data_unmasked"], batch["modality_mask"]
        shape = (masks.shape[0], masks.shape[2]) + (1,) * (image.ndim - 2)
        return tuple(image * masks[:, v].reshape(shape).to(image.dtype) for v in range(2)), masks

    def _branch_priors(self, priors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The priors of the modalities a branch sees; the others zeroed (channel k * M + m)."""
        b, m = mask.shape
        spatial = priors.shape[2:]
        per_target = priors.reshape(b, -1, m, *spatial) * mask.reshape(b, 1, m, *([1] * len(spatial))).to(priors.dtype)
        return per_target.reshape(priors.shape)

    def _consistency_target(self, target: torch.Tensor):
        """nnU-Net's full-resolution target as the consistency losses take it, and the valid voxels."""
        lm = self.label_manager
        if lm.has_regions:
            if lm.has_ignore_label:  # nnU-Net appends the ignore mask as the last region channel
                return target[:, :-1], target[:, -1:] == 0
            return target, None
        if lm.has_ignore_label:
            return target, target != lm.ignore_label
        return target, None

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def compute_losses(self, outputs: dict, target, masks: torch.Tensor, priors: Optional[torch.Tensor]) -> dict:
        """Every weighted loss term of one step. The consistency terms are reported as 0 before
        ``consistency_start_epoch``, so every epoch logs the same terms."""
        logits = outputs["logits"]
        full_logits = [_full_resolution(z) for z in logits]
        full_target = _full_resolution(target)
        labels, valid = self._consistency_target(full_target)
        regions = self.label_manager.has_regions
        active = self.consistency_active
        off = full_logits[0].new_zeros((), dtype=torch.float32)

        terms = {"branch_segmentation": self.loss(logits[0], target) + self.loss(logits[1], target)}
        if self.refinement is not None:
            full_resolution_loss = self.loss.loss if isinstance(self.loss, DeepSupervisionWrapper) else self.loss
            refined = self.refinement([self._branch_priors(priors, masks[:, v]) for v in range(2)],
                                      [self._probabilities(z).detach() for z in full_logits])
            terms["refinement"] = self.refinement_weight * sum(full_resolution_loss(r, full_target) for r in refined)
            if self.prior_consistency_weight:
                terms["prior_consistency"] = self.prior_consistency_weight * sum(
                    prior_consistency(z, r, regions, self.prior_consistency_temperature, valid)
                    for z, r in zip(full_logits, refined)) if active else off
        if self.pixel_consistency_weight:
            terms["pixel_consistency"] = self.pixel_consistency_weight * pixel_consistency(
                *full_logits, labels, regions, self.pixel_consistency_temperature, valid) if active else off
        if self.inter_sample_weight or self.inter_class_weight:
            terms["feature_consistency"] = self._feature_consistency(outputs["bottleneck"], labels, valid) \
                if active else off
        return terms

    def _feature_consistency(self, features, labels: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        fractions = class_fractions(labels, self.label_manager.has_regions, self.label_manager.num_segmentation_heads,
                                    features[0].shape[2:], valid)
        return relation_consistency(*features, fractions, self.inter_sample_weight, self.inter_class_weight)

    def clip_groups(self) -> dict:
        """Each branch clipped on its own, as each has its own optimiser in the official code."""
        groups = {f"branch_{i}": b.parameters() for i, b in enumerate(unwrap(self.network).branches)}
        if self.refinement is not None:
            groups[REFINEMENT] = self.refinement.parameters()
        return groups

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        (x0, x1), masks = self.branch_inputs(batch)
        priors = None
        if self.refinement is not None:
            if PRIORS_KEY not in batch:
                raise RuntimeError("SMMLTrainer uses priors but the batch has none; build the loaders with "
                                   "get_dataloaders()")
            priors = batch[PRIORS_KEY]
        return self.compute_losses(self.network(x0, x1), batch["target"], masks, priors)


class SMMLTrainerNoPriors(SMMLTrainer):
    """Without the SAM priors (no refinement heads), even when they are on disk."""

    use_priors = False


class SMMLTrainerNoPixelConsistency(SMMLTrainer):
    """Without the pixel-level (reliability-gated KL) consistency."""

    pixel_consistency_weight = 0.0


class SMMLTrainerNoFeatureConsistency(SMMLTrainer):
    """Without the feature-level (sample and class relation) consistency."""

    inter_sample_weight = 0.0
    inter_class_weight = 0.0


class SMMLTrainerNoConsistency(SMMLTrainer):
    """Two branches trained independently on different subsets and averaged: the ablation without
    mutual learning and priors."""

    use_priors = False
    pixel_consistency_weight = 0.0
    inter_sample_weight = 0.0
    inter_class_weight = 0.0
