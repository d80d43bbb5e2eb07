"""HD95 in both conventions against their references: the BraTS 2023 convention against DeepMind's
surface-distance (what the 2023 script calls; a test-only dependency, Apache-2.0) to the last digit,
on the kinds of volumes where the conventions part: tiny, merged, leaking, speckled lesions,
anisotropic voxels, 2D, the array's edge, empty masks. The medpy convention's brute-force checks
are in tests/test_metrics.py."""

import itertools

import numpy as np
import pytest
import surface_distance
from scipy import ndimage
from surface_distance import lookup_tables

from nnunet_missingmod.inference.hausdorff import ONE_EMPTY, _surfel_areas, hd95
from nnunet_missingmod.inference.lesion_wise import lesion_wise_scores


def script_hd95(prediction, reference, spacing):
    """The BraTS 2023 script's HD95 of two non-empty masks (``get_LesionWiseScores``' call)."""
    distances = surface_distance.compute_surface_distances(reference, prediction, tuple(float(s) for s in spacing))
    return surface_distance.compute_robust_hausdorff(distances, 95)


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius ** 2


def volumes(rng):
    """(name, prediction, reference, spacing): the kinds of cases the two conventions score apart."""
    shape = (36, 40, 32)
    tumour = ball(shape, (18, 20, 16), 9)
    small = ball(shape, (18, 20, 12), 4)
    leak = small.copy()
    leak[18, 20, 12:30] = True  # a one-voxel-thin leak, 14 voxels beyond the lesion
    speckle = tumour.copy()  # 60 stray voxels, all at least 4 mm from the tumour
    speckle.flat[rng.choice(np.flatnonzero(~ball(shape, (18, 20, 16), 13)), 60, replace=False)] = True
    merged = ball(shape, (12, 20, 16), 5) | ball(shape, (24, 20, 16), 5)
    tiny = np.zeros(shape, bool)
    tiny[5, 5, 5] = tiny[5, 6, 5] = True
    near_tiny = np.zeros(shape, bool)
    near_tiny[6, 5, 7] = True
    shifted = np.roll(tumour, (2, -1, 3), axis=(0, 1, 2))
    edge = np.zeros(shape, bool)
    edge[:6, :, :5] = True  # a block on three faces of the array
    yield "leak", leak, small, (1.0, 1.0, 1.0)
    yield "leak, anisotropic", leak, small, (1.0, 0.8, 1.5)
    yield "speckle", speckle, tumour, (1.0, 1.0, 1.0)
    yield "merged lesions vs one", merged, ball(shape, (18, 20, 16), 8), (1.0, 1.0, 1.0)
    yield "tiny", near_tiny, tiny, (1.0, 1.0, 1.0)
    yield "tiny in a tumour", tumour, tiny, (0.5, 0.5, 2.0)
    yield "shifted, anisotropic", shifted, tumour, (1.2, 0.9, 2.5)
    yield "at the array's edge", edge, np.roll(edge, 2, axis=0), (1.0, 1.0, 1.0)
    yield "random speckle both", rng.random(shape) > 0.98, rng.random(shape) > 0.98, (0.7, 1.3, 1.0)
    slice_2d = (rng.random((48, 40)) > 0.9) | ball((48, 40), (20, 20), 10, (1.0, 1.0))
    yield "2D", slice_2d, ball((48, 40), (22, 19), 9, (1.0, 1.0)), (1.0, 0.6)


def test_the_brats2023_convention_is_surface_distance_to_the_last_digit():
    for name, prediction, reference, spacing in volumes(np.random.default_rng(0)):
        assert hd95(prediction, reference, spacing, "brats2023") == script_hd95(prediction, reference, spacing), name


