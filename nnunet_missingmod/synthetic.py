"""Built-in BraTS-like data: four co-registered MRI contrasts and three tumour compartments on real anatomy.

The anatomy is the ICBM 2009a MNI152 template that nilearn's wheel ships (T1 plus grey- and
white-matter probability maps), read straight from the installed files so that no download and no
``import nilearn`` is needed. Each contrast is synthesised from the tissue maps; tumours are planted
with modality-specific contrast so that every compartment is clear in some modalities and only
weakly visible in the others, which is what makes missing-modality training meaningful.
See docs/synthetic.md for the contrast table and measured contrast-to-noise ratios.

Arrays are in SimpleITK/nnU-Net array order (z, y, x); ``SyntheticCase.spacing`` is in that order
too, ``origin`` and ``direction`` are SimpleITK's (x, y, z) values.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

MODALITIES = ("T1", "T1ce", "T2", "FLAIR")
TISSUE_CLASSES = {0: "background", 1: "WM", 2: "GM", 3: "CSF"}
COMPARTMENTS = {1: "edema", 2: "necrosis", 3: "enhancing"}
BRATS2023_SUFFIX = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
OURS_TO_BRATS2023 = np.array([0, 2, 1, 3], dtype=np.uint8)  # our 1 edema -> 2 ED, 2 necrosis -> 1 NCR, 3 ET -> 3
DEFAULT_SHAPE = (64, 72, 64)
# The BraTS grid: 240 x 240 x 155 voxels of 1 mm (x, y, z), here in array order. With a fixed
# spacing the brain keeps its real size, centred in the grid, instead of being scaled to fill it.
GEOMETRIES = {"brats": {"shape": (155, 240, 240), "spacing": (1.0, 1.0, 1.0)}}
MIN_SHAPE = 16
DATASET_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
CHANNEL_NAMES = {str(i): m for i, m in enumerate(MODALITIES)}
TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
ANATOMY_NOTE = ("Anatomy: ICBM 2009a nonlinear MNI152 template (T1, GM, WM; nilearn's "
                "mni_icbm152_*_tal_nlin_sym_09a files). Copyright (C) 1993-2004 Louis Collins, McConnell Brain "
                "Imaging Centre, Montreal Neurological Institute, McGill University (see docs/synthetic.md).")

# Relative intensities, normal white matter in T1 = 1. Columns: T1, T1ce, T2, FLAIR.
# Tissues follow the usual ordering (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM, CSF dark).
TISSUE_CONTRAST = {
    "WM": (1.00, 1.00, 0.40, 0.50),
    "GM": (0.74, 0.76, 0.58, 0.74),
    "CSF": (0.34, 0.36, 1.00, 0.12),
}
# Tumour compartments. Strong cue: edema in FLAIR/T2, enhancing rim in T1ce, necrosis dark in T1ce/T1
# and bright in T2. Weak cues elsewhere let a model find each compartment without any one modality.
COMPARTMENT_CONTRAST = {
    "edema": (0.84, 0.86, 0.78, 1.00),
    "enhancing": (0.90, 1.80, 0.50, 0.62),
    "necrosis": (0.46, 0.42, 0.92, 0.58),
    "non_enhancing": (0.62, 0.64, 0.84, 0.84),  # label-2 core of cases without enhancement (LGG-like)
}
# How much of the anatomy stays visible through each compartment (edema is tissue plus water).
COMPARTMENT_TISSUE_WEIGHT = {"edema": 0.35, "enhancing": 0.1, "necrosis": 0.0, "non_enhancing": 0.15}
# Sign with which the template's real T1 texture (deep nuclei, gyri) enters each contrast.
TEXTURE_SIGN = (1.0, 1.0, -0.6, -0.5)


class SyntheticDataError(ValueError):
    """A bad argument or a destination that would be overwritten."""


@dataclass
class SyntheticCase:
    images: dict = field(repr=False)  # modality name -> float32 (z, y, x), exactly 0 outside the brain
    label: np.ndarray = field(repr=False)  # uint8 (z, y, x): 0, 1 edema, 2 necrosis/non-enhancing core, 3 enhancing
    spacing: tuple  # mm, (z, y, x) like the arrays
    origin: tuple  # SimpleITK (x, y, z) physical position of voxel 0
    direction: tuple  # SimpleITK 3x3 direction, row-major
    brain_mask: np.ndarray = field(repr=False, default=None)  # bool (z, y, x)
    tissue: np.ndarray = field(repr=False, default=None)  # uint8 (z, y, x) normal tissue class: TISSUE_CLASSES
    info: dict = field(default_factory=dict)

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def write(self, array: np.ndarray, path: str) -> None:
        sitk.WriteImage(self.to_sitk(array), path, True)


# ----------------------------------------------------------------------------------------------- anatomy

def template_folder() -> str:
    """nilearn's bundled data folder, found without importing nilearn (its import takes seconds)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; the synthetic generator reads the MNI152 template from its "
                           "package data (pip install nilearn)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    missing = [f for f in TEMPLATE_FILES.values() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise RuntimeError(f"nilearn's MNI152 template files are missing from {folder}: {', '.join(missing)}")
    return folder


