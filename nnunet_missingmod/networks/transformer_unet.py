"""The plans' U-Net with MST-KDNet's multi-scale transformer bottleneck: teacher and student alike.

The encoder and decoder are exactly the ones nnU-Net builds from the plans (PlainConvUNet,
ResidualEncoderUNet, ... any network with an ``encoder`` returning its skips and a ``decoder``
taking them), with their parameter names, so nnU-Net's deep-supervision switch
(``decoder.deep_supervision``) and its checkpoints work unchanged. Between them:

    skips = encoder(x); f_enc = skips[-1]
    attention, [F_0, F_1, ...] = transformer(f_enc)          (F_j at j stages above the bottleneck)
    f_dec = convs(f_enc + F_0); skips[-1] = f_dec; skips[-1-j] += F_j
    logits = decoder(skips)

``forward(x)`` returns what nnU-Net's network returns (logits, or a list of them with deep
supervision), which is all ``nnUNetv2_predict`` needs. ``forward(x, return_features=True)`` also
returns the features MST-KDNet distils (:class:`DistillationFeatures`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_missingmod.networks.transformer_bottleneck import MultiScaleTransformerBottleneck, bottleneck_grid


class DistillationFeatures(NamedTuple):
    attention: list[torch.Tensor]  # (B, heads, N, N) per distilled depth, shallow to deep
    multiscale: list[torch.Tensor]  # transformer features at U-Net scales, bottleneck first
    # at the bottleneck: (f_enc, F_0, f_dec), the features of MST-KDNet's G_enc, G_t and G_dec
    style: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TransformerBottleneckUNet(nn.Module):
    """A U-Net from nnU-Net's plans with a transformer stack on its bottleneck tokens.

    Args:
        unet: the network ``get_network_from_plans`` built (its encoder and decoder are reused).
        patch_size: the plans' patch size; fixes the token grid and the positional embedding.
        depth, heads, mlp_ratio, distilled_depths: see :class:`MultiScaleTransformerBottleneck`.
        fusion_convs: convolutions (the plans' kind) that merge the transformer into the
            bottleneck before the decoder, like MST-KDNet's blocks after its transformer.
    """

    def __init__(self, unet: nn.Module, patch_size: Sequence[int], depth: int = 12, heads: int = 8,
                 mlp_ratio: float = 8 / 3, distilled_depths: Sequence[int] = (3, 6, 9, 12), fusion_convs: int = 1):
        super().__init__()
        encoder, decoder = getattr(unet, "encoder", None), getattr(unet, "decoder", None)
        if encoder is None or decoder is None or not hasattr(encoder, "output_channels"):
            raise TypeError(f"{type(unet).__name__} is not an encoder-decoder U-Net with skips (such as "
                            f"PlainConvUNet or ResidualEncoderUNet); the transformer bottleneck cannot be inserted")
        self.encoder = encoder
        self.decoder = decoder
        self.patch_size = tuple(int(p) for p in patch_size)
        channels = int(encoder.output_channels[-1])
        self.transformer = MultiScaleTransformerBottleneck(
            encoder.output_channels, encoder.strides, bottleneck_grid(self.patch_size, encoder.strides),
            encoder.conv_op, encoder.norm_op, encoder.norm_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs,
            depth=depth, heads=heads, mlp_ratio=mlp_ratio, distilled_depths=distilled_depths)
        self.fusion = StackedConvBlocks(
            fusion_convs, encoder.conv_op, channels, channels, encoder.kernel_sizes[-1], 1, encoder.conv_bias,
            encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op, encoder.dropout_op_kwargs,
            encoder.nonlin, encoder.nonlin_kwargs)
        self.fusion.apply(InitWeights_He((encoder.nonlin_kwargs or {}).get("negative_slope", 1e-2)))

    @classmethod
    def from_plans(cls, configuration_manager, num_input_channels: int, num_output_channels: int,
                   enable_deep_supervision: bool = True, **kwargs) -> "TransformerBottleneckUNet":
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            allow_init=True, deep_supervision=enable_deep_supervision)
        return cls(unet, configuration_manager.patch_size, **kwargs)

    @property
    def geometry(self) -> dict:
        """What two networks must share for their attention maps and features to be compared."""
        t = self.transformer
        return {"token_grid": list(t.grid), "width": int(t.position.shape[-1]), "heads": t.num_heads,
                "depth": t.depth, "distilled_depths": list(t.distilled_depths),
                "multiscale_channels": list(t.multiscale_channels), "scales": list(t.scales)}

    def forward(self, x: torch.Tensor, return_features: bool = False):
        skips = list(self.encoder(x))
        encoder_bottleneck = skips[-1]
        attention, multiscale = self.transformer(encoder_bottleneck)
        decoder_bottleneck = self.fusion(encoder_bottleneck + multiscale[0])
        skips[-1] = decoder_bottleneck
        for scale, feature in zip(self.transformer.scales[1:], multiscale[1:]):
            skips[-1 - scale] = skips[-1 - scale] + feature
        output = self.decoder(skips)
        if not return_features:
            return output
        return output, DistillationFeatures(attention, multiscale,
                                            (encoder_bottleneck, multiscale[0], decoder_bottleneck))
