"""The baseline every method must beat: nnUNetTrainer trained on randomly masked modalities."""

from nnunet_missingmod.training.base import MissingModalityTrainer


class ModalityDropoutTrainer(MissingModalityTrainer):
    """Per sample, one non-empty subset of the modalities drawn uniformly; the rest are zeroed.

    Network, loss and train step are nnU-Net's; only the input is masked (in the augmentation
    pipeline, after every intensity transform). Predicts with any subset through
    ``nnUNetv2_predict`` (missing channels as all-zero images) or ``nnUNetv2_predict_missing``.
    """
