"""HD95 in the two conventions in use, both in mm with the voxel spacing (docs/metrics.md).

``medpy``, what the missing-modality papers report (M2FTrans, PASSION, DeMoSeg and MST-KDNet
score with medpy's ``hd95``): surface voxels are a mask's voxels that its erosion by the
connectivity-1 cross removes; the distances from each surface voxel of one mask to the nearest of
the other, both directions pooled, and their 95th percentile (``np.percentile``, linear
interpolation). Every surface voxel weighs the same.

``brats2023``, the BraTS 2023 scoring script's (``compute_robust_hausdorff(distances, 95)`` of
DeepMind's surface-distance): the surface is marching cubes' (marching squares' in 2D), on the
grid of voxel corners. Each corner whose 2x2x2 neighbourhood is neither all inside nor all outside
carries a surface element ("surfel") of the area of its triangles in mm^2; the distance of a
surfel of one mask is to the nearest surfel position of the other. Per direction, the distance
at which the surfels sorted by distance reach 95 % of the surface area; the larger direction is
the HD95. A thin leak or speckle, whose few voxels count fully in the pooled percentile, carries
little area here, and the maximum over directions is never below either directed percentile:
the two conventions differ by many mm on such cases, not by fractions of a voxel.

The surfel areas are derived, not copied: the triangles of each neighbourhood come from
scikit-image's Lorensen marching cubes on the neighbourhood's minority corners (a diagonal pair of
corners gets two separate triangles, as in surface-distance's table). tests/test_hausdorff.py
checks the result against surface-distance itself. Both are computed on the bounding box of the
two masks, so a small lesion in a large volume costs what the lesion costs.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np
from scipy import ndimage

CONVENTIONS = ("medpy", "brats2023")
DEFAULT_CONVENTION = "medpy"  # comparable with the missing-modality papers (docs/metrics.md)
# HD95 when exactly one mask is empty, per convention.
ONE_EMPTY = {
    # the diagonal of the 240 x 240 x 155 BraTS (SRI-24) volume at 1 mm, sqrt(240^2 + 240^2 + 155^2)
    # = 373.1287 mm, as the BraTS evaluations before 2023 (CaPTk) and the papers' tables report it
    "medpy": 373.13,
    "brats2023": 374.0,  # the 2023 script's value, for its legacy and its lesion-wise HD95
}

# How a report's header names each convention.
DESCRIPTIONS = {"medpy": "medpy's: the surface voxels' distances of both directions pooled",
                "brats2023": "the BraTS 2023 script's: surfel-area weighted, the larger of the two directed "
                             "percentiles"}


def checked_masks(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]):
    """Two boolean masks of one shape and a spacing per axis, or a ValueError saying which is off."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred.shape} vs {ref.shape}")
    spacing = tuple(float(s) for s in np.atleast_1d(spacing))
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match the {pred.ndim} axes of the masks")
    return pred, ref, spacing


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], convention: str = DEFAULT_CONVENTION,
         one_empty: float | None = None) -> float:
    """HD95 in mm of two boolean masks; ``spacing`` is the voxel size in the arrays' axis order.

    Both empty: 0.0. Exactly one empty: ``one_empty`` (the convention's ``ONE_EMPTY`` if None).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown HD95 convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    pred, ref, spacing = checked_masks(pred, ref, spacing)
    has_pred, has_ref = pred.any(), ref.any()
    if not (has_pred or has_ref):
        return 0.0
    if not (has_pred and has_ref):
        return float(ONE_EMPTY[convention] if one_empty is None else one_empty)
    if convention == "medpy":
        return _pooled_hd95(pred, ref, spacing)
    return _surfel_weighted_hd95(pred, ref, spacing)


def _union_box(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of a | b grown by ``margin`` voxels, clipped to the array."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(np.any(union, axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(max(hit[0] - margin, 0), min(hit[-1] + margin + 1, union.shape[axis])))
    return tuple(box)


# --- medpy: surface voxels, pooled percentile -----------------------------------------------------

def _surface_voxels(mask: np.ndarray) -> np.ndarray:
    """The mask minus its erosion by the connectivity-1 cross (outside the array is background)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def _pooled_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    # A one-voxel margin keeps the erosion as on the full volume, and the exact distance transform
    # of the crop equals the full one because every surface voxel lies inside it.
    box = _union_box(pred, ref, margin=1)
    pred_surface, ref_surface = _surface_voxels(pred[box]), _surface_voxels(ref[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


# --- brats2023: surfels on the corner grid, area-weighted directed percentiles ---------------------

@functools.lru_cache(maxsize=None)
def _triangle_area_vectors(code: int) -> np.ndarray:
    """Half the cross product of each marching-cubes triangle of a 2x2x2 neighbourhood (bit
    ``a*4 + b*2 + c`` set: corner (a, b, c) inside), in voxel units: exact binary fractions."""
    from skimage.measure import marching_cubes

    corners = np.array([(code >> (a * 4 + b * 2 + c)) & 1 for a, b, c in itertools.product((0, 1), repeat=3)],
                       dtype=np.float32).reshape(2, 2, 2)
    if corners.sum() > 4:  # triangulate around the minority: a diagonal pair stays two triangles
        corners = 1 - corners
    vertices, faces, _, _ = marching_cubes(corners, level=0.5, method="lorensen", allow_degenerate=True)
    triangles = vertices.astype(np.float64)[faces]
    return np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]) / 2


