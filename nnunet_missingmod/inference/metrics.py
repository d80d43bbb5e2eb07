"""Dice and HD95 per region, with the BraTS edge-case conventions (see docs/metrics.md).

Written here rather than imported because none of the usual tools gives the numbers the papers
print on every case: medpy (GPL) raises on empty masks, MONAI returns NaN for HD95 when one mask
is empty, DeepMind's surface-distance breaks with NumPy 2, and the BraTS tools ignore the voxel
spacing. Only numpy and scipy.ndimage are used.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

# HD95 when exactly one mask is empty: the diagonal of the 240 x 240 x 155 BraTS (SRI-24) volume
# at 1 mm, sqrt(240^2 + 240^2 + 155^2) = 373.1287 mm, as the BraTS evaluations report it.
HD95_ONE_EMPTY = 373.13

_SHORT_NAMES = {"wholetumor": "WT", "wholetumour": "WT", "wt": "WT",
                "tumorcore": "TC", "tumourcore": "TC", "tc": "TC",
                "enhancingtumor": "ET", "enhancingtumour": "ET", "et": "ET"}


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred.shape} vs {ref.shape}")
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """2|P∩R| / (|P|+|R|) of two boolean masks; 1.0 when both are empty (nothing to find, nothing
    found), 0.0 when exactly one is: the legacy BraTS / medpy / RFNet convention."""
    pred, ref = _pair(pred, ref)
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return 1.0
    return float(2 * np.count_nonzero(pred & ref) / total)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a | b grown by one voxel (clipped to the array). The margin keeps the
    erosion identical to the one on the full volume, and the exact Euclidean distance transform
    of the crop equals the full one because every surface voxel lies inside it."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(np.any(union, axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(max(hit[0] - 1, 0), min(hit[-1] + 2, union.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """medpy's surface: the mask minus its erosion by the connectivity-1 cross (voxels at the
    array edge count as surface, as erosion treats outside as background)."""
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=footprint)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], one_empty: float = HD95_ONE_EMPTY) -> float:
    """95th percentile of the symmetric surface distances in mm (medpy's ``hd95``).

    ``spacing`` is the voxel size in mm in the axis order of the arrays (nnU-Net's readers already
    give it so). Both empty -> 0.0; exactly one empty -> ``one_empty``; otherwise the
    distances from each surface voxel of one mask to the nearest surface voxel of the other, both
    directions pooled, and ``np.percentile(d, 95)``. The work is done on the bounding box of the
    union, so a small tumour in a large volume costs what the tumour costs.
    """
    pred, ref = _pair(pred, ref)
    spacing = tuple(float(s) for s in np.atleast_1d(spacing))
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match the {pred.ndim} axes of the masks")
    has_pred, has_ref = pred.any(), ref.any()
    if not (has_pred or has_ref):
        return 0.0
    if not (has_pred and has_ref):
        return float(one_empty)
    box = _union_box(pred, ref)
    pred_surface, ref_surface = _surface(pred[box]), _surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def region_metrics(pred_seg: np.ndarray, ref_seg: np.ndarray, regions: Mapping[str, Sequence[int]],
                   spacing: Sequence[float]) -> dict[str, dict[str, float]]:
    """``{region: {"dice", "hd95"}}`` where a region is the set of voxels whose label is in its
    label set (BraTS: whole_tumor = labels 1, 2, 3), the way the papers score WT, TC and ET."""
    pred_seg, ref_seg = np.asarray(pred_seg), np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred_seg.shape} vs {ref_seg.shape}")
    scores = {}
    for name, labels in regions.items():
        labels = list(np.atleast_1d(labels))
        pred, ref = np.isin(pred_seg, labels), np.isin(ref_seg, labels)
        scores[name] = {"dice": dice(pred, ref), "hd95": hd95(pred, ref, spacing)}
    return scores


def regions_from_dataset_json(dataset_json: dict) -> dict[str, tuple[int, ...]]:
    """The regions to score, named as in dataset.json ``labels``.

    Region-based datasets: every entry with its labels, e.g. whole_tumor (1, 2, 3), tumor_core
    (2, 3), enhancing_tumor (3,). Label-based datasets: each foreground label alone, e.g. edema
    (1,). Both are the same rule on the entries' values (int, list or tuple, as nnU-Net accepts
    them). Background and nnU-Net's ``ignore`` label are never scored.
    """
    labels = dataset_json["labels"]
    regions = {name: tuple(int(v) for v in np.atleast_1d(value)) for name, value in labels.items()
               if name not in ("background", "ignore")}
    if not regions:
        raise ValueError(f"dataset.json labels have no foreground label to score: {labels}")
    return regions


def short_region_name(name: str) -> str:
    """WT / TC / ET for the BraTS regions however they are spelled (``whole_tumor``, ``Whole
    Tumor``, ``enhancing-tumour``), else ``name`` unchanged: the column heads of the papers."""
    key = "".join(c for c in name.lower() if c not in " _-")
    if key.endswith("postprocessed") and key[:-len("postprocessed")] in _SHORT_NAMES:
        return _SHORT_NAMES[key[:-len("postprocessed")]] + "pp"  # ETpp, the RFNet-family post-processed ET
    return _SHORT_NAMES.get(key, name)
