"""MST-KDNet's dual-mode logit distillation: a temperature KL on standardised logits, and an MSE
between probabilities whose weight ramps up over the epochs.

Logits are ``(B, C, *spatial)``, teacher first. The KL is that of what nnU-Net's head models
(:mod:`nnunet_missingmod.losses.kl`), on standardised logits (zero mean, unit standard deviation):

- region datasets (one sigmoid per region): each region's logit map is standardised over space,
  per sample, as MST-KDNet's ``DistillKL_logit_stand`` does with its sigmoid outputs (it z-scores
  along its last axis, a spatial one; here over all spatial axes, so that the 2d and 3d
  configurations and any axis order mean the same). Without it a temperature of 7 turns the KL
  into an unbounded squared logit difference over the background, which dominates the step;
- label datasets (softmax over C classes): logits are standardised over the class axis (Sun et
  al., CVPR 2024). Two-class logits are not: standardised they are ``±1/sqrt(2)`` whatever their
  values, so only their sign would survive, with a zero gradient.

Reduction as the official term: ``T² · Σ KL / numel(logits)``, i.e. per element of the logits,
channels included (the official divides its sum by the sample count and the element count).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from nnunet_missingmod.losses.kl import kl_divergence


def standardize_logits(logits: torch.Tensor, dim: int | Sequence[int] = 1, eps: float = 1e-7) -> torch.Tensor:
    """Zero mean, unit (sample) standard deviation over ``dim``."""
    mean = logits.mean(dim, keepdim=True)
    return (logits - mean) / (logits.std(dim, keepdim=True) + eps)


def standardized(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """The logits as the KL compares them: over space per region map, or over >= 3 classes."""
    logits = logits.float()
    if regions:
        return standardize_logits(logits, tuple(range(2, logits.ndim)))
    return standardize_logits(logits, 1) if logits.shape[1] > 2 else logits


def logit_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
             temperature: float = 7.0, standardize: bool = True) -> torch.Tensor:
    """``T² · Σ KL(teacher ‖ student) / numel`` on standardised logits (``regions``: sigmoid per channel)."""
    if standardize:
        teacher_logits, student_logits = standardized(teacher_logits, regions), standardized(student_logits, regions)
    kl = kl_divergence(teacher_logits, student_logits, regions, temperature)
    return kl.sum() / student_logits.numel() * temperature ** 2


def probability_mse(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """Squared difference of the probabilities, summed over channels, mean over voxels.

    MST-KDNet adds up one MSE (mean over voxels) per foreground channel; summing over channels
    keeps that scale.
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
