"""Make nnU-Net find our trainers with zero configuration.

nnU-Net 2.8 looks up ``-tr NAME`` inside its own package first and then in the folders listed
in the ``nnUNet_extTrainer`` environment variable. The installed ``nnunet_missingmod.pth`` file
calls :func:`register` at every interpreter start, which appends our shim folder
(``nnunet_missingmod/nnunet_ext``) to that variable, keeping whatever the user put there first.
Child processes (data augmentation workers, DDP ranks spawned by ``-num_gpus``) inherit it.

Only ``os`` is imported here: this runs in every Python process of the environment.
"""

import os

ENV_VAR = "nnUNet_extTrainer"


def trainer_folder() -> str:
    """The folder nnU-Net scans: it holds one shim module that re-exports our trainers."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def register(environ=os.environ) -> str:
    """Append our folder to ``nnUNet_extTrainer`` (once) and return the new value."""
    ours = trainer_folder()
    folders = [f for f in environ.get(ENV_VAR, "").split(os.pathsep) if f]
    if ours not in folders:
        folders.append(ours)
    environ[ENV_VAR] = os.pathsep.join(folders)
    return environ[ENV_VAR]


def main() -> None:
    """``nnunet_missingmod_trainer_path``: print the folder, for ``export nnUNet_extTrainer=...``."""
    print(trainer_folder())