@dataclass(frozen=True)
class Anatomy:
    maps: np.ndarray  # float32 (5, z, y, x): GM, WM, CSF, T1 texture residual, brain mask (partial volume)
    spacing: tuple  # (z, y, x) mm
    origin: tuple
    direction: tuple
    tumour_sites: np.ndarray  # (n, 3) white-matter voxel indices where a tumour may be centred
    site_depth_mm: np.ndarray  # (n,) their distance to the brain's surface, mm


@lru_cache(maxsize=8)
def anatomy(shape: tuple, spacing: Optional[tuple] = None) -> Anatomy:
    """The template resampled onto a grid of `shape`, centred; cached since every case reuses it.
    Without `spacing` (z, y, x mm) the brain fills the grid; with it the brain keeps its real size."""
    folder = template_folder()
    reference = sitk.ReadImage(os.path.join(folder, TEMPLATE_FILES["t1"]), sitk.sitkFloat32)
    t1 = sitk.GetArrayFromImage(reference)
    support = t1 > 0  # the template is skull-stripped: its support is the brain
    bounds = np.array([np.flatnonzero(support.any(axis=tuple(j for j in range(3) if j != i)))[[0, -1]]
                       for i in range(3)])  # (z, y, x) x (first, last)
    crop_lo = np.maximum(bounds[:, 0] - 6, 0)
    crop = tuple(slice(lo, hi + 7) for lo, hi in zip(crop_lo, bounds[:, 1]))
    mask = support[crop].astype(np.float32)
    gm, wm = (sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, TEMPLATE_FILES[k]), sitk.sitkFloat32))[crop]
              / 255.0 for k in ("gm", "wm"))
    t1 = t1[crop]
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    model_t1 = wm * TISSUE_CONTRAST["WM"][0] + gm * TISSUE_CONTRAST["GM"][0] + csf * TISSUE_CONTRAST["CSF"][0]
    texture = (t1 / float(np.median(t1[wm > 0.9])) - model_t1) * mask

    template_spacing = np.array(reference.GetSpacing()[::-1])
    extent = (bounds[:, 1] - bounds[:, 0] + 1.0) * template_spacing
    if spacing is None:
        spacing = tuple(float(round(e * 1.08 / s, 4)) for e, s in zip(extent, shape))
    else:
        spacing = tuple(float(s) for s in spacing)
        if np.any(extent > np.array(shape) * np.array(spacing) + 1e-6):  # (a case's random scale may clip a mm or two)
            raise SyntheticDataError(f"a grid of {list(shape)} voxels of {list(spacing)} mm (z, y, x) is smaller than "
                                     f"the brain ({[round(float(e)) for e in extent]} mm)")
    centre_index = bounds.mean(axis=1)
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in centre_index[::-1])))
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    half = (np.array(shape[::-1]) - 1) / 2.0 * np.array(spacing[::-1])
    origin = tuple(float(round(v, 4)) for v in centre - direction @ half)
    # Same direction as the template, so each output axis maps onto one template axis.
    axes = [centre_index[i] - crop_lo[i] + (np.arange(shape[i]) - (shape[i] - 1) / 2.0) * spacing[i]
            / template_spacing[i] for i in range(3)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)
    sigma = 0.4 * np.array(spacing) / template_spacing  # anti-aliasing before downsampling
    maps = np.stack([ndi.map_coordinates(ndi.gaussian_filter(a.astype(np.float32), sigma, truncate=3.0), coords,
                                         order=1, mode="constant", cval=0.0, output=np.float32)
                     for a in (gm, wm, csf, texture, mask)])

    maps.setflags(write=False)  # shared by every case of this shape
    brain = maps[4] > 0.5
    depth_mm = ndi.distance_transform_edt(brain, sampling=spacing)
    sites = np.argwhere((maps[1] > 0.5) & brain)
    return Anatomy(maps, spacing, origin, tuple(reference.GetDirection()), sites, depth_mm[tuple(sites.T)])


