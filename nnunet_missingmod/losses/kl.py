"""The KL divergence every method distils with: teacher first, for softmax classes or sigmoid regions.

nnU-Net trains a label dataset with one softmax over mutually exclusive classes and a region
dataset (BraTS: whole tumour, tumour core, enhancing tumour) with one sigmoid per region. A KL
between two predictions is the KL of what the head models:

- ``regions=False``: the categorical KL of the softmax over the class axis, one value per voxel;
- ``regions=True``: the Bernoulli KL of each region's sigmoid, one value per region and voxel.

Both sides are softened by the same temperature ``T`` (Hinton et al.). Multiplying by ``T²`` and
reducing (mean over voxels, over regions, over the samples that count) is the caller's, because
the methods reduce differently; see each loss module. The teacher is not detached here: pass
``teacher.detach()`` to distil one way. Computed in float32, also under autocast.

``regions`` is nnU-Net's own flag (``label_manager.has_regions``); every caller passes it by that
name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
                  temperature: float = 1.0, channel_dim: int = 1) -> torch.Tensor:
    """KL(teacher || student) per element at temperature ``T``, before any ``T²``.

    Softmax: summed over the classes; the class axis is kept with size 1. Regions: one Bernoulli
    KL per region channel, the shape of the logits. Teacher and student broadcast against each
    other (e.g. a fused ``(1, B, C, ...)`` against per-modality ``(M, B, C, ...)``).
    """
    t = teacher_logits.float() / temperature
    s = student_logits.float() / temperature
    if regions:
        # log sigma(x) = logsigmoid(x), log(1 - sigma(x)) = logsigmoid(-x): stable for large logits
        log_p, log_not_p = F.logsigmoid(t), F.logsigmoid(-t)
        log_q, log_not_q = F.logsigmoid(s), F.logsigmoid(-s)
        return log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)
    log_p = F.log_softmax(t, dim=channel_dim)
    log_q = F.log_softmax(s, dim=channel_dim)
    return (log_p.exp() * (log_p - log_q)).sum(channel_dim, keepdim=True)
