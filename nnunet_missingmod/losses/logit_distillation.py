"""MST-KDNet's dual-mode logit distillation: a temperature KL on standardised logits, and an MSE
between probabilities whose weight ramps up over the epochs.

Logits are ``(B, C, *spatial)``; every voxel is one prediction. Two kinds of output head exist in
nnU-Net, and the KL is the KL of what each head models:

- label datasets (softmax over C mutually exclusive classes): logits are standardised over the
  class axis (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024), divided
  by the temperature, and compared as categorical distributions;
- region datasets (one sigmoid per region, nnU-Net's BCE + Dice): each region is an independent
  two-class (Bernoulli) prediction and the per-voxel KL is the sum of the regions' Bernoulli KLs.

Standardising a two-class logit vector maps it to ``±1/sqrt(2)`` whatever its values: only the
sign survives and its gradient is zero. So standardisation applies where it can carry information,
to three or more classes; two-class softmax heads and sigmoid regions get the plain temperature KL.

Every KL is KL(teacher || student), per voxel, averaged over voxels, times T² (Hinton et al.), so
that its gradient does not shrink with the temperature. Call the functions with a detached teacher
to distil one way only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def standardize_logits(logits: torch.Tensor, dim: int = 1, eps: float = 1e-7) -> torch.Tensor:
    """Zero mean, unit (sample) standard deviation along ``dim``."""
    mean = logits.mean(dim, keepdim=True)
    return (logits - mean) / (logits.std(dim, keepdim=True) + eps)


def categorical_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 7.0,
                   standardize: bool = True) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) · T², over the class axis 1, mean over voxels."""
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    log_q = F.log_softmax(s / temperature, dim=1)
    log_p = F.log_softmax(t / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * temperature ** 2


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 7.0) -> torch.Tensor:
    """Σ over the channels (regions) of KL(Bern(σ(teacher / T)) || Bern(σ(student / T))) · T², mean over voxels."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    p = torch.sigmoid(t)
    # log σ(x) = -softplus(-x), log(1 - σ(x)) = -softplus(x): stable for large logits
    kl = p * (F.softplus(-s) - F.softplus(-t)) + (1 - p) * (F.softplus(s) - F.softplus(t))
    return kl.sum(1).mean() * temperature ** 2


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, regions: bool,
             temperature: float = 7.0) -> torch.Tensor:
    """The distillation KL for an nnU-Net output head (``regions``: sigmoid per channel; else softmax)."""
    if regions:
        return bernoulli_kl(student_logits, teacher_logits, temperature)
    return categorical_kl(student_logits, teacher_logits, temperature, standardize=student_logits.shape[1] > 2)


def probability_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """Squared difference of the probabilities, summed over channels, mean over voxels.

    Summing over channels keeps the scale of MST-KDNet's per-channel MSEs, which its code adds up.
    """
    if regions:
        p, q = torch.sigmoid(teacher_logits.float()), torch.sigmoid(student_logits.float())
    else:
        p, q = torch.softmax(teacher_logits.float(), 1), torch.softmax(student_logits.float(), 1)
    return (p - q).square().sum(1).mean()


def sigmoid_rampup(progress: float, length: float) -> float:
    """exp(-5 (1 - t)²) with t = progress / length clipped to [0, 1] (Laine & Aila); 1 when length <= 0."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