# --------------------------------------------------------------------------------------- random fields

def _rotation(rng: np.random.Generator, max_degrees: float = 180.0) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        matrix = matrix @ r
    return matrix


def _waves(rng: np.random.Generator, points: np.ndarray, n: int = 6, frequency: float = 2.5) -> np.ndarray:
    """A smooth random field of unit-ish amplitude at `points` (3, ...) in radius units; grid-free, so a
    tumour looks the same at any resolution."""
    k = rng.normal(size=(n, 3))
    k *= (frequency * rng.uniform(0.6, 1.4, n) / np.linalg.norm(k, axis=1))[:, None]
    phase = rng.uniform(0, 2 * np.pi, n)
    amplitude = rng.normal(size=n) / np.sqrt(n / 2)
    out = np.zeros(points.shape[1:], dtype=np.float32)
    for kk, p, a in zip(k, phase, amplitude):
        out += a * np.cos(np.tensordot(kk, points, axes=1) + p)
    return out


def _coarse_field(rng: np.random.Generator, shape: tuple, cells: int = 4) -> np.ndarray:
    coarse = rng.normal(size=tuple(max(2, round(s / max(shape) * cells)) + 1 for s in shape)).astype(np.float32)
    return ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1, mode="nearest", grid_mode=True)


def _bias_field(rng: np.random.Generator, shape: tuple, strength: float) -> np.ndarray:
    """exp of a random quadratic polynomial: the slow multiplicative inhomogeneity of a receive coil."""
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = (z, y, x, z * z - 1 / 3, y * y - 1 / 3, x * x - 1 / 3, z * y, z * x, y * x)
    coefficients = rng.normal(0, strength, len(terms))
    return np.exp(sum(c * t for c, t in zip(coefficients, terms))).astype(np.float32)


# ----------------------------------------------------------------------------------------------- cases

def _warp(rng: np.random.Generator, maps: np.ndarray) -> np.ndarray:
    """Small random affine (rotation, per-axis scale, shift) plus a smooth elastic displacement."""
    shape = maps.shape[1:]
    centre = (np.array(shape) - 1) / 2.0
    scale = rng.uniform(0.93, 1.04, 3)  # brain size factor; > 1 would push the brain out of the grid
    matrix = _rotation(rng, 6.0) @ np.diag(1.0 / scale)
    shift = rng.uniform(-0.015, 0.015, 3) * np.array(shape)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None].astype(np.float32)
    coords = (matrix.astype(np.float32) @ grid).reshape(3, *shape) + (centre + shift)[:, None, None, None]
    for axis in range(3):
        coords[axis] += _coarse_field(rng, shape) * 0.8
    return np.stack([ndi.map_coordinates(m, coords, order=1, mode="constant", cval=0.0, output=np.float32)
                     for m in maps])


