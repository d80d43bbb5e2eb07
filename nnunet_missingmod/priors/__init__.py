"""Segment Anything priors for SMML, computed once beside nnU-Net's preprocessed data.

- ``storage``: the folder, file format and metadata, shared by the command and the trainer;
- ``sam_models``: LiteMedSAM / segment-anything models behind one box-prompted interface;
- ``compute``: the ``nnUNetv2_smml_priors`` command.
"""
