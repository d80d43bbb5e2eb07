"""Dedicated models: nnU-Net trained on one fixed subset of the modalities.

A user's alternative to one robust model is one nnU-Net per combination of sequences, picked by
the files present. ``DedicatedSubsetTrainer`` trains such a model: in every step the modalities
outside its subset are zero (the masking transform with a single allowed subset), and the network
it deploys zeroes them itself (:class:`SubsetInput`), so ``nnUNetv2_predict`` gives the dedicated
model's answer whatever the other channel files hold. The studies use one per subset as the
ceiling a method is measured against (docs/results.md).

The subset is part of the trainer's name, so that nnU-Net's ``-tr`` lookup and its predictor find
it: ``DedicatedTrainer__T1ce_FLAIR``. One class per non-empty subset of the BraTS modalities
(T1, T1ce, T2, FLAIR, aliases allowed in the dataset) is defined here; for other channel names,
subclass and set ``subset``::

    class DedicatedTrainer__PD_T2(DedicatedSubsetTrainer):
        subset = ("PD", "T2")
"""

from __future__ import annotations

import itertools

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_missingmod.masking import ModalityMaskingTransform
from nnunet_missingmod.training.base import MissingModalityTrainer, unwrap

BRATS_MODALITIES = ("T1", "T1ce", "T2", "FLAIR")
NAME_PREFIX = "DedicatedTrainer__"


class SubsetInput(nn.Module):
    """A network that sees only its subset's channels: the others are zeroed before it runs.

    ``kept`` is a buffer (saved in ``network_weights``), filled by the trainer, which knows the
    dataset's channel names; ``build_network_architecture`` does not.
    """

    def __init__(self, network: nn.Module, num_channels: int):
        super().__init__()
        self.network = network
        self.register_buffer("kept", torch.ones(num_channels, dtype=torch.bool))

    @property
    def decoder(self):  # nnU-Net switches deep supervision on network.decoder
        return self.network.decoder

    def forward(self, x: torch.Tensor):
        return self.network(x * self.kept.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype))


class DedicatedSubsetTrainer(MissingModalityTrainer):
    """nnU-Net on one fixed subset of modalities (``subset``: modality names, dataset.json's or aliases)."""

    subset: tuple[str, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.subset:
            raise ValueError(f"{type(self).__name__} names no subset; set its subset attribute to modality names")
        try:
            self.subset_channels = tuple(sorted({self.modalities.index(name) for name in self.subset}))
        except ValueError as error:
            raise ValueError(f"{type(self).__name__} trains on {'+'.join(self.subset)}, which dataset "
                             f"{self.plans_manager.dataset_name} does not have ({error}); define a "
                             f"DedicatedSubsetTrainer subclass with this dataset's names") from None

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        return SubsetInput(network, num_input_channels)

    def initialize(self):
        super().initialize()
        kept = unwrap(self.network).kept
        kept.zero_()
        kept[list(self.subset_channels)] = True

    def build_masking_transform(self) -> ModalityMaskingTransform:
        return ModalityMaskingTransform(len(self.modalities), mode="uniform", subsets=[self.subset_channels])

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"dedicated model for {self.modalities.subset_name(self.subset_channels)}: every "
                               f"other modality is zero in training and at inference")


def dedicated_trainer_name(names) -> str:
    return NAME_PREFIX + "_".join(names)


def _brats_trainers() -> dict[str, type]:
    """One DedicatedSubsetTrainer subclass per non-empty subset of the BraTS modalities."""
    classes = {}
    for size in range(1, len(BRATS_MODALITIES) + 1):
        for names in itertools.combinations(BRATS_MODALITIES, size):
            name = dedicated_trainer_name(names)
            classes[name] = type(name, (DedicatedSubsetTrainer,), {
                "subset": names, "__module__": __name__,
                "__doc__": f"nnU-Net on {'+'.join(names)} only (the other modalities always zero)."})
    return classes


_BRATS_TRAINERS = _brats_trainers()
globals().update(_BRATS_TRAINERS)
__all__ = ["DedicatedSubsetTrainer", *_BRATS_TRAINERS]