def _tumour(rng: np.random.Generator, brain: np.ndarray, site: np.ndarray, spacing: np.ndarray,
            radius_mm: float, has_necrosis: bool, has_enhancing: bool) -> tuple:
    """(label, box) for one tumour: an irregular core (enhancing rim around necrosis) inside an edema halo."""
    core_ratio = rng.uniform(0.5, 0.8)
    core_mm = radius_mm * core_ratio
    offset = rng.normal(size=3)
    offset *= rng.uniform(0, 0.3) * (radius_mm - core_mm) / np.linalg.norm(offset)

    reach = np.ceil(radius_mm * 1.5 / spacing).astype(int) + 2
    lo = np.maximum(site - reach, 0)
    hi = np.minimum(site + reach + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    points = (np.indices(tuple(hi - lo), dtype=np.float32) + (lo - site)[:, None, None, None]) \
        * spacing[:, None, None, None].astype(np.float32)  # mm from the site

    def distorted_distance(centre_mm, radius, roughness, stretch=0.25):
        axes = np.exp(rng.normal(0, stretch, 3))
        axes /= np.cbrt(axes.prod())
        local = np.tensordot(_rotation(rng).T.astype(np.float32), points - centre_mm[:, None, None, None], axes=1)
        local /= (radius * axes)[:, None, None, None].astype(np.float32)
        # Clipped so that the surface stays within 1.5 radii (the box) and the distance positive.
        return np.sqrt((local ** 2).sum(0)) * (1 + roughness * np.clip(_waves(rng, local), -1.5, 1.5))

    inside = brain[box]
    core_allowed = ndi.binary_erosion(inside, iterations=2)
    whole = (distorted_distance(np.zeros(3), radius_mm, 0.22) < 1) & inside
    core_distance = distorted_distance(offset, core_mm, 0.18)
    core = (core_distance < 1) & core_allowed
    if core.sum() < 4:  # too small to see at this resolution: keep at least the few voxels around the site
        core = (np.sqrt(((points - offset[:, None, None, None]) ** 2).sum(0)) <= max(core_mm, 1.01 * spacing.max())) \
            & core_allowed
    whole |= ndi.binary_dilation(core) & inside

    label = np.where(whole, 1, 0).astype(np.uint8)
    if not has_enhancing:
        label[core] = 2
        return label, box
    label[core] = 3
    if has_necrosis:
        necrosis_ratio = float(np.clip(1 - rng.uniform(3.0, 6.0) / core_mm, 0.0, 0.8))  # rim of 3-6 mm
        necrosis = (core_distance * (1 + 0.1 * _waves(rng, points / core_mm)) < necrosis_ratio)
        necrosis &= ndi.binary_erosion(core)  # at least one voxel of rim all round
        label[necrosis] = 2
    return label, box


def _check_shape(shape) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise SyntheticDataError(f"shape must be three integers (z, y, x), got {shape!r}") from None
    if len(shape) != 3 or min(shape) < MIN_SHAPE:
        raise SyntheticDataError(f"shape must be three integers >= {MIN_SHAPE} (z, y, x), got {shape}")
    return shape


def _check_spacing(spacing) -> tuple:
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise SyntheticDataError(f"spacing must be three numbers (z, y, x mm), got {spacing!r}") from None
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise SyntheticDataError(f"spacing must be three positive numbers (z, y, x mm), got {spacing}")
    return spacing


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise SyntheticDataError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def generate_case(seed: int, shape=DEFAULT_SHAPE, p_no_enhancing: float = 0.15, p_no_necrosis: float = 0.15,
                  radius_mm: Sequence[float] = (14.0, 32.0), noise: Sequence[float] = (0.02, 0.05),
                  bias: float = 0.08, spacing: Optional[Sequence[float]] = None) -> SyntheticCase:
    """One case, fully determined by `seed`, `shape` and `spacing`.

    spacing: voxel size in mm (z, y, x); None scales the brain to fill `shape` (GEOMETRIES["brats"]
    gives BraTS's grid).

    p_no_enhancing / p_no_necrosis: probabilities of a case without label 3 (its core is then all label 2,
    LGG-like) and of a solid enhancing core without label 2; empty regions matter for metric conventions.
    radius_mm: range of the whole tumour's equivalent radius. noise: range of the noise standard deviation
    relative to white matter. bias: standard deviation of the bias field's polynomial coefficients.
    """
    shape = _check_shape(shape)
    p_no_enhancing = _check_probability("p_no_enhancing", p_no_enhancing)
    p_no_necrosis = _check_probability("p_no_necrosis", p_no_necrosis)
    if int(seed) < 0:
        raise SyntheticDataError(f"seed must be >= 0, got {seed}")
    # Separate streams, and the tumour's design drawn first, so that a seed gives the same tumour (kind, size,
    # shape in mm, rough place) at any image shape: only the draws of whole-image fields depend on the shape.
    design, warp, form, contrast, noise_rng = (np.random.default_rng(s)
                                               for s in np.random.SeedSequence(int(seed)).spawn(5))
    has_enhancing = design.random() >= p_no_enhancing
    has_necrosis = (design.random() >= p_no_necrosis) or not has_enhancing
    radius = float(design.uniform(*radius_mm))
    place = design.random()
    atlas = anatomy(shape, None if spacing is None else _check_spacing(spacing))
    spacing = np.array(atlas.spacing)

    gm, wm, csf, texture, mask = _warp(warp, atlas.maps)
    brain = ndi.binary_fill_holes(mask > 0.5)
    tissue = np.stack([wm, gm, csf])
    tissue /= np.maximum(tissue.sum(0), 1e-3)
    tissue[2][brain & (tissue.sum(0) < 0.5)] = 1.0

    deep = atlas.site_depth_mm >= max(0.5 * radius, 2.5 * spacing.max())
    candidates = atlas.tumour_sites[deep] if deep.any() else atlas.tumour_sites[atlas.site_depth_mm.argmax()][None]
    site = candidates[int(place * len(candidates))]
    label = np.zeros(shape, dtype=np.uint8)
    tumour, box = _tumour(form, brain, site, spacing, radius, has_necrosis, has_enhancing)
    label[box] = tumour

    # Soft compartment weights (partial volume at the boundaries) and a little heterogeneity inside.
    local = label[box]
    core_name = "necrosis" if has_enhancing else "non_enhancing"
    weights = {name: ndi.gaussian_filter((local == value).astype(np.float32), 0.5)
               for name, value in (("edema", 1), (core_name, 2), ("enhancing", 3))}
    points = np.indices(local.shape, dtype=np.float32) * spacing[:, None, None, None].astype(np.float32) / radius
    heterogeneity = 1 + 0.07 * _waves(form, points, frequency=4.0)

    jitter = lambda: 1 + contrast.normal(0, 0.04)  # noqa: E731  (per case and modality, so contrasts vary)
    images = {}
    for m, modality in enumerate(MODALITIES):
        image = sum(tissue[t] * TISSUE_CONTRAST[name][m] * jitter() for t, name in enumerate(("WM", "GM", "CSF")))
        image += TEXTURE_SIGN[m] * texture
        image = np.clip(image, 0.02, None)
        patch = image[box]
        total = sum(weights.values())
        mixed = patch * (1 - total)
        for name, w in weights.items():
            keep = COMPARTMENT_TISSUE_WEIGHT[name]
            mixed += w * (keep * patch + (1 - keep) * COMPARTMENT_CONTRAST[name][m] * jitter() * heterogeneity)
        image[box] = mixed
        scale = contrast.uniform(400.0, 1200.0)
        image *= _bias_field(contrast, shape, bias) * scale
        sigma = contrast.uniform(*noise) * scale * TISSUE_CONTRAST["WM"][m]
        noisy = np.hypot(image + noise_rng.normal(0, sigma, shape).astype(np.float32),
                         noise_rng.normal(0, sigma, shape).astype(np.float32))  # Rician magnitude
        images[modality] = np.where(brain, noisy, 0).astype(np.float32)
    label[~brain] = 0
    classes = (np.argmax(tissue, axis=0).astype(np.uint8) + 1) * brain  # 1 WM, 2 GM, 3 CSF (before the tumour)
    info = {"has_enhancing": bool((label == 3).any()), "has_necrosis": bool((label == 2).any()),
            "radius_mm": radius, "site": tuple(int(v) for v in site)}
    return SyntheticCase(images, label, atlas.spacing, atlas.origin, atlas.direction, brain,
                         classes.astype(np.uint8), info)


def contrast_table(num_cases: int = 10, shape=DEFAULT_SHAPE, seed: int = 0) -> dict:
    """Measured contrast of each compartment against normal white matter, per modality, over dataset cases
    0..num_cases-1: {compartment: {modality: (ratio, cnr, cases)}}. ratio = mean(compartment) / mean(WM);
    cnr = (mean(compartment) - mean(WM)) / std(WM), std including noise, bias field and anatomy; both are
    averaged over the cases that have the compartment. WM is the white-matter class eroded by a voxel (no
    partial volume) and at least 2 voxels away from the tumour."""
    sums = {c: {m: [] for m in MODALITIES} for c in ("edema", "necrosis", "enhancing", "non_enhancing")}
    for i in range(num_cases):
        case = generate_case(case_seed(seed, i), shape)
        far = ~ndi.binary_dilation(case.label > 0, iterations=2)
        white = ndi.binary_erosion(case.tissue == 1) & far
        for value, compartment in COMPARTMENTS.items():
            if value == 2 and not case.info["has_enhancing"]:
                compartment = "non_enhancing"  # label 2 of a case without enhancement (LGG-like core)
            voxels = case.label == value
            if not voxels.any():
                continue
            for m in MODALITIES:
                image = case.images[m]
                reference, spread = float(image[white].mean()), float(image[white].std())
                mean = float(image[voxels].mean())
                sums[compartment][m].append((mean / reference, (mean - reference) / spread))
    return {c: {m: (float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values])), len(values))
                    if values else (float("nan"), float("nan"), 0) for m, values in per.items()}
            for c, per in sums.items()}


