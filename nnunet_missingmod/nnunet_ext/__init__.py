"""The folder that ``nnUNet_extTrainer`` points to (see ``nnunet_missingmod.trainer_registration``)."""
