"""The self-distillation terms of MAG-MS: a fused prediction teaches single-modality predictions.

Both functions reduce each sample separately, so that a caller can leave out the (sample,
modality) pairs whose modality is absent. Tensors follow the layout ``(*leading, C, *spatial)``,
with ``channel_dim`` the index of ``C``; teacher and student must broadcast against each other
(a fused ``(1, B, C, ...)`` against per-modality ``(M, B, C, ...)``). Computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def distillation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
                    multilabel: bool = False, channel_dim: int = 1) -> torch.Tensor:
    """T^2 * KL(teacher || student) per voxel at temperature T, summed over channels, averaged over voxels.

    ``multilabel=False``: the channels are the classes of one softmax (nnU-Net's label training).
    ``multilabel=True``: each channel is an independent sigmoid (nnU-Net's region training, BCE +
    Dice), and the KL is that of the Bernoulli distributions, summed over the regions.

    Both sides are divided by T (the MAG-MS reference code tempers only the student; the same at
    the default T = 1). Returns the leading dimensions, e.g. ``(M, B)``.
    """
    t = teacher_logits.float() / temperature
    s = student_logits.float() / temperature
    if multilabel:
        log_p, log_not_p = F.logsigmoid(t), F.logsigmoid(-t)
        log_q, log_not_q = F.logsigmoid(s), F.logsigmoid(-s)
        per_voxel = (log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)).sum(channel_dim)
    else:
        log_p = F.log_softmax(t, dim=channel_dim)
        log_q = F.log_softmax(s, dim=channel_dim)
        per_voxel = (log_p.exp() * (log_p - log_q)).sum(channel_dim)
    return temperature ** 2 * per_voxel.flatten(channel_dim).mean(-1)


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
