"""Converters from BraTS 2018-2024, FeTS and MSD Task01 to nnU-Net raw format, and back-conversion of
predictions (installed as nnunet_missingmod.dataset_conversion; see docs/conversion.md).

Nothing in nnunet_missingmod imports this subpackage.
"""
