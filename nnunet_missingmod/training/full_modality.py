"""The no-masking reference of studies: nnUNetTrainer exactly, with the project's training-length
overrides (so that it trains for the same number of iterations as the method trainers)."""

from nnunet_missingmod.training.base import MissingModalityTrainer


class FullModalityTrainer(MissingModalityTrainer):
    """nnU-Net's network, loss, augmentation and train step on all modalities, never masked.

    What a plain nnU-Net user has: fed zero-filled channels at test time, it shows how far a model
    that never saw a missing modality falls. ``nnUNetv2_train ... -tr nnUNetTrainer`` trains the
    same model but ignores the ``nnUNet_missingmod_*`` length variables.
    """

    mask_modalities = False
