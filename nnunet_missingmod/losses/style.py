"""MST-KDNet's global style matching: cross-layer Gram matrices and an adversarial style critic.

Cross-layer Gram matching: for features ``F_0 .. F_{K-1}`` of one network at the same spatial
size (``(B, C_i, *S)``), each layer is paired with the previous one (the first with the last),
``G_i = F_i F_{i-1}ᵀ / |S|`` per sample (``(B, C_i, C_{i-1})``), and

    L = Σ_i mean((G_i^t - G_i^s)²)

Gram matrices forget where a feature is and keep which features occur together: the "style" that
the student, seeing fewer modalities, should share with the teacher.

Adversarial: a critic learns to tell teacher features (label 0, MST-KDNet's "source") from
student features (label 1); the student is trained to have its features called teacher features.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

TEACHER_LABEL = 0.0
STUDENT_LABEL = 1.0


def cross_layer_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, Ca, *S)``, ``(B, Cb, *S)`` -> ``(B, Ca, Cb)``: channel co-occurrence averaged over positions."""
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"cross-layer Gram needs features of one batch and spatial size, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.float().flatten(2), b.float().flatten(2)
    # A sum over every position: under fp16 autocast the product would be fp16, whose range (65504)
    # a bottleneck of 4³ positions leaves with features of about 32. Kept in float32.
    with torch.autocast(a.device.type, enabled=False):
        return a @ b.transpose(1, 2) / a.shape[-1]


def cross_layer_gram_loss(student_features: Sequence[torch.Tensor],
                          teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over layer pairs (i, i-1) of the mean squared difference of the cross-layer Gram matrices."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"need the same non-zero number of feature maps, got {len(student_features)} "
                         f"and {len(teacher_features)}")
    loss = 0
    for i in range(len(student_features)):
        g_s = cross_layer_gram(student_features[i], student_features[i - 1])
        g_t = cross_layer_gram(teacher_features[i], teacher_features[i - 1])
        loss = loss + F.mse_loss(g_s, g_t)
    return loss


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """The critic's BCE: teacher features -> TEACHER_LABEL, student features -> STUDENT_LABEL (summed)."""
    return _bce(teacher_logits, TEACHER_LABEL) + _bce(student_logits, STUDENT_LABEL)


def style_adversarial_loss(student_logits: torch.Tensor) -> torch.Tensor:
    """The student's BCE: its features should be taken for the teacher's."""
    return _bce(student_logits, TEACHER_LABEL)
