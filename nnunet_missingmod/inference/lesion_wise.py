"""Lesion-wise Dice and HD95 as the BraTS 2023 glioma challenge (GLI) defines them.

Written from the organisers' scoring script (``rachitsaluja/BraTS-2023-Metrics``, ``metrics.py``,
``get_LesionWiseScores`` and ``get_LesionWiseResults``; the script carries no licence, so the
definition is re-implemented, not copied):

1. The reference mask is dilated ``dilation`` times with the 18-connected structuring element;
   reference voxels that fall in one connected component (26-connectivity) of the dilated mask
   are one lesion, so lesions closer than the dilation are merged. Lesion voxels stay undilated.
2. A predicted component (26-connectivity) that touches a lesion's dilated region is matched to
   it; all components matched to a lesion, whole, form its prediction. A component may match
   several lesions and then counts for each.
3. Lesions of at most ``min_volume`` mm^3 are not scored (their matches are not false positives
   either). Each scored lesion gets Dice and HD95 against its prediction; a missed lesion scores
   Dice 0 and HD95 ``penalty``.
4. Every predicted component matched to no lesion is a false positive: Dice 0, HD95 ``penalty``.
5. Lesion-wise Dice and HD95 are the sums over scored lesions and false positives divided by
   their number; with neither (nothing to find, nothing found) Dice 1 and HD95 0.

A lesion's HD95 is the script's: surface-distance's surfel-weighted robust Hausdorff at 95 %, in
mm with the voxel spacing (``hausdorff``, convention ``brats2023``). ``hd95_convention="medpy"``
gives the pooled percentile of medpy, panoptica and ``brats-evaluation`` instead; the two differ
by several mm on lesions with a thin leak or speckle (docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunet_missingmod.inference.hausdorff import ONE_EMPTY, checked_masks, hd95
from nnunet_missingmod.inference.metrics import dice

GLI_DILATION = 3  # BraTS 2023 GLI, SSA and PED; MEN and MET use 1
MIN_LESION_VOLUME_MM3 = 50.0  # GLI, SSA, PED, MEN; MET uses 2
HD95_PENALTY = ONE_EMPTY["brats2023"]  # the script's 374 mm for a missed or a false positive lesion
HD95_CONVENTION = "brats2023"


@dataclass(frozen=True)
class LesionScores:
    dice: float
    hd95: float
    lesions: int  # reference lesions scored (above the volume threshold)
    missed: int  # of those, without any matched prediction
    false_positives: int


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array."""
    hits = [np.flatnonzero(np.any(mask, axis=tuple(i for i in range(mask.ndim) if i != axis)))
            for axis in range(mask.ndim)]
    return tuple(slice(max(h[0] - margin, 0), min(h[-1] + margin + 1, n)) for h, n in zip(hits, mask.shape))


def _union(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def lesion_wise_scores(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                       dilation: int = GLI_DILATION, min_volume: float = MIN_LESION_VOLUME_MM3,
                       penalty: float = HD95_PENALTY, hd95_convention: str = HD95_CONVENTION) -> LesionScores:
    """Lesion-wise Dice and HD95 of two boolean masks (see the module docstring); ``spacing`` in
    mm in the arrays' axis order."""
    prediction, reference, spacing = checked_masks(prediction, reference, spacing)
    connectivity = ndimage.generate_binary_structure(reference.ndim, reference.ndim)  # 26 in 3d
    predicted_components, _ = ndimage.label(prediction, connectivity)
    predicted_boxes = ndimage.find_objects(predicted_components)

    dilated_lesions = np.zeros(reference.shape, dtype=np.int32)
    if reference.any():
        box = _box(reference, dilation)  # dilation reaches at most `dilation` voxels beyond the mask
        dilated = ndimage.binary_dilation(reference[box], ndimage.generate_binary_structure(reference.ndim, 2),
                                          iterations=dilation) if dilation > 0 else reference[box]
        dilated_lesions[box], _ = ndimage.label(dilated, connectivity)
    lesions = np.where(reference, dilated_lesions, 0)  # reference voxels, numbered by their merged lesion
    voxel_volume = float(np.prod(spacing))

    matched, dices, distances, missed = set(), [], [], 0
    for number, region_box in enumerate(ndimage.find_objects(dilated_lesions), start=1):
        if region_box is None:
            continue
        touching = np.unique(predicted_components[region_box][dilated_lesions[region_box] == number])
        touching = [int(c) for c in touching if c != 0]
        matched.update(touching)
        box = _union([region_box] + [predicted_boxes[c - 1] for c in touching])
        lesion = lesions[box] == number
        if np.count_nonzero(lesion) * voxel_volume <= min_volume:
            continue
        predicted = np.isin(predicted_components[box], touching) if touching else np.zeros_like(lesion)
        missed += not touching
        dices.append(dice(predicted, lesion))
        distances.append(hd95(predicted, lesion, spacing, hd95_convention, one_empty=penalty))
    false_positives = len(predicted_boxes) - len(matched)
    count = len(dices) + false_positives
    if count == 0:
        return LesionScores(1.0, 0.0, 0, 0, 0)
    return LesionScores(dice=float(sum(dices) / count), hd95=float((sum(distances) + penalty * false_positives) / count),
                        lesions=len(dices), missed=missed, false_positives=false_positives)
