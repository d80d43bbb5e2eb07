"""Calibration per region: ECE and Brier score by hand, against scikit-learn's reliability curve,
pooled over cases, on the counted voxels only, and from nnU-Net's own probabilities."""

import numpy as np
import pytest
import torch

from nnunet_missingmod.inference.calibration import (calibration_scores, expected_calibration_error, pooled,
                                                     region_probabilities, reliability_bins,
                                                     write_reliability_diagram)

EVERYWHERE = np.ones(4, dtype=bool)


def test_ece_and_brier_by_hand():
    probability, truth = np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 1])
    scores = calibration_scores(probability, truth, EVERYWHERE)
    assert scores["ece"] == pytest.approx(0.05) and scores["brier"] == pytest.approx(0.0025)
    # 0.9 everywhere, 60 % inside: ECE 0.3; Brier (0.6 x 0.01 + 0.4 x 0.81)
    probability, truth = np.full(10, 0.9), np.array([1] * 6 + [0] * 4)
    scores = calibration_scores(probability, truth, np.ones(10, dtype=bool))
    assert scores["ece"] == pytest.approx(0.3) and scores["brier"] == pytest.approx(0.6 * 0.01 + 0.4 * 0.81)
    assert scores["bins"]["count"][9] == 10 and scores["bins"]["inside"][9] == 6
    assert reliability_bins(np.array([0.0, 1.0]), np.array([0, 1]), np.ones(2, dtype=bool))["count"] == \
        [1] + [0] * 8 + [1]  # 1.0 falls in the last bin


def test_bins_agree_with_scikit_learns_reliability_curve():
    from sklearn.calibration import calibration_curve
    rng = np.random.default_rng(0)
    probability = rng.random(200_000) ** 2  # a model that says "background" more often than not
    truth = rng.random(probability.size) < np.clip(probability * 1.3, 0, 1)  # and underestimates the region
    bins = reliability_bins(probability, truth, np.ones(probability.size, dtype=bool))
    observed, predicted = calibration_curve(truth, probability, n_bins=10, strategy="uniform")
    count = np.array(bins["count"])
    filled = count > 0
    assert np.allclose(np.array(bins["inside"])[filled] / count[filled], observed)
    assert np.allclose(np.array(bins["probability"])[filled] / count[filled], predicted)
    weights = count[filled] / count.sum()
    assert expected_calibration_error(bins) == pytest.approx(np.sum(weights * np.abs(observed - predicted)))
    calibrated = rng.random(probability.size) < probability
    assert calibration_scores(probability, calibrated, np.ones(probability.size, dtype=bool))["ece"] < 0.005


def test_only_the_counted_voxels_count_and_cases_pool_by_adding_bins():
    rng = np.random.default_rng(1)
    probability, truth = rng.random((2, 8, 8, 8)), rng.random((2, 8, 8, 8)) < 0.3
    brain = np.zeros((8, 8, 8), dtype=bool)
    brain[2:6, 2:6, 2:6] = True
    inside_brain = calibration_scores(probability[0], truth[0], brain)
    assert inside_brain == calibration_scores(probability[0][brain], truth[0][brain], np.ones(brain.sum(), bool))
    air = probability[0].copy()
    air[~brain] = 0.99  # whatever the model says outside the counted voxels
    assert calibration_scores(air, truth[0], brain) == inside_brain
    together = calibration_scores(probability[:, brain].ravel(), truth[:, brain].ravel(),
                                  np.ones(2 * brain.sum(), bool))
    added = pooled([calibration_scores(probability[i], truth[i], brain)["bins"] for i in (0, 1)])
    assert all(np.allclose(added[k], together["bins"][k]) for k in ("count", "probability", "inside"))
    assert calibration_scores(probability[0], truth[0], np.zeros_like(brain))["ece"] is None


def test_region_probabilities_are_nnunets_own():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    logits = torch.randn(3, 4, 5, 6)
    brats = LabelManager({"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3},
                         regions_class_order=[1, 2, 3])
    regions = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
    probabilities = brats.apply_inference_nonlin(logits).numpy()
    maps = region_probabilities(probabilities, regions, brats)
    assert np.allclose(maps["tumor_core"], torch.sigmoid(logits[1]).numpy())
    assert ((maps["enhancing_tumor"] > 0.5) == (brats.convert_probabilities_to_segmentation(probabilities) == 3)).all()

    labels = LabelManager({"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}, regions_class_order=None)
    logits = torch.randn(4, 4, 5, 6)
    probabilities = labels.apply_inference_nonlin(logits).numpy()
    maps = region_probabilities(probabilities, {"edema": (1,), "core": (2, 3)}, labels)
    softmax = torch.softmax(logits, 0).numpy()
    assert np.allclose(maps["edema"], softmax[1]) and np.allclose(maps["core"], softmax[2] + softmax[3])
    with pytest.raises(ValueError, match=r"region other \(1, 2\) is none of the network's output regions"):
        region_probabilities(probabilities, {"other": (1, 2)}, brats)


def test_reliability_diagram_is_drawn(tmp_path):
    rng = np.random.default_rng(2)
    records = []
    for subset in ("T1", "T1+T1ce"):
        for case in ("a", "b"):
            probability = rng.random(1000)
            records.append({"case": case, "subset": subset, "region": "whole_tumor",
                            "bins": reliability_bins(probability, rng.random(1000) < probability,
                                                     np.ones(1000, dtype=bool))})
    write_reliability_diagram(records, ["T1", "T1+T1ce"], ["whole_tumor"], str(tmp_path / "reliability.png"))
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
