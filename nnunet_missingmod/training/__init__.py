"""Trainers, one a module. Everything in ``__all__`` is visible to nnU-Net's ``-tr`` lookup."""

from nnunet_missingmod.training.base import MissingModalityTrainer
from nnunet_missingmod.training.dedicated import *  # noqa: F401,F403
from nnunet_missingmod.training.dedicated import __all__ as _dedicated
from nnunet_missingmod.training.full_modality import FullModalityTrainer
from nnunet_missingmod.training.magms import *  # noqa: F401,F403
from nnunet_missingmod.training.magms import __all__ as _magms
from nnunet_missingmod.training.modality_dropout import ModalityDropoutTrainer
from nnunet_missingmod.training.mstkd import *  # noqa: F401,F403
from nnunet_missingmod.training.mstkd import __all__ as _mstkd
from nnunet_missingmod.training.smml import *  # noqa: F401,F403
from nnunet_missingmod.training.smml import __all__ as _smml

__all__ = ["MissingModalityTrainer", "FullModalityTrainer", "ModalityDropoutTrainer", *_magms, *_mstkd, *_smml,
           *_dedicated]
