"""Dice and HD95 against brute-force references, the BraTS edge cases, regions from dataset.json."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from nnunet_missingmod.inference.metrics import (HD95_ONE_EMPTY, dice, hd95, region_metrics,
                                                 regions_from_dataset_json, short_region_name)

BRATS_REGIONS = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}


def brute_surface(mask):
    """Voxels of the mask with a face neighbour outside the mask or outside the array."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    interior = mask.copy()
    for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
        interior &= np.roll(padded, step, axis=axis)[inner]
    return mask & ~interior


def brute_hd95(pred, ref, spacing):
    """All pairwise distances in mm between surface voxels, nearest per voxel, pooled, percentile."""
    a = np.argwhere(brute_surface(pred)) * np.asarray(spacing, dtype=float)
    b = np.argwhere(brute_surface(ref)) * np.asarray(spacing, dtype=float)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


def uncropped_hd95(pred, ref, spacing):
    """medpy's algorithm on the full volume, without our bounding-box crop."""
    cross = ndimage.generate_binary_structure(pred.ndim, 1)
    ps, rs = (m & ~ndimage.binary_erosion(m, structure=cross) for m in (pred, ref))
    d = np.concatenate([ndimage.distance_transform_edt(~rs, sampling=spacing)[ps],
                        ndimage.distance_transform_edt(~ps, sampling=spacing)[rs]])
    return float(np.percentile(d, 95))


def random_cases(n, seed):
    """Small random masks, 2D and 3D, dense to sparse, with random anisotropic spacing."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ndim = rng.choice([2, 3])
        shape = tuple(rng.integers(3, 14 if ndim == 2 else 9, size=ndim))
        density_p, density_r = rng.uniform(0.02, 0.7, size=2)
        pred, ref = rng.random(shape) < density_p, rng.random(shape) < density_r
        if rng.random() < 0.5:  # blobs, not only salt and pepper
            pred, ref = ndimage.binary_opening(pred), ndimage.binary_dilation(ref)
        yield pred, ref, tuple(rng.uniform(0.3, 3.0, size=ndim))


def test_dice_and_hd95_match_brute_force_on_random_masks():
    checked = 0
    for pred, ref, spacing in random_cases(300, seed=0):
        if not (pred.any() and ref.any()):  # the conventions, checked on their own below
            assert hd95(pred, ref, spacing) in (0.0, HD95_ONE_EMPTY)
            continue
        expected_dice = 2 * np.sum(pred & ref) / (np.sum(pred) + np.sum(ref))
        assert dice(pred, ref) == pytest.approx(expected_dice, abs=1e-12)
        assert hd95(pred, ref, spacing) == pytest.approx(brute_hd95(pred, ref, spacing), abs=1e-9)
        assert hd95(pred, ref, spacing) == pytest.approx(uncropped_hd95(pred, ref, spacing), abs=1e-9)
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 4)])
def test_every_empty_non_empty_combination(shape):
    empty, full = np.zeros(shape, bool), np.zeros(shape, bool)
    full[(1,) * len(shape)] = True
    spacing = (1.5,) * len(shape)
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, spacing) == 0.0
    for a, b in [(full, empty), (empty, full)]:
        assert dice(a, b) == 0.0 and hd95(a, b, spacing) == HD95_ONE_EMPTY
    assert dice(full, full) == 1.0 and hd95(full, full, spacing) == 0.0
    assert HD95_ONE_EMPTY == 373.13 == round(math.sqrt(240**2 + 240**2 + 155**2), 2)


def test_hand_computed_cases():
    a, b = np.zeros((9, 9, 9), bool), np.zeros((9, 9, 9), bool)
    a[4, 4, 1], b[4, 4, 4] = True, True
    assert hd95(a, b, (2.0, 2.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, b, (1.0, 1.0, 0.5)) == pytest.approx(1.5)  # spacing follows the array axes
    cube = np.zeros((12, 12, 12), bool)
    cube[2:8, 3:9, 1:10] = True
    assert hd95(cube, cube, (1.0, 0.7, 3.0)) == 0.0 and dice(cube, cube) == 1.0
    p, r = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    p[0, :] = True  # 4 voxels
    r[0, 2:], r[1, 2:] = True, True  # 4 voxels, 2 shared
    assert dice(p, r) == pytest.approx(0.5)
    r[:] = False
    r[3, 3] = True
    assert dice(p, r) == 0.0  # disjoint
    assert dice(p.astype(np.uint8) * 3, p) == 1.0  # any non-zero counts as foreground


def test_crop_gives_the_uncropped_result_and_edges_count_as_surface():
    rng = np.random.default_rng(1)
    big = (60, 70, 50)
    for corner in [(20, 30, 15), (0, 0, 0), (52, 62, 42)]:  # inside, and touching the volume's edges
        pred, ref = np.zeros(big, bool), np.zeros(big, bool)
        box = tuple(slice(c, c + 8) for c in corner)
        pred[box] = rng.random((8, 8, 8)) < 0.5
        ref[box] = ndimage.binary_dilation(rng.random((8, 8, 8)) < 0.2)
        spacing = (0.9, 1.1, 2.5)
        assert hd95(pred, ref, spacing) == pytest.approx(uncropped_hd95(pred, ref, spacing), abs=1e-9)
        assert hd95(pred, ref, spacing) == pytest.approx(brute_hd95(pred, ref, spacing), abs=1e-9)
    # A full block touching the array edge: its face on the edge is surface (medpy's erosion).
    a = np.zeros((5, 5), bool)
    a[:, :2] = True
    b = np.zeros((5, 5), bool)
    b[:, 4] = True
    assert hd95(a, b, (1.0, 1.0)) == pytest.approx(brute_hd95(a, b, (1.0, 1.0)))


def test_bad_arguments_are_refused():
    a = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        region_metrics(np.zeros((3, 3)), np.zeros((3, 4)), BRATS_REGIONS, (1, 1))


def brats_like(shape, centre, radii):
    """Nested spheres as nnU-Net's BraTS labels: 1 edema outside, 2 core, 3 enhancing inside."""
    grid = np.indices(shape)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    seg = np.zeros(shape, np.uint8)
    for label, radius in zip((1, 2, 3), radii):
        seg[r <= radius] = label
    return seg


