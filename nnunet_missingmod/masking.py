"""The modality-masking transform: the only place where training draws which modalities are missing.

It is a batchgeneratorsv2 transform (parameters sampled in ``get_parameters``, applied in
``apply``) that the trainers insert after every intensity augmentation, so a masked channel is
exactly 0 in training as it is at inference. Besides zeroing channels it records the
availability mask (and, when a method needs it, the unmasked image) in the sample; the trainers'
data loader (``training.data_loader``) collates those into the batch.

Random numbers come from numpy's global generator, as in nnU-Net's data loader and most
batchgeneratorsv2 transforms: batchgenerators reseeds it in every augmentation worker, whereas
torch's generator is copied unchanged into forked workers, which would then draw the same masks in
lockstep. ``np.random.seed`` makes the draws reproducible.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

MASK_KEY = "modality_mask"
UNMASKED_IMAGE_KEY = "image_unmasked"

SAMPLING_MODES = ("uniform", "independent")


def all_subsets(num_modalities: int) -> list[tuple[int, ...]]:
    """The 2^M - 1 non-empty subsets, singles first (same order as ``Modalities.subsets``)."""
    channels = range(num_modalities)
    return [s for k in range(1, num_modalities + 1) for s in itertools.combinations(channels, k)]


class ModalityMaskingTransform(BasicTransform):
    """Zero whole modalities of a sample, never all of them, and record which are present.

    Args:
        num_modalities: number of image channels, all of them modalities.
        mode: ``"uniform"``: one subset drawn uniformly from ``subsets`` (default: all 2^M - 1, as
            the papers do); ``"independent"``: each modality dropped with ``drop_probability``,
            redrawn until at least one is kept.
        subsets: channel-index tuples allowed in ``"uniform"`` mode.
        num_views: how many masks to draw per sample, pairwise different (e.g. 2 for two peer
            branches). The image is masked with the first; all are recorded, shape ``(V, M)``.
        keep_unmasked: also record the image before masking (for a teacher that sees everything).
    """

    def __init__(self, num_modalities: int, mode: str = "uniform", drop_probability: float = 0.5,
                 subsets: Optional[Sequence[Sequence[int]]] = None, num_views: int = 1,
                 keep_unmasked: bool = False):
        super().__init__()
        if num_modalities < 2:
            raise ValueError(f"masking needs at least two modalities, got num_modalities={num_modalities}")
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        if not 0.0 <= drop_probability < 1.0:
            raise ValueError(f"drop_probability must be in [0, 1), got {drop_probability}")
        subsets = [tuple(sorted(set(s))) for s in (subsets or all_subsets(num_modalities))]
        for s in subsets:
            if not s or min(s) < 0 or max(s) >= num_modalities:
                raise ValueError(f"subset {s} is empty or names a channel outside 0..{num_modalities - 1}")
        max_views = len(subsets) if mode == "uniform" else 2 ** num_modalities - 1
        if not 1 <= num_views <= max_views:
            raise ValueError(f"num_views must be between 1 and {max_views}, got {num_views}")
        self.num_modalities = num_modalities
        self.mode = mode
        self.drop_probability = drop_probability
        self.subset_masks = torch.zeros((len(subsets), num_modalities), dtype=torch.bool)
        for row, s in enumerate(subsets):
            self.subset_masks[row, list(s)] = True
        self.num_views = num_views
        self.keep_unmasked = keep_unmasked

    def get_parameters(self, **data_dict) -> dict:
        if self.mode == "uniform":
            rows = np.random.permutation(len(self.subset_masks))[:self.num_views]
            return {"masks": self.subset_masks[torch.from_numpy(rows)]}
        masks = []
        while len(masks) < self.num_views:
            keep = torch.from_numpy(np.random.random_sample(self.num_modalities) >= self.drop_probability)
            if keep.any() and not any(torch.equal(keep, m) for m in masks):
                masks.append(keep)
        return {"masks": torch.stack(masks)}

    def apply(self, data_dict: dict, **params) -> dict:
        image = data_dict["image"]
        if image.shape[0] != self.num_modalities:
            raise RuntimeError(f"ModalityMaskingTransform expects {self.num_modalities} image channels, "
                               f"got {image.shape[0]}")
        masks = params["masks"]
        if self.keep_unmasked:
            data_dict[UNMASKED_IMAGE_KEY] = image.clone()
        image[~masks[0]] = 0
        data_dict[MASK_KEY] = masks
        return data_dict
