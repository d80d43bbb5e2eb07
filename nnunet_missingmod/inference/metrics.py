"""Dice and HD95 per region, with the BraTS edge-case conventions (see docs/metrics.md).

Written here rather than imported because none of the usual tools gives the numbers the papers
print on every case: medpy (GPL) raises on empty masks, MONAI returns NaN for HD95 when one mask
is empty, and DeepMind's surface-distance (the BraTS 2023 script's HD95) fails on an empty mask
with NumPy 2 (``np.Inf``) and is not maintained. HD95 is in :mod:`hausdorff`, in both conventions.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from nnunet_missingmod.inference.hausdorff import DEFAULT_CONVENTION, ONE_EMPTY, hd95

HD95_ONE_EMPTY = ONE_EMPTY["medpy"]  # the legacy HD95 of the papers' convention, when exactly one mask is empty

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


def region_metrics(pred_seg: np.ndarray, ref_seg: np.ndarray, regions: Mapping[str, Sequence[int]],
                   spacing: Sequence[float], hd95_convention: str = DEFAULT_CONVENTION) -> dict[str, dict[str, float]]:
    """``{region: {"dice", "hd95"}}`` where a region is the set of voxels whose label is in its
    label set (BraTS: whole_tumor = labels 1, 2, 3), the way the papers score WT, TC and ET."""
    pred_seg, ref_seg = np.asarray(pred_seg), np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred_seg.shape} vs {ref_seg.shape}")
    scores = {}
    for name, labels in regions.items():
        labels = list(np.atleast_1d(labels))
        pred, ref = np.isin(pred_seg, labels), np.isin(ref_seg, labels)
        scores[name] = {"dice": dice(pred, ref), "hd95": hd95(pred, ref, spacing, hd95_convention)}
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
