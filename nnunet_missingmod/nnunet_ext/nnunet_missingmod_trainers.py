"""Shim scanned by nnU-Net's trainer lookup (``nnUNet_extTrainer``).

nnU-Net imports every module in this folder until it finds the requested class, and removes the
modules of this folder from ``sys.modules`` afterwards. The classes themselves live in
``nnunet_missingmod.training``, so they stay importable (and picklable) under their real names.
Keep this folder to this one module.
"""

from nnunet_missingmod.training import *  # noqa: F401,F403
