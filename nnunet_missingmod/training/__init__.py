"""Trainers, one a module. Everything in ``__all__`` is visible to nnU-Net's ``-tr`` lookup."""

from nnunet_missingmod.training.base import MissingModalityTrainer
from nnunet_missingmod.training.modality_dropout import ModalityDropoutTrainer

__all__ = ["MissingModalityTrainer", "ModalityDropoutTrainer"]
