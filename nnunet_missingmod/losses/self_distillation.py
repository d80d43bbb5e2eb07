"""The self-distillation terms of MAG-MS: a fused prediction teaches single-modality predictions.

Both functions reduce each sample separately, so that a caller can leave out the (sample,
modality) pairs whose modality is absent. Tensors follow the layout ``(*leading, C, *spatial)``,
with ``channel_dim`` the index of ``C``; teacher and student must broadcast against each other
(a fused ``(1, B, C, ...)`` against per-modality ``(M, B, C, ...)``). Computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nnunet_missingmod.losses.kl import kl_divergence


def distillation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
                    temperature: float = 1.0, channel_dim: int = 1) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T, per sample: mean over voxels.

    ``regions=False``: the categorical KL over the classes (nnU-Net's label training), as the
    MAG-MS reference (``PixelWiseKLDiv``: summed over classes, mean over voxels).
    ``regions=True``: the Bernoulli KL of each region's sigmoid (nnU-Net's region training),
    averaged over the regions as nnU-Net's BCE averages its regions, so that the KL keeps the
    reference's ratio to the segmentation loss (a sum would weigh it K times).

    Both sides are divided by T (the reference tempers only the student; the same at its default
    T = 1). Returns the leading dimensions, e.g. ``(M, B)``.
    """
    kl = kl_divergence(teacher_logits, student_logits, regions, temperature, channel_dim)
    return temperature ** 2 * kl.flatten(channel_dim).mean(-1)


def feature_mse(teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor],
                channel_dim: int = 1) -> torch.Tensor:
    """Mean squared difference over all levels' features of a sample, taken as one vector.

    As the MAG-MS reference code: every level flattened and concatenated per sample, so each
    feature element weighs the same (the full-resolution level dominates). Returns the leading
    dimensions, e.g. ``(M, B)``.
    """
    squared, count = 0, 0
    for teacher, student in zip(teacher_features, student_features, strict=True):
        difference = (student.float() - teacher.float()).square().flatten(channel_dim)
        squared = squared + difference.sum(-1)
        count += difference.shape[-1]
    return squared / count