def test_random_volumes_agree_with_surface_distance():
    rng = np.random.default_rng(1)
    for trial in range(60):
        shape = (16, 18, 14) if trial % 3 else (30, 26)
        spacing = tuple(rng.choice([0.5, 1.0, 1.5, 3.0], len(shape)))
        prediction = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(0, 2)))
        reference = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(0, 2)))
        prediction[(0,) * len(shape)] = reference[(1,) * len(shape)] = True  # never empty
        assert hd95(prediction, reference, spacing, "brats2023") == script_hd95(prediction, reference, spacing), trial


def test_surfel_areas_are_surface_distances_table():
    """Re-derived from marching cubes, not copied: equal to surface-distance's table (its codes
    number the 2^d corners in another order) within one rounding of the sum, anisotropic too."""
    for spacing in [(1.0, 1.0, 1.0), (1.0, 2.0, 3.5), (0.7, 1.3, 5.0)]:
        theirs = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
        ours = _surfel_areas(spacing)
        for code in range(256):
            our_code = sum(1 << (a * 4 + b * 2 + c) for a, b, c in itertools.product((0, 1), repeat=3)
                           if code & int(kernel[a, b, c]))
            assert ours[our_code] == pytest.approx(theirs[code], rel=1e-15, abs=0), (spacing, code)
    for spacing in [(1.0, 1.0), (1.0, 2.7)]:
        theirs = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
        kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL
        ours = _surfel_areas(spacing)
        for code in range(16):
            our_code = sum(1 << (a * 2 + b) for a, b in itertools.product((0, 1), repeat=2) if code & int(kernel[a, b]))
            assert ours[our_code] == theirs[code], (spacing, code)


def test_empty_masks_get_the_conventions_penalties():
    empty, mask = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    mask[2:5, 2:5, 2:5] = True
    for convention, penalty in (("medpy", 373.13), ("brats2023", 374.0)):
        assert ONE_EMPTY[convention] == penalty
        assert hd95(empty, empty, (1, 1, 1), convention) == 0.0
        assert hd95(mask, empty, (1, 1, 1), convention) == hd95(empty, mask, (1, 1, 1), convention) == penalty
        assert hd95(mask, empty, (1, 1, 1), convention, one_empty=7.0) == 7.0
    with pytest.raises(ValueError, match="unknown HD95 convention 'hausdorff'"):
        hd95(mask, mask, (1, 1, 1), "hausdorff")


def test_the_conventions_part_on_leaks_and_speckle_not_on_smooth_shifts():
    """What docs/metrics.md says, measured: many mm apart where a few voxels stray (the pooled
    percentile counts them voxel by voxel; the 2023 script weighs them by area and takes the
    larger direction), close on a smooth shifted surface."""
    parted = {}
    for name, prediction, reference, spacing in volumes(np.random.default_rng(0)):
        parted[name] = (hd95(prediction, reference, spacing, "medpy"),
                        hd95(prediction, reference, spacing, "brats2023"))
    assert parted["leak"] == (0.0, 8.0)  # 14 voxels: under 5 % of the pooled ones, over 5 % of the area
    assert parted["speckle"][0] == 0.0 and parted["speckle"][1] > 8
    medpy, brats = parted["shifted, anisotropic"]
    assert abs(medpy - brats) < 1, parted["shifted, anisotropic"]


def test_lesion_wise_hd95_is_the_scripts():
    """One lesion and its prediction: the lesion-wise HD95 is surface-distance's; medpy's on request."""
    shape = (36, 40, 32)
    reference = ball(shape, (18, 20, 16), 8)
    prediction = ball(shape, (19, 20, 17), 7)
    prediction[19, 20, 17:30] = True  # a leak, still one component
    spacing = (1.0, 1.0, 1.5)
    scores = lesion_wise_scores(prediction, reference, spacing)
    assert (scores.lesions, scores.false_positives) == (1, 0)
    assert scores.hd95 == script_hd95(prediction, reference, spacing)
    medpy = lesion_wise_scores(prediction, reference, spacing, hd95_convention="medpy")
    assert medpy.hd95 == hd95(prediction, reference, spacing, "medpy") != scores.hd95
