"""MAG-MS under the reference code's optimiser, to test whether its loss weights mean something
else under nnU-Net's SGD (docs/magms.md, "Is the miss the port's?").

The reference (``kisonho/magnet``) trains with Adam (lr 2e-4, amsgrad, weight decay 1e-5, poly
decay) on the plain sum of its 1 + M segmentation losses and 2M distillation terms, every gradient
element clamped to [-1, 1]. Adam rescales each parameter's step by its own gradient history, so the
loss weights lambda = gamma = 1 act there in another way than under SGD, where a term's gradient is
its step. These trainers keep everything of MAGMSTrainer and its distillation-free ablation except
that recipe. Not part of the package: an experiment, found by nnU-Net through ``nnUNet_extTrainer``:

    nnUNet_extTrainer=benchmarks/reference_optimiser nnUNetv2_train 982 2d 0 -tr MAGMSTrainerReferenceOptimiser
"""

import torch

from nnunet_missingmod.training import MAGMSTrainer, MAGMSTrainerNoDistillation
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


class ReferenceOptimiser:
    """The reference's recipe, mixed in before a MAGMS trainer."""

    reference_lr = 2e-4
    reference_weight_decay = 1e-5
    gradient_value_clamp = 1.0
    sgd_calibration = "none"  # the reference's sum: Adam does not need the loss brought to SGD's scale
    gradient_clip = float("inf")  # no norm clip; every element clamped instead (below)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.reference_lr, amsgrad=True,
                                     weight_decay=self.reference_weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.reference_lr, self.num_epochs)

    def initialize(self):
        super().initialize()
        bound = self.gradient_value_clamp
        for parameter in self.network.parameters():  # the reference's gradient hook: clamp, NaN -> 0
            parameter.register_hook(lambda g: torch.nan_to_num(g, nan=0.0).clamp(-bound, bound))


class MAGMSTrainerReferenceOptimiser(ReferenceOptimiser, MAGMSTrainer):
    pass


class MAGMSTrainerNoDistillationReferenceOptimiser(ReferenceOptimiser, MAGMSTrainerNoDistillation):
    pass