def _square_segment_vectors(code: int) -> list[tuple[float, float]]:
    """The marching-squares segments of a 2x2 neighbourhood (bit ``a*2 + b``: corner (a, b)
    inside) as (extent along axis 0, extent along axis 1) in voxel units: a corner alone cuts
    its corner (a half diagonal), two corners along an edge give a straight segment, and the
    diagonal pair two corner cuts."""
    inside = [[(code >> (a * 2 + b)) & 1 for b in (0, 1)] for a in (0, 1)]
    minority = 1 if sum(map(sum, inside)) <= 2 else 0
    corners = [(a, b) for a in (0, 1) for b in (0, 1) if inside[a][b] == minority]
    if len(corners) == 2 and corners[0][0] == corners[1][0]:
        return [(0.0, 1.0)]  # both corners on one row: a segment along axis 1
    if len(corners) == 2 and corners[0][1] == corners[1][1]:
        return [(1.0, 0.0)]
    return [(0.5, 0.5)] * len(corners)  # each corner cut off alone


@functools.lru_cache(maxsize=64)
def _surfel_areas(spacing: tuple[float, ...]) -> np.ndarray:
    """Surface area (mm^2; contour length in mm in 2D) of every neighbourhood code at ``spacing``."""
    if len(spacing) == 3:
        areas = np.zeros(256)
        for code in range(1, 255):
            for x, y, z in _triangle_area_vectors(code):
                areas[code] += np.linalg.norm([x * spacing[1] * spacing[2], y * spacing[0] * spacing[2],
                                               z * spacing[0] * spacing[1]])
        return areas
    if len(spacing) == 2:
        return np.array([sum(np.sqrt((u * spacing[0]) ** 2 + (v * spacing[1]) ** 2)
                             for u, v in _square_segment_vectors(code)) if 0 < code < 15 else 0.0
                         for code in range(16)])
    raise ValueError(f"the brats2023 HD95 is defined in 2D and 3D, not in {len(spacing)}D")


def _neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """For every voxel corner around the mask, the code of its 2^d neighbouring voxels."""
    padded = np.pad(mask, 1).astype(np.int32)
    inner = tuple(slice(0, n - 1) for n in padded.shape)
    codes = np.zeros([n - 1 for n in padded.shape], dtype=np.int32)
    for offset in itertools.product((0, 1), repeat=mask.ndim):
        codes |= padded[tuple(slice(o, s.stop + o) for o, s in zip(offset, inner))] << _bit(offset)
    return codes


def _bit(offset: tuple[int, ...]) -> int:
    """The bit of corner ``offset`` in a neighbourhood code: (a, b, c) -> a*4 + b*2 + c."""
    return int(sum(o << (len(offset) - 1 - i) for i, o in enumerate(offset)))


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The distance at which the surfels, sorted by (distance, area), reach ``percent`` % of the area."""
    order = np.lexsort((areas, distances))
    distances, areas = distances[order], areas[order]
    reached = np.cumsum(areas) / np.sum(areas)
    return float(distances[min(int(np.searchsorted(reached, percent / 100.0)), len(distances) - 1)])


def _surfel_weighted_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], percent: float = 95.0):
    box = _union_box(pred, ref, margin=0)
    table = _surfel_areas(spacing)
    codes = {name: _neighbourhood_codes(mask[box]) for name, mask in (("pred", pred), ("ref", ref))}
    full = 2 ** (2 ** pred.ndim) - 1
    surfels = {name: (c != 0) & (c != full) for name, c in codes.items()}
    distance_to = {name: ndimage.distance_transform_edt(~s, sampling=spacing) for name, s in surfels.items()}
    ref_to_pred = _directed_percentile(distance_to["pred"][surfels["ref"]], table[codes["ref"][surfels["ref"]]],
                                       percent)
    pred_to_ref = _directed_percentile(distance_to["ref"][surfels["pred"]], table[codes["pred"][surfels["pred"]]],
                                       percent)
    return max(ref_to_pred, pred_to_ref)
