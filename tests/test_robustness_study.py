"""The robustness study's paired comparison (benchmarks/robustness_study.py), on hand-made per-case
tables: the numbers docs/results.md reports against ModalityDropoutTrainer."""

from __future__ import annotations

import csv
import importlib.util
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSETS = ("T1", "T1ce", "T1+T1ce")


def load_study():
    spec = importlib.util.spec_from_file_location("robustness_study",
                                                  os.path.join(REPO, "benchmarks", "robustness_study.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["robustness_study"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


study = load_study()


def table(dice_of_case: dict, region: str = "whole_tumor") -> dict:
    """{(case, subset, region): dice} with ``dice_of_case[case]`` a value per subset."""
    return {(case, subset, region): value for case, values in dice_of_case.items()
            for subset, value in zip(SUBSETS, values, strict=True)}


def test_a_constant_improvement_is_reported_exactly_with_a_zero_width_interval():
    reference = table({"a": (0.2, 0.5, 0.6), "b": (0.1, 0.4, 0.7), "c": (0.0, 0.3, 0.9)})
    method = {key: value + 0.05 for key, value in reference.items()}
    result = study.paired_difference(method, reference, "whole_tumor")
    assert result["mean"] == pytest.approx(0.05)
    assert result["ci95"] == pytest.approx((0.05, 0.05))
    assert result["n_cases"] == 3


def test_cases_are_averaged_over_subsets_before_the_bootstrap():
    reference = table({"a": (0.3, 0.3, 0.3), "b": (0.3, 0.3, 0.3), "c": (0.3, 0.3, 0.3), "d": (0.3, 0.3, 0.3)})
    method = dict(reference)
    method[("a", "T1", "whole_tumor")] = 0.9  # case a gains 0.6 on one of its three subsets
    result = study.paired_difference(method, reference, "whole_tumor")
    per_case = np.array([0.2, 0.0, 0.0, 0.0])  # 0.6 / 3 subsets for case a
    assert result["mean"] == pytest.approx(per_case.mean())
    low, high = result["ci95"]
    assert low == pytest.approx(0.0)  # resamples without case a
    assert per_case.mean() < high <= 0.2
    assert result["n_cases"] == 4


def test_only_the_requested_region_counts():
    reference = {**table({"a": (0.5, 0.5, 0.5)}, "whole_tumor"), **table({"a": (0.5, 0.5, 0.5)}, "tumor_core")}
    method = {key: (0.9 if key[2] == "tumor_core" else value) for key, value in reference.items()}
    assert study.paired_difference(method, reference, "whole_tumor")["mean"] == pytest.approx(0.0)
    assert study.paired_difference(method, reference, "tumor_core")["mean"] == pytest.approx(0.4)


def test_per_case_csv_is_read_as_the_evaluation_writes_it(tmp_path):
    path = tmp_path / "per_case.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "subset", "region", "dice", "hd95"])
        writer.writerow(["case_0001", "T1+T1ce", "whole_tumor", "0.75", "3.5"])
        writer.writerow(["case_0001", "T1+T1ce", "enhancing_tumor", "1.0", "0.0"])
    assert study.read_per_case(str(path)) == {("case_0001", "T1+T1ce", "whole_tumor"): 0.75,
                                              ("case_0001", "T1+T1ce", "enhancing_tumor"): 1.0}


def test_the_bar_needs_gains_over_the_baseline_and_a_wide_margin_over_unmasked_nnunet():
    mean_dice = {
        "FullModalityTrainer": {"WT": 0.40, "TC": 0.30, "ET": 0.40},
        "ModalityDropoutTrainer": {"WT": 0.50, "TC": 0.40, "ET": 0.45},
        "MethodA": {"WT": 0.52, "TC": 0.41, "ET": 0.46},  # above the baseline, >= 5 points above Full
        "MethodB": {"WT": 0.60, "TC": 0.39, "ET": 0.50},  # TC below the baseline
        "MethodC": {"WT": 0.44, "TC": 0.41, "ET": 0.46},  # WT only 4 points above Full
    }
    rows = {row.split(" | ")[0].strip("| "): row for row in study.bar_rows(mean_dice)}
    assert set(rows) == {"MethodA", "MethodB", "MethodC"}
    assert rows["MethodA"].endswith("| yes |") and "+1.00 | +1.00 | +6.00" in rows["MethodA"]
    assert rows["MethodB"].endswith("| **no** |") and "-1.00" in rows["MethodB"]
    assert rows["MethodC"].endswith("| **no** |") and "+4.00" in rows["MethodC"]
