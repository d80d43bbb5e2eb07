"""A U-Net with one encoder per modality, mean fusion of the present ones, and one shared decoder.

The network of MAG-MS (He et al., ISBI 2024), built from an nnU-Net plans configuration:

- per modality, the plans' encoder (``PlainConvEncoder`` for ``PlainConvUNet`` plans,
  ``ResidualEncoder`` for ResEnc plans) with one input channel and the plans' stages, features,
  kernels, strides, norm, dropout and nonlinearity;
- per modality and level, a bias-free 1x1(x1) convolution (the "fuse conv" of the paper's figure);
- at every level, the mean of the projected features over the modalities present in the sample;
- one ``UNetDecoder`` (the plans' decoder, deep supervision included) shared by the fused features
  and, in training, by every single modality's features.

Which modalities are present is read from the input itself
(:func:`nnunet_missingmod.modalities.available_modalities`): nnU-Net's predictor calls
``network(x)`` with nothing else. In evaluation mode the output is exactly nnU-Net's (a tensor,
or a list of tensors with deep supervision) and only the encoders of present modalities run. In
training mode every encoder runs, absent ones are excluded from the mean by a zero weight (DDP
needs every parameter in every step's graph), and the forward returns a
:class:`FusionTrainingOutput` with what the self-distillation losses need.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import NamedTuple

import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_missingmod.modalities import available_modalities

# What UNetDecoder reads from the encoder it is built for.
ENCODER_GEOMETRY = ("output_channels", "strides", "kernel_sizes", "conv_op", "conv_bias", "norm_op",
                    "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs")

Output = torch.Tensor | list[torch.Tensor]


class FusionTrainingOutput(NamedTuple):
    """What the training forward returns (a tuple, so DDP and torch.compile pass it through).

    ``fused`` / ``single``: the decoder's output (per deep-supervision scale, or one tensor) on the
    fused features, ``(B, C, ...)``, and on each modality's own features, ``(M, B, C, ...)``.
    ``fused_features`` / ``single_features``: per encoder level, the fused projected features
    ``(B, C_l, ...)`` and each modality's ``(M, B, C_l, ...)``.
    ``present``: ``(B, M)`` bool, the modalities the fusion averaged over.
    ``single_paths``: ``None`` when every modality was decoded; otherwise ``(B,)``, the one
    modality decoded per sample, and ``single`` is ``(1, B, C, ...)``: that modality's output.
    """

    fused: Output
    single: Output
    fused_features: list[torch.Tensor]
    single_features: list[torch.Tensor]
    present: torch.Tensor
    single_paths: torch.Tensor | None = None


class ModalityFusionUNet(nn.Module):
    """M single-channel encoders, per-level 1x1 projections, masked mean fusion, a shared decoder.

    Build it from plans with :meth:`from_plans`. ``encoders[m]`` reads input channel ``m``.
    """

    def __init__(self, encoders: Sequence[nn.Module], decoder: UNetDecoder):
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"a modality fusion network needs at least two encoders, got {len(encoders)}")
        channels = list(encoders[0].output_channels)
        conv_op = encoders[0].conv_op
        self.encoders = nn.ModuleList(encoders)
        self.projections = nn.ModuleList(
            nn.ModuleList(conv_op(c, c, kernel_size=1, bias=False) for c in channels) for _ in encoders)
        self.decoder = decoder

    @property
    def num_modalities(self) -> int:
        return len(self.encoders)

    @classmethod
    def from_plans(cls, arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                   num_modalities: int, num_classes: int, deep_supervision: bool = True) -> ModalityFusionUNet:
        """From a plans configuration's ``architecture``, through nnU-Net's ``get_network_from_plans``.

        Each encoder is that of the plans' network built for one input channel (and initialised by
        it); the projections and the shared decoder get the architecture's own ``initialize``.
        Architectures whose decoder is nnU-Net's ``UNetDecoder`` are supported (PlainConvUNet,
        ResidualEncoderUNet).
        """
        templates = [get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, 1, num_classes,
                                            allow_init=True, deep_supervision=deep_supervision)
                     for _ in range(num_modalities)]
        if not all(type(getattr(t, "decoder", None)) is UNetDecoder for t in templates):
            raise ValueError(f"cannot build per-modality encoders for architecture {arch_class_name}: MAG-MS needs "
                             f"an encoder-decoder U-Net with nnU-Net's UNetDecoder (PlainConvUNet, "
                             f"ResidualEncoderUNet)")
        encoders = [t.encoder for t in templates]
        decoder = shared_decoder(encoders[0], num_classes, arch_kwargs["n_conv_per_stage_decoder"], deep_supervision,
                                 nonlin_first=arch_kwargs.get("nonlin_first", False))
        network = cls(encoders, decoder)
        network.projections.apply(templates[0].initialize)
        network.decoder.apply(templates[0].initialize)
        return network

    # --- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, single_paths: torch.Tensor | None = None) -> Output | FusionTrainingOutput:
        """``single_paths`` (training only): ``(B,)`` modality indices, to decode one single-modality
        path per sample instead of all of them (1 + 1 decoder passes instead of 1 + M)."""
        if x.shape[1] != self.num_modalities:
            raise ValueError(f"input has {x.shape[1]} channels, the network has {self.num_modalities} "
                             f"modality encoders")
        present = available_modalities(x)
        if self.training:
            return self._forward_training(x, present, single_paths)
        run = present.any(0).tolist()
        features = [self.encode(m, x) if run[m] else None for m in range(self.num_modalities)]
        return self.decoder(fuse(features, present))

    def encode(self, modality: int, x: torch.Tensor) -> list[torch.Tensor]:
        """The projected features of one modality's encoder, per level (``x``: all channels)."""
        skips = self.encoders[modality](x[:, modality:modality + 1])
        return [projection(s) for projection, s in zip(self.projections[modality], skips, strict=True)]

    def _forward_training(self, x: torch.Tensor, present: torch.Tensor,
                          single_paths: torch.Tensor | None) -> FusionTrainingOutput:
        batch, num_modalities = x.shape[0], self.num_modalities
        features = [self.encode(m, x) for m in range(num_modalities)]
        fused = fuse(features, present)
        single = [torch.stack([f[level] for f in features]) for level in range(len(fused))]  # (M, B, ...)
        if single_paths is None:
            decoded = single
        else:
            samples = torch.arange(batch, device=x.device)
            decoded = [s[single_paths, samples].unsqueeze(0) for s in single]  # (1, B, ...)
        paths = 1 + decoded[0].shape[0]
        # One decoder call on [fused; path 1; ...] stacked along the batch: the decoder's
        # convolutions see a larger batch instead of running once per path. Exact with nnU-Net's
        # instance norm; batch norm would pool statistics across the paths.
        skips = [torch.cat([f, d.flatten(0, 1)]) for f, d in zip(fused, decoded)]
        output = self.decoder(skips)
        by_path = [o.unflatten(0, (paths, batch)) for o in _as_list(output)]
        fused_output = [o[0] for o in by_path]
        single_output = [o[1:] for o in by_path]
        if not isinstance(output, list):
            fused_output, single_output = fused_output[0], single_output[0]
        return FusionTrainingOutput(fused_output, single_output, fused, single, present, single_paths)


