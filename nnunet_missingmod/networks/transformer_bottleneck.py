"""A transformer stack on the bottleneck tokens of a U-Net (MST-KDNet's multi-scale transformer).

Each voxel (pixel in 2D) of the bottleneck feature map is one token whose features are the
bottleneck's channels, so the token grid, and with it the learned positional embedding, follows
from the plans' patch size and the encoder's strides. nnU-Net trains and predicts (sliding
window) at exactly that patch size, so the grid never changes between training and inference.

The stack returns what MST-KDNet distils, and what the U-Net uses:

- the attention probabilities of several depths (``distilled_depths``, e.g. 3, 6, 9, 12 of 12),
  for the extreme-value attention distillation;
- the hidden states of those depths decoded to successively finer U-Net scales (the deepest to the
  bottleneck, the next one to the scale above it, ...), the "multi-scale transformer features".
  As in UNETR, shallower depths feed finer scales; the U-Net adds them to its encoder skips, so
  every head also serves segmentation (and every parameter receives a gradient, as DDP requires).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Type

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn


def bottleneck_grid(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Spatial size of the encoder's last stage for ``patch_size``.

    nnU-Net's convolutions pad by ``kernel // 2``, so a stride-``s`` stage maps ``n`` voxels to
    ``ceil(n / s)``; plans keep the patch divisible by the total stride, where this is exact.
    """
    grid = [int(n) for n in patch_size]
    for stage_strides in strides:
        if len(stage_strides) != len(grid):
            raise ValueError(f"strides {list(stage_strides)} do not match the {len(grid)}-D patch size "
                             f"{list(patch_size)}")
        grid = [math.ceil(n / s) for n, s in zip(grid, stage_strides)]
    return tuple(grid)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block that also returns its attention probabilities.

    Attention is computed explicitly (not with a fused kernel) because the probabilities are
    distilled; bottleneck token counts are small (tens to a few hundred), so this costs little.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 8 / 3):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} (the bottleneck's channels) is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = round(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = tokens.shape
        q, k, v = self.qkv(self.attention_norm(tokens)).reshape(b, n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        attention = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        tokens = tokens + self.projection((attention @ v).transpose(1, 2).reshape(b, n, d))
        tokens = tokens + self.mlp(self.mlp_norm(tokens))
        return tokens, attention


class TransformerBottleneckOutput(NamedTuple):
    attention: list[torch.Tensor]  # per distilled depth, shallow to deep: (B, heads, N, N)
    multiscale: list[torch.Tensor]  # coarse to fine: [0] at the bottleneck, [j] j stages above it


class MultiScaleTransformerBottleneck(nn.Module):
    """Transformer blocks on the bottleneck tokens, with heads that decode chosen depths to U-Net scales.

    Args:
        stage_channels: the encoder's output channels per stage (``encoder.output_channels``).
        stage_strides: the encoder's stride per stage (``encoder.strides``), one list per stage.
        grid: the bottleneck's spatial size (:func:`bottleneck_grid`).
        conv_op, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: the plans' building blocks.
        depth, heads, mlp_ratio: the transformer; its width is the bottleneck's channel count.
        distilled_depths: increasing, 1-based, ending at ``depth``; the deepest is decoded to the
            bottleneck, each shallower one to the next finer scale (at most the second-finest stage).
    """

    def __init__(self, stage_channels: Sequence[int], stage_strides: Sequence[Sequence[int]], grid: Sequence[int],
                 conv_op: Type[nn.Module], norm_op: Optional[Type[nn.Module]], norm_op_kwargs: Optional[dict],
                 nonlin: Optional[Type[nn.Module]], nonlin_kwargs: Optional[dict], depth: int = 12, heads: int = 8,
                 mlp_ratio: float = 8 / 3, distilled_depths: Sequence[int] = (3, 6, 9, 12)):
        super().__init__()
        distilled_depths = tuple(int(d) for d in distilled_depths)
        if (not distilled_depths or list(distilled_depths) != sorted(set(distilled_depths))
                or distilled_depths[0] < 1 or distilled_depths[-1] != depth):
            raise ValueError(f"distilled_depths must increase from >= 1 and end at the last block ({depth}), "
                             f"got {list(distilled_depths)}")
        self.grid = tuple(int(g) for g in grid)
        self.depth = depth
        self.num_heads = heads
        self.distilled_depths = distilled_depths
        channels = int(stage_channels[-1])
        self.position = nn.Parameter(torch.zeros(1, math.prod(self.grid), channels))
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, mlp_ratio) for _ in range(depth))

        transposed_conv = get_matching_convtransp(conv_op=conv_op)

        def norm_and_nonlin(c: int) -> list[nn.Module]:
            layers = [norm_op(c, **(norm_op_kwargs or {}))] if norm_op is not None else []
            return layers + ([nonlin(**(nonlin_kwargs or {}))] if nonlin is not None else [])

        # Head j (deepest distilled depth first) takes the tokens to j stages above the bottleneck
        # with one stride-matched transposed convolution per stage; head 0 is a 1x1 convolution.
        # No head reaches the full-resolution stage, where a transformer feature costs the most and
        # says the least (MST-KDNet's finest is 1/4 of the input, as j = 3 is in nnU-Net's 3D plans).
        finest = max(len(stage_channels) - 2, 0)
        self.scales = [min(j, finest) for j in range(len(distilled_depths))]
        self.scale_heads = nn.ModuleList()
        for scale in self.scales:
            if scale == 0:
                layers = [conv_op(channels, channels, 1), *norm_and_nonlin(channels)]
            else:
                layers, c = [], channels
                for s in range(1, scale + 1):
                    out = int(stage_channels[-(s + 1)])
                    stride = list(stage_strides[-s])
                    layers += [transposed_conv(c, out, stride, stride), *norm_and_nonlin(out)]
                    c = out
            self.scale_heads.append(nn.Sequential(*layers))
        self.multiscale_channels = tuple(int(stage_channels[-(s + 1)]) for s in self.scales)
        self._initialize(nonlin_kwargs)

    def _initialize(self, nonlin_kwargs: Optional[dict]) -> None:
        nn.init.trunc_normal_(self.position, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # convolutions as nnU-Net initialises them
        self.apply(InitWeights_He((nonlin_kwargs or {}).get("negative_slope", 1e-2)))

    @property
    def num_tokens(self) -> int:
        return self.position.shape[1]

    def forward(self, bottleneck: torch.Tensor) -> TransformerBottleneckOutput:
        if tuple(bottleneck.shape[2:]) != self.grid:
            raise ValueError(
                f"the transformer bottleneck was built for a {'x'.join(map(str, self.grid))} token grid (the plans' "
                f"patch size), got a {'x'.join(map(str, bottleneck.shape[2:]))} bottleneck; feed patches of the "
                f"plans' patch size (nnU-Net's trainer and sliding-window predictor do)")
        b, c = bottleneck.shape[:2]
        tokens = bottleneck.flatten(2).transpose(1, 2) + self.position
        attention, hidden = [], []
        for depth, block in enumerate(self.blocks, start=1):
            tokens, probabilities = block(tokens)
            if depth in self.distilled_depths:
                attention.append(probabilities)
                hidden.append(tokens)

        def as_map(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(b, c, *self.grid)

        multiscale = [head(as_map(h)) for head, h in zip(self.scale_heads, reversed(hidden))]
        return TransformerBottleneckOutput(attention, multiscale)
