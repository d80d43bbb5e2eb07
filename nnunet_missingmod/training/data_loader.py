"""nnU-Net's data loader, extended to carry what the masking transform records.

``nnUNetDataLoader.generate_train_batch`` keeps only ``image`` and ``segmentation`` of each
transformed sample. Instead of copying that method, this loader wraps its transforms with a
recorder that keeps the other keys (the modality mask, the unmasked image) per sample, and adds
them, stacked, to the batch the parent returns.

nnU-Net constructs its loaders inside ``nnUNetTrainer.get_dataloaders`` with no factory hook;
:func:`nnunet_missingmod.training.nnunet_internals.loaders_of_class` substitutes this class for
the duration of that one call.
"""

from __future__ import annotations

import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_missingmod.masking import MASK_KEY, UNMASKED_IMAGE_KEY

# transform output key -> batch key (nnU-Net calls the image 'data' in a batch)
BATCH_KEYS = {MASK_KEY: "modality_mask", UNMASKED_IMAGE_KEY: "data_unmasked"}


class _SampleRecorder:
    """Calls the transforms and keeps, per sample, the outputs nnU-Net's loader would drop."""

    def __init__(self, transforms):
        self.transforms = transforms
        self.records: dict[str, list[torch.Tensor]] = {}

    def __call__(self, **data_dict):
        out = self.transforms(**data_dict)
        for key in BATCH_KEYS:
            if key in out:
                self.records.setdefault(key, []).append(out[key])
        return out


class ModalityMaskDataLoader(nnUNetDataLoader):
    """Batches gain ``modality_mask`` ``(B, V, M)`` and, if recorded, ``data_unmasked``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.transforms is not None:
            self.transforms = _SampleRecorder(self.transforms)

    def generate_train_batch(self):
        if self.transforms is None:
            return super().generate_train_batch()
        self.transforms.records = {}
        batch = super().generate_train_batch()
        for key, samples in self.transforms.records.items():
            batch[BATCH_KEYS[key]] = torch.stack(samples)
        return batch
