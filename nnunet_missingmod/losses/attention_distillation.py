"""MST-KDNet's multi-scale transformer distillation: attention maps and transformer features.

Extreme-value attention distillation: with ``A_l`` the attention probabilities of depth ``l``
(``(B, heads, N, N)``) and ``M_op`` their element-wise max, min or mean across the distilled
depths of one network,

    L = Σ_l Σ_op MSE(N²·A_l^t ⊙ M_op^t, N²·A_l^s ⊙ M_op^s)

so that each depth is matched where attention is extreme or typical across depths. The factor N²
(each map times N, the token count) puts uniform attention at 1 and makes the term independent of
the token count, which follows the plans' patch size here; MST-KDNet multiplied the raw term by
1e8 for its fixed 120 tokens, i.e. a weight of 1e8 / 120⁴ ≈ 0.48 in these units.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def extreme_value_attention_loss(student_attention: Sequence[torch.Tensor],
                                 teacher_attention: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over depths and over {max, min, mean} across depths; see the module docstring."""
    if len(student_attention) != len(teacher_attention) or not student_attention:
        raise ValueError(f"need the same non-zero number of attention maps, got {len(student_attention)} "
                         f"and {len(teacher_attention)}")
    num_tokens = student_attention[0].shape[-1]
    s = torch.stack([a.float() for a in student_attention]) * num_tokens
    t = torch.stack([a.float() for a in teacher_attention]) * num_tokens
    depths = s.shape[0]
    loss = s.new_zeros(())
    for s_extreme, t_extreme in ((s.amax(0), t.amax(0)), (s.amin(0), t.amin(0)), (s.mean(0), t.mean(0))):
        # mean over every element of the stack = mean over depths of the per-depth MSE
        loss = loss + F.mse_loss(s * s_extreme, t * t_extreme) * depths
    return loss


def multiscale_feature_loss(student_features: Sequence[torch.Tensor],
                            teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over scales of MSE(student, teacher): MST-KDNet's loss on its multi-scale transformer features."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"need the same non-zero number of feature maps, got {len(student_features)} "
                         f"and {len(teacher_features)}")
    return sum(F.mse_loss(s.float(), t.float()) for s, t in zip(student_features, teacher_features))
