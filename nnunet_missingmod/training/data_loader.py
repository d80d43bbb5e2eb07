"""nnU-Net's data loader, extended to carry what the masking transform records.

``nnUNetDataLoader.generate_train_batch`` keeps only ``image`` and ``segmentation`` of each
transformed sample. Instead of copying that method, this loader wraps its transforms with a
recorder that keeps the other keys (the modality mask, the unmasked image) per sample, and adds
them, stacked, to the batch the parent returns.

nnU-Net constructs its loaders inside ``nnUNetTrainer.get_dataloaders`` with no factory hook;
:func:`nnunet_missingmod.training.nnunet_internals.dataloading_built_by` substitutes this class
for the duration of that one call.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_missingmod.masking import MASK_KEY, UNMASKED_IMAGE_KEY
from nnunet_missingmod.training.nnunet_internals import limit_augmentation_worker_threads
from nnunet_missingmod.training.seeding import derived_seed, seeded

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
    """Batches gain ``modality_mask`` ``(B, V, M)`` and, if recorded, ``data_unmasked``.

    With a ``seed``, each batch is drawn and augmented under its own seed, derived from the seed,
    ``stream`` (the DDP rank and start epoch) and the batch's place in the stream, wherever it is
    generated (:mod:`nnunet_missingmod.training.seeding`).
    """

    def __init__(self, *args, seed: int | None = None, stream: tuple = (), **kwargs):
        super().__init__(*args, **kwargs)
        if self.transforms is not None:
            self.transforms = _SampleRecorder(self.transforms)
        self.seed, self.stream, self.batches_drawn = seed, tuple(stream), 0
        self._process = os.getpid()  # the trainer's; a batch drawn in another is an augmentation worker's

    def __next__(self):
        if os.getpid() != self._process:  # the first batch of an augmentation worker
            limit_augmentation_worker_threads()
            self._process = os.getpid()
        if self.seed is None:
            return super().__next__()
        # the batch's place in the whole stream: workers taken in turn deliver batches in this order,
        # so the stream is the same for any number of workers (one process included)
        workers = self.number_of_threads_in_multithreaded or 1
        with seeded(derived_seed(self.seed, *self.stream, self.batches_drawn * workers + self.thread_id)):
            batch = super().__next__()
        self.batches_drawn += 1
        return batch

    def generate_train_batch(self):
        if self.transforms is None:
            return super().generate_train_batch()
        self.transforms.records = {}
        batch = super().generate_train_batch()
        for key, samples in self.transforms.records.items():
            batch[BATCH_KEYS[key]] = torch.stack(samples)
        return batch
