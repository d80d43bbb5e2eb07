"""Segment Anything priors for SMML, computed once beside nnU-Net's preprocessed data."""