def fuse(features: Sequence[Sequence[torch.Tensor] | None], present: torch.Tensor) -> list[torch.Tensor]:
    """Per level, the mean over the modalities present in each sample.

    ``features[m]``: modality m's per-level features (``None`` if it did not run; it must then be
    absent from every sample). ``present``: ``(B, M)`` bool with at least one True per row.
    """
    ran = [m for m, f in enumerate(features) if f is not None]
    weights = present.to(features[ran[0]][0].dtype)
    count = weights[:, ran].sum(1)
    fused = []
    for level in range(len(features[ran[0]])):
        total = sum(_per_sample(weights[:, m], features[m][level]) * features[m][level] for m in ran)
        fused.append(total / _per_sample(count, total))
    return fused


def shared_decoder(encoder: nn.Module, num_classes: int, n_conv_per_stage: int | Sequence[int],
                   deep_supervision: bool, nonlin_first: bool = False) -> UNetDecoder:
    """nnU-Net's ``UNetDecoder`` for encoders shaped like ``encoder``, owning none of them.

    ``UNetDecoder`` stores the encoder it is built from as a submodule, only to read its geometry.
    A decoder shared by M encoders gets that geometry as plain attributes instead, so that no
    encoder's weights appear twice in the state dict.
    """
    geometry = SimpleNamespace(**{name: getattr(encoder, name) for name in ENCODER_GEOMETRY})
    return UNetDecoder(geometry, num_classes, n_conv_per_stage, deep_supervision, nonlin_first=nonlin_first)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, 1, ...)`` broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def _as_list(output: Output) -> list[torch.Tensor]:
    return output if isinstance(output, list) else [output]
