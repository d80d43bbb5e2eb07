"""SMML's training-only refinement head: a branch's prediction refined with Segment Anything priors.

Input: the SAM maps of the modalities present for the branch (one map per region/class per
modality; the maps of missing modalities are zero) concatenated with the branch's detached
probabilities. Output: logits with the branch's channels, supervised by the ground truth. The head
never sees the ground truth as input (the official code weights the SAM maps with the label inside
the head; see docs/smml.md) and is not part of the deployed model.

The head is a small U-Net (dynamic-network-architectures' ``PlainConvUNet``) with the plans'
convolution, normalisation, nonlinearity, kernel sizes and strides, so it works for 2d and 3d
configurations alike; only its width and depth are its own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn


def plans_building_blocks(configuration_manager) -> dict:
    """The layer types and per-stage kernel sizes/strides of a configuration's network, read off the
    encoder nnU-Net builds from the plans."""
    encoder = get_network_from_plans(
        configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import, 1, 1, allow_init=False).encoder
    return {key: getattr(encoder, key) for key in ("conv_op", "norm_op", "norm_op_kwargs", "dropout_op",
                                                    "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "kernel_sizes",
                                                    "strides")}


class RefinementHead(nn.Module):
    """``forward(priors, probabilities) -> logits`` for one branch."""

    def __init__(self, num_prior_channels: int, num_classes: int, features_per_stage: Sequence[int], conv_op,
                 kernel_sizes, strides, norm_op=None, norm_op_kwargs=None, nonlin=None, nonlin_kwargs=None):
        super().__init__()
        stages = len(features_per_stage)
        if stages < 2 or len(kernel_sizes) < stages or len(strides) < stages:
            raise ValueError(f"the refinement head needs at least two stages and as many kernel sizes and strides "
                             f"in the plans; got {stages} stages, {len(kernel_sizes)} kernel sizes, "
                             f"{len(strides)} strides")
        self.num_prior_channels = num_prior_channels
        self.unet = PlainConvUNet(
            input_channels=num_prior_channels + num_classes, n_stages=stages,
            features_per_stage=list(features_per_stage), conv_op=conv_op, kernel_sizes=list(kernel_sizes[:stages]),
            strides=list(strides[:stages]), n_conv_per_stage=2, num_classes=num_classes,
            n_conv_per_stage_decoder=1, conv_bias=True, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs,
            nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, deep_supervision=False)
        self.unet.apply(self.unet.initialize)
        # The decoder builds an output layer per scale but, without deep supervision, uses only the
        # last. DDP (without find_unused_parameters, as nnU-Net runs it) needs every parameter to get
        # a gradient each step, so the unused ones are dropped.
        for i in range(len(self.unet.decoder.seg_layers) - 1):
            self.unet.decoder.seg_layers[i] = nn.Identity()

    @classmethod
    def from_plans(cls, configuration_manager, num_prior_channels: int, num_classes: int,
                   features_per_stage: Sequence[int]) -> "RefinementHead":
        blocks = plans_building_blocks(configuration_manager)
        stages = min(len(features_per_stage), len(blocks["strides"]))
        return cls(num_prior_channels, num_classes, features_per_stage[:stages], blocks["conv_op"],
                   blocks["kernel_sizes"], blocks["strides"], blocks["norm_op"], blocks["norm_op_kwargs"],
                   blocks["nonlin"], blocks["nonlin_kwargs"])

    def forward(self, priors: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        if priors.shape[1] != self.num_prior_channels:
            raise ValueError(f"expected {self.num_prior_channels} prior channels, got {priors.shape[1]}")
        return self.unet(torch.cat((priors.to(probabilities.dtype), probabilities), 1))


class BranchRefinementHeads(nn.Module):
    """One head per branch (each peer has its own, as in the official code), called together so
    that a single DDP wrapper synchronises both."""

    def __init__(self, heads: Sequence[RefinementHead]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, priors: Sequence[torch.Tensor], probabilities: Sequence[torch.Tensor]) -> list:
        if not len(priors) == len(probabilities) == len(self.heads):
            raise ValueError(f"expected inputs for {len(self.heads)} branches")
        return [head(p, q) for head, p, q in zip(self.heads, priors, probabilities)]