def format_contrast_table(table: dict) -> str:
    """contrast_table() as a Markdown table: CNR (ratio to WM) per compartment and modality."""
    lines = ["| compartment (cases) | " + " | ".join(MODALITIES) + " |", "|---" * (len(MODALITIES) + 1) + "|"]
    for compartment, per in table.items():
        count = max(v[2] for v in per.values())
        lines.append(f"| {compartment} ({count}) | "
                     + " | ".join(f"{per[m][1]:+.1f} ({per[m][0]:.2f})" for m in MODALITIES) + " |")
    return "\n".join(lines)


def case_seed(seed: int, index: int) -> int:
    """Seed of case `index` of a dataset with `seed`: independent of the number of cases or processes."""
    return int(np.random.SeedSequence((int(seed), int(index))).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------- writing

def _write_nnunet_case(job: tuple) -> None:
    seed, index, shape, case_id, images_folder, labels_folder, kwargs = job
    case = generate_case(case_seed(seed, index), shape, **kwargs)
    for channel, modality in enumerate(MODALITIES):
        case.write(case.images[modality], os.path.join(images_folder, f"{case_id}_{channel:04d}.nii.gz"))
    case.write(case.label, os.path.join(labels_folder, f"{case_id}.nii.gz"))


def _write_brats_case(job: tuple) -> None:
    seed, index, shape, folder, with_labels, kwargs = job
    case = generate_case(case_seed(seed, index), shape, **kwargs)
    case_id = f"BraTS-GLI-{index:05d}-000"
    os.makedirs(os.path.join(folder, case_id))
    for modality, suffix in BRATS2023_SUFFIX.items():
        data = np.clip(np.rint(case.images[modality]), 0, np.iinfo(np.int16).max).astype(np.int16)
        case.write(data, os.path.join(folder, case_id, f"{case_id}-{suffix}.nii.gz"))
    if with_labels:
        case.write(OURS_TO_BRATS2023[case.label], os.path.join(folder, case_id, f"{case_id}-seg.nii.gz"))


def _run_jobs(func, jobs: list, num_processes: int, desc: str) -> None:
    """Each job seeds its own generator, so results do not depend on the number of processes."""
    from tqdm import tqdm
    bar = dict(total=len(jobs), desc=desc, disable=len(jobs) <= 4, file=sys.stderr)
    if num_processes <= 1 or len(jobs) <= 1:
        for job in tqdm(jobs, **bar):
            func(job)
        return
    # spawn: callers may have torch (and its thread pools) loaded, which fork does not survive reliably.
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        for _ in tqdm(pool.imap(func, jobs), **bar):
            pass


def _check_count(name: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise SyntheticDataError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _folder_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _move_into_place(tmp: str, destination: str, replace: Sequence[str]) -> None:
    for old in replace:
        shutil.rmtree(old)
    os.rename(tmp, destination)


def write_nnunet_dataset(dataset_id: int, num_train: int, num_test: int = 0, name: str = "SyntheticBraTS",
                         shape=DEFAULT_SHAPE, seed: int = 0, raw_folder: Optional[str] = None,
                         overwrite: bool = False, num_processes: int = 1, **case_kwargs) -> str:
    """Write ``Dataset{id:03d}_{name}`` in nnU-Net raw format (training cases case_0000.., then the held-out
    ones in imagesTs/labelsTs, numbered on) and return its folder. Written beside the destination and
    renamed at the end, so that nnU-Net never sees a half-written dataset."""
    dataset_id = _check_count("dataset_id", dataset_id, 1)
    if dataset_id > 999:
        raise SyntheticDataError(f"dataset_id must be in 1..999, got {dataset_id}")
    num_train = _check_count("num_train", num_train, 1)
    num_test = _check_count("num_test", num_test, 0)
    seed = _check_count("seed", seed, 0)
    shape = _check_shape(shape)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or ""):
        raise SyntheticDataError(f"name must be letters, digits, '_' or '-', got {name!r}")
    raw_folder = raw_folder or os.environ.get("nnUNet_raw")
    if not raw_folder:
        raise SyntheticDataError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass raw_folder")
    os.makedirs(raw_folder, exist_ok=True)
    prefix = f"Dataset{dataset_id:03d}_"
    existing = sorted(os.path.join(raw_folder, d) for d in os.listdir(raw_folder)
                      if d.startswith(prefix) and os.path.isdir(os.path.join(raw_folder, d)))
    if existing and not overwrite:
        raise SyntheticDataError(f"dataset id {dataset_id} is taken in {raw_folder} "
                                 f"({', '.join(map(os.path.basename, existing))}); pass overwrite=True "
                                 f"(--overwrite) to replace it")
    destination = os.path.join(raw_folder, prefix + name)
    tmp = tempfile.mkdtemp(prefix=f".tmp_{prefix}{name}_", dir=raw_folder)
    try:
        folders = {k: os.path.join(tmp, k) for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
        for k, folder in folders.items():
            if k.endswith("Tr") or num_test:
                os.makedirs(folder)
        jobs = [(seed, i, shape, f"case_{i:04d}", folders["imagesTr"], folders["labelsTr"], case_kwargs)
                for i in range(num_train)]
        jobs += [(seed, i, shape, f"case_{i:04d}", folders["imagesTs"], folders["labelsTs"], case_kwargs)
                 for i in range(num_train, num_train + num_test)]
        _run_jobs(_write_nnunet_case, jobs, num_processes, f"{prefix}{name}")
        dataset_json = {
            "channel_names": dict(CHANNEL_NAMES),
            "labels": dict(DATASET_LABELS),
            "regions_class_order": [1, 2, 3],
            "numTraining": num_train,
            "file_ending": ".nii.gz",
            "name": prefix + name,
            "description": f"Synthetic BraTS-like cases from nnunet_missingmod.synthetic (seed {seed}, "
                           f"shape {list(shape)} z,y,x"
                           + (f", spacing {list(case_kwargs['spacing'])} mm" if case_kwargs.get("spacing") else "")
                           + f"; {num_test} held-out cases in imagesTs/labelsTs). " + ANATOMY_NOTE,
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(dataset_json, f, sort_keys=False, indent=4)
        os.chmod(tmp, _folder_mode())  # mkdtemp makes it private
        _move_into_place(tmp, destination, existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return destination


def write_brats2023_layout(out_folder: str, num_cases: int, shape=DEFAULT_SHAPE, seed: int = 0,
                           with_labels: bool = True, overwrite: bool = False, num_processes: int = 1,
                           **case_kwargs) -> str:
    """Write ``BraTS-GLI-{i:05d}-000/BraTS-GLI-{i:05d}-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (int16 images, BraTS
    2023 labels 1 NCR, 2 ED, 3 ET) for the converters to read. Case i is case_{i:04d} of
    write_nnunet_dataset with the same seed and shape, up to rounding to int16."""
    num_cases = _check_count("num_cases", num_cases, 1)
    seed = _check_count("seed", seed, 0)
    shape = _check_shape(shape)
    out_folder = os.path.abspath(out_folder)
    replace = []
    if os.path.exists(out_folder):
        if not os.path.isdir(out_folder):
            raise SyntheticDataError(f"{out_folder} exists and is not a folder")
        entries = os.listdir(out_folder)
        if entries and not overwrite:
            raise SyntheticDataError(f"{out_folder} exists and is not empty; pass overwrite=True (--overwrite) "
                                     f"to replace it")
        foreign = [e for e in entries if not e.startswith("BraTS-GLI-")]
        if foreign:  # never delete what we did not write
            raise SyntheticDataError(f"{out_folder} holds more than BraTS-GLI-* case folders "
                                     f"({', '.join(sorted(foreign)[:3])}...); refusing to replace it")
        replace = [out_folder]
    parent = os.path.dirname(out_folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp_{os.path.basename(out_folder)}_", dir=parent)
    try:
        jobs = [(seed, i, shape, tmp, with_labels, case_kwargs) for i in range(num_cases)]
        _run_jobs(_write_brats_case, jobs, num_processes, os.path.basename(out_folder))
        os.chmod(tmp, _folder_mode())
        _move_into_place(tmp, out_folder, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_folder


# --------------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_synthetic_brats",
        description="Write synthetic BraTS-like cases (T1, T1ce, T2, FLAIR on MNI152 anatomy; labels 1 edema, "
                    "2 necrosis/non-enhancing core, 3 enhancing) as an nnU-Net raw dataset or in the BraTS 2023 "
                    "GLI file layout.")
    parser.add_argument("-d", "--dataset-id", type=int, help="nnU-Net dataset id (required for --layout nnunet)")
    parser.add_argument("-n", "--num-cases", type=int, required=True,
                        help="training cases (nnunet) or cases (brats2023)")
    parser.add_argument("--num-test", type=int, default=0, help="held-out cases in imagesTs/labelsTs (nnunet only)")
    parser.add_argument("--name", default="SyntheticBraTS", help="dataset name (nnunet only)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help=f"image shape in voxels, default {' '.join(map(str, DEFAULT_SHAPE))}; the brain is "
                             f"scaled to fill it")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES),
                        help="a real acquisition grid instead of --shape: brats is 240 x 240 x 155 voxels of 1 mm, "
                             "the brain at its real size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset / output folder")
    parser.add_argument("-np", "--num-processes", type=int, default=1)
    parser.add_argument("--layout", choices=("nnunet", "brats2023"), default="nnunet")
    parser.add_argument("-o", "--output", help="brats2023: output folder (required); nnunet: raw folder "
                                                "(default $nnUNet_raw)")
    parser.add_argument("--no-labels", action="store_true", help="brats2023 only: write no -seg files")
    parser.add_argument("--p-no-enhancing", type=float, default=0.15, help="share of cases without label 3")
    parser.add_argument("--p-no-necrosis", type=float, default=0.15,
                        help="share of cases with a solid enhancing core (no label 2)")
    args = parser.parse_args(argv)

    if args.num_cases < 1:
        parser.error(f"argument -n/--num-cases: must be >= 1, got {args.num_cases}")
    if args.num_test < 0:
        parser.error(f"argument --num-test: must be >= 0, got {args.num_test}")
    if args.geometry and args.shape:
        parser.error("arguments --shape and --geometry exclude each other")
    if args.shape is None:
        args.shape = list(GEOMETRIES[args.geometry]["shape"] if args.geometry else DEFAULT_SHAPE)
    if min(args.shape) < MIN_SHAPE:
        parser.error(f"argument --shape: each of Z Y X must be >= {MIN_SHAPE}, got {' '.join(map(str, args.shape))}")
    if args.seed < 0:
        parser.error(f"argument --seed: must be >= 0, got {args.seed}")
    if args.num_processes < 1:
        parser.error(f"argument -np/--num-processes: must be >= 1, got {args.num_processes}")
    for flag, value in (("--p-no-enhancing", args.p_no_enhancing), ("--p-no-necrosis", args.p_no_necrosis)):
        if not 0 <= value <= 1:
            parser.error(f"argument {flag}: must be in [0, 1], got {value}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", args.name):
        parser.error(f"argument --name: letters, digits, '_' or '-' only, got {args.name!r}")
    kwargs = dict(p_no_enhancing=args.p_no_enhancing, p_no_necrosis=args.p_no_necrosis)
    if args.geometry:
        kwargs["spacing"] = GEOMETRIES[args.geometry]["spacing"]
    try:
        if args.layout == "nnunet":
            if args.dataset_id is None:
                parser.error("argument -d/--dataset-id is required with --layout nnunet")
            if not 1 <= args.dataset_id <= 999:
                parser.error(f"argument -d/--dataset-id: must be in 1..999, got {args.dataset_id}")
            if args.no_labels:
                parser.error("argument --no-labels: applies to --layout brats2023 only")
            if not (args.output or os.environ.get("nnUNet_raw")):
                parser.error("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass -o/--output")
            folder = write_nnunet_dataset(args.dataset_id, args.num_cases, args.num_test, args.name,
                                          tuple(args.shape), args.seed, args.output, args.overwrite,
                                          args.num_processes, **kwargs)
        else:
            if not args.output:
                parser.error("argument -o/--output is required with --layout brats2023")
            if args.dataset_id is not None or args.num_test:
                parser.error("arguments -d/--dataset-id and --num-test apply to --layout nnunet only")
            folder = write_brats2023_layout(args.output, args.num_cases, tuple(args.shape), args.seed,
                                            not args.no_labels, args.overwrite, args.num_processes, **kwargs)
    except SyntheticDataError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(folder)


if __name__ == "__main__":
    main()
