"""Lesion-wise Dice and HD95 (BraTS 2023+ GLI) and ETpp (RFNet), each rule on a case computed by hand."""

import numpy as np
import pytest

from nnunet_missingmod.inference.lesion_wise import HD95_PENALTY, lesion_wise_scores
from nnunet_missingmod.inference.scoring import Conventions, etpp_threshold_note, score_prediction, scored_regions

SHAPE = (40, 40, 40)
BRATS_REGIONS = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}


def cube(mask, corner, size):
    z, y, x = corner
    mask[z:z + size, y:y + size, x:x + size] = True
    return mask


def empty():
    return np.zeros(SHAPE, dtype=bool)


def test_nothing_to_find_and_nothing_found_scores_one_and_zero():
    nothing = lesion_wise_scores(empty(), empty(), (1, 1, 1))
    assert (nothing.dice, nothing.hd95) == (1.0, 0.0)
    ref = cube(empty(), (5, 5, 5), 5)
    scores = lesion_wise_scores(ref, ref, (1, 1, 1))
    assert (scores.dice, scores.hd95, scores.lesions, scores.missed, scores.false_positives) == (1.0, 0.0, 1, 0, 0)


def test_a_found_a_missed_and_a_false_lesion_are_averaged_with_the_penalties():
    ref = cube(cube(empty(), (2, 2, 2), 5), (25, 25, 25), 5)  # two lesions, far apart
    pred = cube(cube(empty(), (2, 2, 2), 5), (2, 30, 2), 4)  # the first found, a false one elsewhere
    scores = lesion_wise_scores(pred, ref, (1, 1, 1))
    assert (scores.lesions, scores.missed, scores.false_positives) == (2, 1, 1)
    assert scores.dice == pytest.approx((1 + 0 + 0) / 3)
    assert scores.hd95 == pytest.approx((0 + HD95_PENALTY + HD95_PENALTY) / 3)


def test_only_false_positives_score_zero_and_the_penalty():
    scores = lesion_wise_scores(cube(empty(), (5, 5, 5), 4), empty(), (1, 1, 1))
    assert (scores.dice, scores.hd95, scores.false_positives) == (0.0, HD95_PENALTY, 1)


def test_lesions_closer_than_the_dilation_are_one_lesion():
    ref = cube(cube(empty(), (5, 5, 5), 5), (5, 5, 14), 5)  # a gap of 4 voxels: merged by 3 dilations
    pred = cube(empty(), (5, 5, 5), 5)  # only the first part predicted
    merged = lesion_wise_scores(pred, ref, (1, 1, 1))
    assert (merged.lesions, merged.missed) == (1, 0)
    assert merged.dice == pytest.approx(2 * 125 / (125 + 250))
    apart = lesion_wise_scores(pred, ref, (1, 1, 1), dilation=1)  # 1 dilation leaves them apart
    assert (apart.lesions, apart.missed) == (2, 1) and apart.dice == pytest.approx(0.5)


def test_small_lesions_are_not_scored_and_their_matches_are_not_false_positives():
    ref = cube(cube(empty(), (5, 5, 5), 5), (25, 25, 25), 3)  # 125 and 27 voxels
    pred = cube(cube(empty(), (5, 5, 5), 5), (26, 26, 26), 1)
    at_1mm = lesion_wise_scores(pred, ref, (1, 1, 1))  # 27 mm^3 <= 50: not scored
    assert (at_1mm.lesions, at_1mm.false_positives, at_1mm.dice) == (1, 0, 1.0)
    at_2mm = lesion_wise_scores(pred, ref, (2, 2, 2))  # 216 mm^3: scored (volume in mm^3, not voxels)
    assert at_2mm.lesions == 2 and at_2mm.dice == pytest.approx((1 + 2 * 1 / 28) / 2)


def test_a_prediction_touching_only_the_dilated_margin_is_a_match_not_a_false_positive():
    ref = cube(empty(), (10, 10, 10), 5)
    pred = cube(empty(), (10, 10, 17), 3)  # 2 voxels beyond the lesion: inside its 3-voxel dilation
    scores = lesion_wise_scores(pred, ref, (1, 1, 1))
    assert (scores.false_positives, scores.missed, scores.dice) == (0, 0, 0.0)
    assert 0 < scores.hd95 < HD95_PENALTY


def test_a_prediction_reaching_two_lesions_counts_whole_for_each():
    ref = cube(cube(empty(), (5, 5, 2), 5), (5, 5, 20), 5)
    pred = empty()
    pred[5:10, 5:10, 2:25] = True  # one bar over both lesions and the gap between them
    scores = lesion_wise_scores(pred, ref, (1, 1, 1))
    assert (scores.lesions, scores.missed, scores.false_positives) == (2, 0, 0)
    assert scores.dice == pytest.approx(2 * 125 / (125 + 5 * 5 * 23))


def test_etpp_removes_a_predicted_et_under_the_threshold_and_leaves_the_other_regions():
    reference = np.zeros(SHAPE, dtype=np.uint8)
    prediction = np.zeros(SHAPE, dtype=np.uint8)
    prediction[10:20, 10:20, 10:20] = 2  # tumour core, 1000 voxels
    prediction[10:15, 10:20, 10:20] = 3  # ET, 500 voxels: kept (RFNet removes fewer than 500)
    kept = score_prediction(prediction, reference, BRATS_REGIONS, (1, 1, 1))
    assert kept["enhancing_tumor_postprocessed"]["dice"] == kept["enhancing_tumor"]["dice"] == 0.0
    prediction[14, 19, 19] = 2  # 499 ET voxels: no ET after post-processing
    removed = score_prediction(prediction, reference, BRATS_REGIONS, (1, 1, 1))
    assert removed["enhancing_tumor"]["dice"] == 0.0  # a false ET where there is none
    assert removed["enhancing_tumor_postprocessed"] == {"dice": 1.0, "hd95": 0.0, "lesion_dice": 1.0,
                                                        "lesion_hd95": 0.0}
    assert removed["tumor_core"] == score_prediction(prediction, reference, BRATS_REGIONS, (1, 1, 1),
                                                     Conventions(et_min_voxels=0))["tumor_core"]
    stricter = score_prediction(prediction, reference, BRATS_REGIONS, (1, 1, 1), Conventions(et_min_voxels=400))
    assert stricter["enhancing_tumor_postprocessed"]["dice"] == 0.0  # 499 >= 400: kept


def test_etpp_is_scored_only_where_the_dataset_has_an_enhancing_tumour_region():
    assert list(scored_regions(BRATS_REGIONS)) == ["whole_tumor", "tumor_core", "enhancing_tumor",
                                                   "enhancing_tumor_postprocessed"]
    assert list(scored_regions({"edema": (1,), "necrosis": (2,)})) == ["edema", "necrosis"]


def test_etpp_warns_where_its_voxel_threshold_is_another_volume_than_on_the_1mm_grid():
    assert etpp_threshold_note((1.0, 1.0, 1.0), 500) is None
    assert etpp_threshold_note((1.2, 1.0, 1.0), 500) is None  # BraTS-like grids: no note
    note = etpp_threshold_note((4.0, 4.0, 4.0), 500)  # the synthetic data: 64 mm^3 a voxel
    assert "32000 mm^3" in note and "--et_min_voxels 8" in note
    assert "--et_min_voxels 4000" in etpp_threshold_note((0.5, 0.5, 0.5), 500)
