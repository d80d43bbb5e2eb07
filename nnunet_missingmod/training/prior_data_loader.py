"""SMML's data loading: every training patch comes with its Segment Anything priors, cropped at
the same place and moved by the same spatial augmentation as the image.

How, without copying nnU-Net's ``generate_train_batch``:

1. :class:`DatasetWithPriors` wraps nnU-Net's training dataset; a case's image is returned with its
   prior maps appended as channels (:class:`ImageWithPriors`, read lazily from the memory-mapped
   files), so nnU-Net's own bounding-box crop cuts image and priors at one location.
2. Before the augmentation pipeline, :class:`PriorRouter` moves those channels from ``image`` to
   ``regression_target``: batchgeneratorsv2's spatial transforms (SpatialTransform, mirroring, the
   2D/3D conversions of dummy-2D augmentation) apply to it exactly what they apply to the image
   (same grid, linear interpolation, zero padding), while intensity, masking and label transforms
   leave it alone. After the pipeline it keeps the moved maps per sample.
3. :class:`PriorDataLoader` adds them to the batch as ``priors`` (B, K * M, *patch) in [0, 1].

Validation batches carry no priors (only the training dataset is wrapped).
"""

from __future__ import annotations

import numpy as np
import torch

from nnunet_missingmod.priors.storage import SCALE, open_case
from nnunet_missingmod.training.data_loader import ModalityMaskDataLoader

PRIORS_KEY = "priors"
_TRANSFORM_KEY = "regression_target"


class ImageWithPriors:
    """A case's image (C, *spatial) and priors (P, *spatial) seen as one (C + P, *spatial) array.

    Supports what nnU-Net's crop uses: ``shape`` and slicing with every channel selected. Only
    the sliced region is read from either file.
    """

    def __init__(self, image, priors):
        if tuple(image.shape[1:]) != tuple(priors.shape[1:]):
            raise ValueError(f"priors of shape {tuple(priors.shape)} do not fit the image of shape "
                             f"{tuple(image.shape)}; were they computed for another preprocessing?")
        self.image, self.priors = image, priors
        self.num_image_channels = image.shape[0]
        self.shape = (image.shape[0] + priors.shape[0], *image.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, index):
        if not isinstance(index, tuple) or index[0] != slice(None):
            raise IndexError("ImageWithPriors supports only slicing with all channels selected")
        image = np.asarray(self.image[index], dtype=np.float32)
        priors = np.asarray(self.priors[index], dtype=np.float32) / SCALE
        return np.concatenate((image, priors))


class DatasetWithPriors:
    """An nnU-Net dataset whose cases carry their priors (see :class:`ImageWithPriors`)."""

    def __init__(self, dataset, priors_folder: str, num_image_channels: int):
        self.dataset = dataset
        self.priors_folder = priors_folder
        self.num_image_channels = num_image_channels
        self.identifiers = dataset.identifiers

    def load_case(self, identifier):
        image, segmentation, previous_stage, properties = self.dataset.load_case(identifier)
        if image.shape[0] != self.num_image_channels:
            raise ValueError(f"case {identifier} has {image.shape[0]} channels, expected {self.num_image_channels}")
        return ImageWithPriors(image, open_case(self.priors_folder, identifier)), segmentation, previous_stage, \
            properties

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def __getattr__(self, name):  # anything else nnU-Net asks of a dataset (source_folder, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class PriorRouter:
    """Runs the augmentation pipeline with the prior channels as ``regression_target``."""

    def __init__(self, transforms, num_image_channels: int):
        self.transforms = transforms
        self.num_image_channels = num_image_channels
        self.records: list[torch.Tensor] = []

    def __call__(self, **data_dict):
        image = data_dict["image"]
        data_dict["image"] = image[:self.num_image_channels]
        data_dict[_TRANSFORM_KEY] = image[self.num_image_channels:]
        out = self.transforms(**data_dict)
        self.records.append(out.pop(_TRANSFORM_KEY))
        return out


class PriorDataLoader(ModalityMaskDataLoader):
    """The foundation's loader (modality masks, unmasked image), plus ``priors`` when the dataset
    is a :class:`DatasetWithPriors`; otherwise exactly the foundation's loader."""

    def __init__(self, data, *args, transforms=None, **kwargs):
        self.prior_router = None
        if isinstance(data, DatasetWithPriors):
            if transforms is None:
                raise ValueError("a dataset with priors needs the augmentation pipeline to route them")
            self.prior_router = transforms = PriorRouter(transforms, data.num_image_channels)
        super().__init__(data, *args, transforms=transforms, **kwargs)

    def generate_train_batch(self):
        if self.prior_router is None:
            return super().generate_train_batch()
        self.prior_router.records = []
        batch = super().generate_train_batch()
        # interpolation can overshoot [0, 1] by a rounding error; these are probabilities
        batch[PRIORS_KEY] = torch.stack(self.prior_router.records).clamp_(0, 1)
        return batch
