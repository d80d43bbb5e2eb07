"""Our lesion-wise scores against the organisers' package, in a test-only environment.

``brats-evaluation`` (BraTS/BraTS_evaluation, AGPL-3.0 in its metadata) is never a dependency: it
runs here only where it is installed, e.g.::

    python -m venv /tmp/crosscheck && /tmp/crosscheck/bin/pip install brats-evaluation scipy pytest
    PYTHONPATH=. /tmp/crosscheck/bin/python -m pytest -q tests/test_lesion_wise_crosscheck.py

Its ``gli`` configuration matches lesions one to one without dilation or volume threshold and
averages Dice and HD95 over matched lesions only (``sq_dsc``, ``sq_hd95``), counting misses and
false positives in ``fn`` and ``fp``. The 2023 definition we follow adds the dilation, the volume
threshold and the penalties. On cases where the two must agree (lesions far apart, above the
threshold, each found by at most one component) the counts agree, and our sum over matched
lesions equals its mean times its true positives, for Dice and for HD95 (the package's HD95 is
medpy-style, so ours is computed with ``hd95_convention="medpy"`` here, in mm on this 1 mm grid;
the 2023 script's own HD95 is checked against surface-distance in tests/test_hausdorff.py).
"""

import numpy as np
import pytest

from nnunet_missingmod.inference.lesion_wise import HD95_PENALTY, lesion_wise_scores

brats_evaluation = pytest.importorskip("brats_evaluation")
panoptica = pytest.importorskip("panoptica")

CELL, GRID = 24, 3  # lesions in the cells of a 3 x 3 x 3 grid: far apart beyond 3 dilations
REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}


def random_case(rng: np.random.Generator):
    """BraTS 2023 labels (1 NETC, 2 SNFH, 3 ET): per cell a lesion, a false positive, or nothing;
    each lesion found exactly, shifted by a voxel, shrunk or missed. Every found region overlaps its
    reference: a prediction only in the dilated margin is a match in the 2023 definition and a miss
    plus a false positive in panoptica's (``tests/test_lesion_wise.py`` tests that rule)."""
    shape = (CELL * GRID,) * 3
    reference, prediction = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for cell in np.ndindex(GRID, GRID, GRID):
        kind = rng.choice(["lesion", "false", "none"], p=[0.5, 0.2, 0.3])
        if kind == "none":
            continue
        size = int(rng.integers(6, 11))
        corner = [c * CELL + 6 for c in cell]
        box = tuple(slice(c, c + size) for c in corner)
        if kind == "false":
            prediction[box] = rng.choice([1, 2, 3])
            continue
        lesion = np.full((size,) * 3, 2, np.uint8)  # edema around a core of NETC and ET
        lesion[2:-2, 2:-2, 2:-2] = 1
        lesion[2:-2, 2:-2, 2:2 + max(2, (size - 4) // 2)] = 3  # at least 2 voxels thick: a 1-voxel shift overlaps
        reference[box] = lesion
        how = rng.choice(["exact", "shifted", "shrunk", "missed"])
        if how == "exact":
            prediction[box] = lesion
        elif how == "shifted":
            shifted = tuple(slice(b.start + 1, b.stop + 1) for b in box)
            prediction[shifted] = lesion
        elif how == "shrunk":
            inner = tuple(slice(b.start + 1, b.stop - 1) for b in box)
            prediction[inner] = lesion[1:-1, 1:-1, 1:-1]
    return prediction, reference


@pytest.mark.parametrize("seed", range(12))
def test_counts_and_matched_sums_agree_with_brats_evaluation(seed):
    evaluator = panoptica.Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("gli")))
    prediction, reference = random_case(np.random.default_rng(seed))
    theirs = {k: r.to_dict(True) for k, r in evaluator.evaluate(prediction, reference).items()}
    for region, labels in REGIONS.items():
        ours = lesion_wise_scores(np.isin(prediction, labels), np.isin(reference, labels), (1.0, 1.0, 1.0),
                                  min_volume=0, hd95_convention="medpy")
        result = theirs[region]
        tp = ours.lesions - ours.missed
        assert (tp, ours.missed, ours.false_positives) == (result["tp"], result["fn"], result["fp"]), region
        if tp == 0:
            continue
        count = ours.lesions + ours.false_positives
        assert ours.dice * count == pytest.approx(result["sq_dsc"] * tp, abs=1e-9), region
        matched_hd95 = ours.hd95 * count - HD95_PENALTY * (ours.missed + ours.false_positives)
        assert matched_hd95 == pytest.approx(result["sq_hd95"] * tp, abs=1e-6), region
