"""Two peer segmentation networks in one module: what SMML trains and what nnU-Net deploys.

Each branch is the network nnU-Net builds from the plans (PlainConvUNet, ResidualEncoderUNet,
...) with its own weights. In training both branches run in one ``forward`` call, each on its own
input (the sample under a different modality subset), and return their logits and bottleneck
features; keeping both in one module means one ``state_dict`` (nnU-Net's ``network_weights``),
one DDP wrapper and one ``torch.compile`` cover both. At inference ``forward(x)`` runs both
branches on the same image and averages their logits (before any softmax/sigmoid, as the official
SMML code does), so ``nnUNetv2_predict`` deploys the pair unchanged.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

Logits = Union[torch.Tensor, list]  # one tensor, or one per deep-supervision scale (highest first)


class _DeepSupervisionSwitch:
    """``module.decoder.deep_supervision = x`` sets it on every branch (nnU-Net's
    ``set_deep_supervision_enabled`` writes that attribute on the unwrapped network)."""

    def __init__(self, branches: Sequence[nn.Module]):
        self._branches = branches

    @property
    def deep_supervision(self) -> bool:
        values = {b.decoder.deep_supervision for b in self._branches}
        if len(values) != 1:
            raise RuntimeError("the two branches disagree on deep supervision")
        return values.pop()

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for branch in self._branches:
            branch.decoder.deep_supervision = enabled


def average_logits(first: Logits, second: Logits) -> Logits:
    """Mean of two outputs, scale by scale when deep supervision returns lists."""
    if isinstance(first, (list, tuple)):
        return [(a + b) / 2 for a, b in zip(first, second)]
    return (first + second) / 2


class TwoBranchNetwork(nn.Module):
    """Two networks with ``encoder`` and ``decoder`` (dynamic-network-architectures' U-Nets).

    ``forward(x)``: the averaged logits of both branches on ``x`` (inference, nnU-Net's
    validation). ``forward(x, x_peer)``: branch 0 on ``x``, branch 1 on ``x_peer``; returns
    ``{"logits": (out0, out1), "bottleneck": (f0, f1)}`` for training.
    """

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        for name, branch in (("first", first), ("second", second)):
            if not (hasattr(branch, "encoder") and hasattr(branch, "decoder")):
                raise TypeError(f"the {name} branch ({type(branch).__name__}) has no encoder/decoder; "
                                f"TwoBranchNetwork needs a U-Net from dynamic-network-architectures")
        if first is second:
            raise ValueError("the two branches must be separate networks (peers with their own weights)")
        self.branches = nn.ModuleList([first, second])

    @property
    def decoder(self) -> _DeepSupervisionSwitch:
        return _DeepSupervisionSwitch(self.branches)

    def _run(self, branch: nn.Module, x: torch.Tensor):
        skips = branch.encoder(x)
        return branch.decoder(skips), skips[-1]

    def forward(self, x: torch.Tensor, x_peer: torch.Tensor = None):
        if x_peer is None:
            return average_logits(self.branches[0](x), self.branches[1](x))
        logits0, bottleneck0 = self._run(self.branches[0], x)
        logits1, bottleneck1 = self._run(self.branches[1], x_peer)
        return {"logits": (logits0, logits1), "bottleneck": (bottleneck0, bottleneck1)}
