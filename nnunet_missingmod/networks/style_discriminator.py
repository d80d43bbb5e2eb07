"""MST-KDNet's style discriminator: tells teacher bottleneck features from student ones.

MST-KDNet's critic is a PatchGAN-like stack of stride-2, kernel-4 convolutions sized for its
20x24x16 feature map. nnU-Net bottlenecks are smaller (often 4x4x4) and vary with the plans, where
stride-2 kernels would run out of voxels, so here the convolutions keep the resolution
(kernel 3, padding 1) and a global average pool gives one logit per sample, for any 2D or 3D
bottleneck. Channel widths (64, 128, 256) and LeakyReLU(0.2) are MST-KDNet's; no normalisation,
as in MST-KDNet.
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn


class StyleDiscriminator(nn.Module):
    """``(B, C, *S)`` features -> ``(B,)`` logits (high: "student", low: "teacher")."""

    def __init__(self, in_channels: int, conv_op: Type[nn.Module], widths: Sequence[int] = (64, 128, 256),
                 negative_slope: float = 0.2):
        super().__init__()
        layers, channels = [], in_channels
        for width in widths:
            layers += [conv_op(channels, width, 3, 1, 1), nn.LeakyReLU(negative_slope)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)
        self.features.apply(InitWeights_He(negative_slope))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(features).flatten(2).mean(-1)).squeeze(1)
