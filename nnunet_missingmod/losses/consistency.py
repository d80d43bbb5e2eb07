"""SMML's consistency terms between two peer branches, and between a branch and its refinement.

The paper names the terms but its code for them was never released; the formulas here are this
project's (docs/smml.md gives the reasoning). Every term is zero when the two sides agree, and the
side that teaches is always detached, so each branch learns only through its own loss.

Targets come in nnU-Net's two forms, chosen by ``regions``:
- ``False`` (label maps, softmax): ``target`` (B, 1, *spatial) class indices;
- ``True`` (regions, sigmoid): ``target`` (B, K, *spatial) with 0/1 per region channel.
``valid`` (B, 1, *spatial) bool, optional, marks voxels that count (nnU-Net's ignore label).
All computations are done in float32, also under autocast.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from nnunet_missingmod.losses.kl import kl_divergence


def reliability(logits: torch.Tensor, target: torch.Tensor, regions: bool) -> torch.Tensor:
    """The probability a prediction gives to the ground truth, per voxel (per channel for sigmoid)."""
    if regions:
        p = torch.sigmoid(logits.float())
        y = target.float()
        return y * p + (1 - y) * (1 - p)
    p = torch.softmax(logits.float(), 1)
    return p.gather(1, target.long().clamp(0, p.shape[1] - 1))


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1)


def reliability_gated_kl(student_logits: torch.Tensor, peer_logits: torch.Tensor, target: torch.Tensor,
                         regions: bool, temperature: float = 2.0,
                         valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixel-level consistency: the student learns from its detached peer where the peer is the
    more reliable of the two against the ground truth.

        gate(v) = 1[ r_peer(v) > r_student(v) ],  r = probability given to the true class/answer
        L = T^2 * sum_v gate(v) KL(p_peer^T(v) || p_student^T(v)) / #valid voxels

    Sigmoid outputs gate and compare each region channel on its own.
    """
    peer_logits = peer_logits.detach()
    with torch.no_grad():
        gate = (reliability(peer_logits, target, regions) > reliability(student_logits, target, regions))
        weights = gate.float()
        if valid is not None:
            weights = weights * valid.float()
        count = torch.ones_like(weights) if valid is None else valid.float().expand_as(weights)
    kl = kl_divergence(peer_logits, student_logits, regions, temperature)
    return temperature ** 2 * (kl * weights).sum() / count.sum().clamp_min(1)


def pixel_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor, target: torch.Tensor, regions: bool,
                      temperature: float = 2.0, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Both directions: branch a learns from b where b is more reliable, and b from a."""
    return (reliability_gated_kl(logits_a, logits_b, target, regions, temperature, valid)
            + reliability_gated_kl(logits_b, logits_a, target, regions, temperature, valid))


def class_fractions(target: torch.Tensor, regions: bool, num_classes: int, size,
                    valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How much of each feature-map cell each class covers: (B, K', *size).

    Softmax targets give one channel per class (background included). Sigmoid targets give
    background (outside every region) followed by one channel per region.
    """
    if regions:
        inside = target.float()
        indicators = torch.cat((1 - inside.amax(1, keepdim=True), inside), 1)
    else:
        indices = target[:, 0].long().clamp(0, num_classes - 1)
        indicators = torch.movedim(F.one_hot(indices, num_classes), -1, 1).float()
    if valid is not None:
        indicators = indicators * valid.float()
    return F.interpolate(indicators, size=tuple(size), mode="area")


def _normalised_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit length: their dot products are Pearson correlations. Centring
    matters: features after a (leaky) ReLU share a large positive mean that drives every plain
    cosine similarity towards 1 and leaves nothing to match."""
    return F.normalize(x - x.mean(1, keepdim=True), dim=1, eps=1e-6)


def inter_sample_relations(features: torch.Tensor) -> torch.Tensor:
    """Correlation between the samples' whole feature maps: (B, B)."""
    rows = _normalised_rows(features.float().flatten(1))
    return rows @ rows.t()


def class_prototypes(features: torch.Tensor, fractions: torch.Tensor):
    """Mean feature of each class over the batch, weighted by coverage: (K', C), and which exist."""
    f = features.float().flatten(2)  # B, C, S
    w = fractions.float().flatten(2)  # B, K', S
    mass = w.sum((0, 2))
    with torch.autocast(f.device.type, enabled=False):  # a sum over the batch and every position: float32
        prototypes = torch.einsum("bks,bcs->kc", w, f) / mass.clamp_min(1e-6)[:, None]
    return prototypes, mass > 1e-6


def inter_class_relations(features: torch.Tensor, fractions: torch.Tensor):
    """Correlation between class prototypes: (K', K'), and the classes present."""
    prototypes, present = class_prototypes(features, fractions)
    rows = _normalised_rows(prototypes)
    return rows @ rows.t(), present


def relation_consistency(features_a: torch.Tensor, features_b: torch.Tensor, fractions: torch.Tensor,
                         inter_sample_weight: float = 1.0, inter_class_weight: float = 1.0) -> torch.Tensor:
    """Feature-level consistency: each branch's relations between samples and between classes
    (ground-truth prototypes) of its bottleneck features match the peer's, detached:

        L = w_s * sum_{i != j} MSE(G_i, sg(G_j)) + w_c * sum_{i != j} MSE(R_i[P, P], sg(R_j[P, P]))

    G: sample-by-sample correlation; R: prototype-by-prototype correlation over the classes P
    present in the batch. Zero with one sample (G) or fewer than two classes (R).
    """
    loss = features_a.new_zeros((), dtype=torch.float32)
    if inter_sample_weight:
        g_a, g_b = inter_sample_relations(features_a), inter_sample_relations(features_b)
        loss = loss + inter_sample_weight * (F.mse_loss(g_a, g_b.detach()) + F.mse_loss(g_b, g_a.detach()))
    if inter_class_weight:
        r_a, present = inter_class_relations(features_a, fractions)
        r_b, _ = inter_class_relations(features_b, fractions)
        if int(present.sum()) >= 2:
            pairs = present[:, None] & present[None, :]
            loss = loss + inter_class_weight * (F.mse_loss(r_a[pairs], r_b.detach()[pairs])
                                                + F.mse_loss(r_b[pairs], r_a.detach()[pairs]))
    return loss


def prior_consistency(logits: torch.Tensor, refined_logits: torch.Tensor, regions: bool,
                      temperature: float = 1.0, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The branch learns from its detached prior-refined prediction: T^2 * mean_v KL(refined || branch)."""
    kl = kl_divergence(refined_logits.detach(), logits, regions, temperature)
    weights = torch.ones_like(kl) if valid is None else valid.float().expand_as(kl)
    return temperature ** 2 * _masked_mean(kl, weights)