def test_region_metrics_on_brats_like_label_maps():
    shape, spacing = (30, 32, 28), (1.0, 1.0, 1.5)
    ref = brats_like(shape, (15, 16, 14), (9, 6, 3))
    pred = brats_like(shape, (16, 16, 13), (8, 6, -1))  # ET missed
    scores = region_metrics(pred, ref, BRATS_REGIONS, spacing)
    assert list(scores) == list(BRATS_REGIONS)
    for name, labels in BRATS_REGIONS.items():
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        assert scores[name] == {"dice": dice(p, r), "hd95": hd95(p, r, spacing)}
    assert 0.5 < scores["whole_tumor"]["dice"] < 1 and 0 < scores["whole_tumor"]["hd95"] < 5
    assert scores["enhancing_tumor"] == {"dice": 0.0, "hd95": HD95_ONE_EMPTY}
    no_et = np.where(ref == 3, 2, ref)  # absent in both -> perfect
    assert region_metrics(pred, no_et, {"enhancing_tumor": (3,)}, spacing)["enhancing_tumor"] == {
        "dice": 1.0, "hd95": 0.0}
    # Float label maps (as image readers return them) score the same as integer ones.
    assert region_metrics(pred.astype(np.float32), ref.astype(np.float32), BRATS_REGIONS, spacing) == scores
    assert all(type(v) is float for s in scores.values() for v in s.values())  # JSON-ready


def test_regions_from_dataset_json():
    # nnU-Net's Dataset137_BraTS21 form (tuples, a one-element tuple), and as read back from JSON.
    brats = {"labels": {"background": 0, "whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)},
             "regions_class_order": (1, 2, 3)}
    assert regions_from_dataset_json(brats) == BRATS_REGIONS
    assert regions_from_dataset_json(json.loads(json.dumps(brats))) == BRATS_REGIONS
    brats["labels"]["enhancing_tumor"] = 3  # int for a single-label region is accepted too
    assert regions_from_dataset_json(brats) == BRATS_REGIONS
    labels = {"labels": {"background": 0, "edema": 1, "non_enhancing": [2], "enhancing": 3, "ignore": 4}}
    assert regions_from_dataset_json(labels) == {"edema": (1,), "non_enhancing": (2,), "enhancing": (3,)}
    with pytest.raises(ValueError, match="no foreground"):
        regions_from_dataset_json({"labels": {"background": 0}})


def test_short_region_names():
    for name in ["whole_tumor", "Whole Tumor", "WHOLE_TUMOUR", "wt"]:
        assert short_region_name(name) == "WT"
    assert short_region_name("tumor_core") == "TC" and short_region_name("Enhancing-Tumor") == "ET"
    assert short_region_name("edema") == "edema"
