"""The study's statistics and report lines (nnunet_missingmod.study), on hand-made per-case tables
and seed statistics: the numbers docs/results.md reports against ModalityDropoutTrainer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from nnunet_missingmod.study import report
from nnunet_missingmod.study import statistics as numbers
from nnunet_missingmod.study import study

SUBSETS = ("T1", "T1ce", "T1+T1ce")


def table(dice_of_case: dict, region: str = "whole_tumor") -> dict:
    """{(case, subset, region): dice} with ``dice_of_case[case]`` a value per subset."""
    return {(case, subset, region): value for case, values in dice_of_case.items()
            for subset, value in zip(SUBSETS, values, strict=True)}


def test_a_constant_improvement_is_reported_exactly_with_a_zero_width_interval():
    reference = table({"a": (0.2, 0.5, 0.6), "b": (0.1, 0.4, 0.7), "c": (0.0, 0.3, 0.9)})
    method = {key: value + 0.05 for key, value in reference.items()}
    result = numbers.paired_difference(method, reference, "whole_tumor")
    assert result["mean"] == pytest.approx(0.05)
    assert result["ci95"] == pytest.approx((0.05, 0.05))
    assert result["n_cases"] == 3


def test_cases_are_averaged_over_subsets_before_the_bootstrap():
    reference = table({"a": (0.3, 0.3, 0.3), "b": (0.3, 0.3, 0.3), "c": (0.3, 0.3, 0.3), "d": (0.3, 0.3, 0.3)})
    method = dict(reference)
    method[("a", "T1", "whole_tumor")] = 0.9  # case a gains 0.6 on one of its three subsets
    result = numbers.paired_difference(method, reference, "whole_tumor")
    per_case = np.array([0.2, 0.0, 0.0, 0.0])  # 0.6 / 3 subsets for case a
    assert result["mean"] == pytest.approx(per_case.mean())
    low, high = result["ci95"]
    assert low == pytest.approx(0.0)  # resamples without case a
    assert per_case.mean() < high <= 0.2
    assert result["n_cases"] == 4


def test_only_the_requested_region_counts():
    reference = {**table({"a": (0.5, 0.5, 0.5)}, "whole_tumor"), **table({"a": (0.5, 0.5, 0.5)}, "tumor_core")}
    method = {key: (0.9 if key[2] == "tumor_core" else value) for key, value in reference.items()}
    assert numbers.paired_difference(method, reference, "whole_tumor")["mean"] == pytest.approx(0.0)
    assert numbers.paired_difference(method, reference, "tumor_core")["mean"] == pytest.approx(0.4)


def test_per_case_csv_is_read_as_the_evaluation_writes_it(tmp_path):
    path = tmp_path / "per_case.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "subset", "region", "dice", "hd95"])
        writer.writerow(["case_0001", "T1+T1ce", "whole_tumor", "0.75", "3.5"])
        writer.writerow(["case_0001", "T1+T1ce", "enhancing_tumor", "1.0", "0.0"])
    assert numbers.read_per_case(str(path)) == {("case_0001", "T1+T1ce", "whole_tumor"): 0.75,
                                              ("case_0001", "T1+T1ce", "enhancing_tumor"): 1.0}


def statistics(**per_seed):
    return numbers.SeedStatistics({region: list(values) for region, values in per_seed.items()})


def test_a_difference_within_the_seed_spread_is_a_tie():
    reference = statistics(TC=(0.40, 0.42, 0.44), ET=(0.50, 0.50, 0.50))  # TC spread 0.02
    close = statistics(TC=(0.43, 0.43, 0.43), ET=(0.55, 0.56, 0.57))  # TC +0.01, ET +0.06 (spread 0.01)
    below = statistics(TC=(0.30, 0.31, 0.32), ET=(0.49, 0.50, 0.51))
    assert numbers.compare(close, reference, "TC") == (pytest.approx(0.01), "tie")
    assert numbers.compare(close, reference, "ET") == (pytest.approx(0.06), "above")
    assert numbers.compare(below, reference, "TC")[1] == "below"
    assert numbers.compare(below, reference, "ET")[1] == "tie"
    stats = {"ModalityDropoutTrainer": reference, "Close": close, "Below": below}
    rows = {row.split(" | ")[0].strip("| "): row for row in report.bar_rows(stats, ["Close", "Below"])}
    assert rows["Close"].endswith("| yes |") and "+1.00 (tie)" in rows["Close"] and "+6.00 (above)" in rows["Close"]
    assert rows["Below"].endswith("| **no** |") and "(below)" in rows["Below"]


def with_cases(per_case: np.ndarray) -> "numbers.SeedStatistics":
    """SeedStatistics of one region, TC, from a (seeds, cases) array."""
    return numbers.SeedStatistics({"TC": list(per_case.mean(axis=1))}, {"TC": per_case})


def test_a_lead_beyond_the_seed_spread_but_within_its_uncertainty_is_a_tie():
    """The same +3 points of seed means and the same seed spread: on every case alike it is a lead;
    from two cases of +15 and six of -1 the interval over cases reaches into the spread: a tie."""
    seeds = np.array([[0.0], [0.01], [0.02]])
    reference = with_cases(0.5 + seeds + np.zeros((3, 8)))
    steady = with_cases(0.53 + seeds + np.zeros((3, 8)))
    uneven = with_cases(0.5 + seeds + np.array([0.15, 0.15, -0.01, -0.01, -0.01, -0.01, -0.01, -0.01]))
    assert steady.mean["TC"] - reference.mean["TC"] == pytest.approx(uneven.mean["TC"] - reference.mean["TC"])
    assert numbers.compare(steady, reference, "TC") == (pytest.approx(0.03), "above")
    assert numbers.compare(uneven, reference, "TC") == (pytest.approx(0.03), "tie")
    low, high = numbers.uncertainty(uneven, reference, "TC")
    assert low <= reference.spread["TC"] < 0.03 < high


def test_the_interval_over_seeds_and_cases():
    """A constant difference has a zero-width interval; seeds that disagree widen it beyond what the
    cases alone give; one seed leaves the cases alone."""
    base = np.array([[0.2, 0.4, 0.6, 0.8]] * 3)
    assert numbers.seeds_and_cases_interval(base + 0.05, base) == (pytest.approx(0.05), pytest.approx(0.05))
    noisy_seeds = base + np.array([[0.0], [0.1], [0.2]])
    low, high = numbers.seeds_and_cases_interval(noisy_seeds, base)
    assert low < 0.1 < high and high - low > 0.1
    one = numbers.seeds_and_cases_interval(base[:1] + np.array([[0.0, 0.1, 0.0, 0.1]]), base[:1])
    assert one[0] >= 0 and one[1] <= 0.1


def test_three_seeds_cannot_reach_p_below_one_in_eight():
    assert numbers.sign_flip_p([0.01, 0.02, 0.03]) == 0.125  # every seed above: the least 3 seeds allow
    assert numbers.sign_flip_p([-0.01, -0.02, -0.03]) == 0.125
    assert numbers.sign_flip_p([0.01, -0.02, 0.03]) == 0.375
    assert numbers.sign_flip_p([0.01] * 5) == 1 / 32


def test_one_seed_has_no_spread():
    one = statistics(TC=(0.4,))
    assert one.spread["TC"] == 0 and one.mean["TC"] == pytest.approx(0.4)


def test_share_of_the_gap_to_the_ceiling():
    reference = {**table({"a": (0.2, 0.4, 0.6)}), **table({"b": (0.2, 0.4, 0.6)})}
    ceiling = {k: v + 0.2 for k, v in reference.items() if k[1] in ("T1", "T1ce")}  # two subsets dedicated
    half = {k: v + 0.1 for k, v in reference.items()}
    assert numbers.gap_closed(half, reference, ceiling, "whole_tumor") == pytest.approx(0.5)
    assert numbers.gap_closed(reference, reference, ceiling, "whole_tumor") == pytest.approx(0.0)
    worse = {k: v - 0.2 for k, v in reference.items()}
    assert numbers.gap_closed(worse, reference, ceiling, "whole_tumor") == pytest.approx(-1.0)


def test_seed_means_and_mean_dice():
    a = table({"a": (0.2, 0.4, 0.6), "b": (0.0, 0.0, 0.0)})
    b = {k: v + 0.2 for k, v in a.items()}
    mean = numbers.mean_over_seeds([a, b])
    assert mean[("a", "T1", "whole_tumor")] == pytest.approx(0.3)
    assert numbers.mean_dice(a, "whole_tumor") == pytest.approx(np.mean([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="different cases"):
        numbers.mean_over_seeds([a, {**b, ("c", "T1", "whole_tumor"): 0.5}])


def test_every_modality_present_compares_the_full_subset_alone_with_plain_nnunet():
    """Only T1+T1ce (the full subset of SUBSETS) counts; seeds give the spread; a trainer within the
    larger spread of FullModalityTrainer is a tie."""
    short = {"whole_tumor": "WT"}
    plain = [table({"a": (0.0, 0.0, 0.8), "b": (0.0, 0.0, 0.6)}), table({"a": (0.0, 0.0, 0.9), "b": (0.0, 0.0, 0.7)})]
    robust = [table({"a": (0.9, 0.9, 0.6), "b": (0.9, 0.9, 0.4)}), table({"a": (0.9, 0.9, 0.7), "b": (0.9, 0.9, 0.5)})]
    close = [table({"a": (0.5, 0.5, 0.75), "b": (0.5, 0.5, 0.7)}), table({"a": (0.5, 0.5, 0.8), "b": (0.5, 0.5, 0.7)})]
    full = {name: numbers.full_subset_statistics(tables, "T1+T1ce", ["whole_tumor"], short)
            for name, tables in (("FullModalityTrainer", plain), ("ModalityDropoutTrainer", robust), ("X", close))}
    assert full["FullModalityTrainer"].per_seed["WT"] == pytest.approx([0.7, 0.8])
    assert full["ModalityDropoutTrainer"].mean["WT"] == pytest.approx(0.55)
    rows = report.every_modality_rows(full, ["WT"])
    assert rows[0] == "| FullModalityTrainer | 75.00 ± 7.07 |  |"
    assert rows[1] == "| ModalityDropoutTrainer | 55.00 ± 7.07 | -20.00 (below) |"
    assert rows[2] == "| X | 73.75 ± 1.77 | -1.25 (tie) |"


def test_the_3d_preset_takes_the_2d_studys_best_method_on_tc_and_et_from_its_archive(tmp_path):
    """Mean of TC and ET over the seeds every method has; WT does not count; a seed only one method
    has is left out."""
    dice = {  # method: {seed: (WT, TC, ET)}
        "MAGMSTrainer": {1: (0.9, 0.5, 0.5), 2: (0.9, 0.5, 0.5)},
        "MSTKDTrainer": {1: (0.5, 0.8, 0.6), 2: (0.5, 0.6, 0.6), 3: (0.5, 0.1, 0.1)},
        "SMMLTrainer": {1: (0.5, 0.7, 0.7), 2: (0.5, 0.7, 0.7)},
    }
    for method, seeds in dice.items():
        for seed, values in seeds.items():
            folder = tmp_path / "evaluation" / f"seed_{seed}" / method
            folder.mkdir(parents=True)
            with open(folder / "per_case.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["case", "subset", "region", "dice", "hd95"])
                for region, value in zip(("whole_tumor", "tumor_core", "enhancing_tumor"), values):
                    writer.writerows([["c1", "T1", region, value, 1.0], ["c1", "T2", region, value, 1.0]])
    best, scores = report.best_method_in_archive(str(tmp_path))
    assert best == "SMMLTrainer"  # 0.7, against MST-KD's 0.65 on seeds 1-2 (its seed 3 has no partner)
    assert scores == pytest.approx({"MAGMSTrainer": 0.5, "MSTKDTrainer": 0.65, "SMMLTrainer": 0.7})
    (tmp_path / "evaluation" / "seed_1" / "SMMLTrainer" / "per_case.csv").unlink()
    (tmp_path / "evaluation" / "seed_2" / "SMMLTrainer" / "per_case.csv").unlink()
    with pytest.raises(FileNotFoundError, match="SMMLTrainer"):
        report.best_method_in_archive(str(tmp_path))


def test_the_3d_report_says_whether_the_best_method_and_the_reference_rank_as_in_2d():
    """The same sign of the seed-mean difference on TC and ET meets the bar, a tie included; the
    verdicts show whether each difference is beyond the spread."""
    two_d = {"ModalityDropoutTrainer": statistics(TC=(0.75, 0.77), ET=(0.71, 0.75)),
             "SMMLTrainer": statistics(TC=(0.79, 0.79), ET=(0.74, 0.76)),
             "FullModalityTrainer": statistics(TC=(0.40, 0.40), ET=(0.40, 0.40))}
    here = {"ModalityDropoutTrainer": statistics(TC=(0.60, 0.62), ET=(0.50, 0.56)),
            "SMMLTrainer": statistics(TC=(0.615, 0.615), ET=(0.54, 0.55)),  # TC +0.5, ET +1.5: ties
            "FullModalityTrainer": statistics(TC=(0.30, 0.30), ET=(0.20, 0.20))}
    lines = report.ranking_against(here, two_d, "SMMLTrainer")
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert rows["SMMLTrainer"] == "| SMMLTrainer | +3.00 (above) | +0.50 (tie) | +2.00 (tie) | +1.50 (tie) |"
    assert rows["FullModalityTrainer"].startswith("| FullModalityTrainer | -36.00 (below) | -31.00 (below) |")
    assert "ModalityDropoutTrainer" not in rows
    assert lines[-1].startswith("SMMLTrainer and ModalityDropoutTrainer are ranked as in the 2d study on TC and ET: "
                                "meets the bar")
    here["SMMLTrainer"] = statistics(TC=(0.615, 0.615), ET=(0.51, 0.52))  # ET -1.5: a tie, but the order flips
    last = report.ranking_against(here, two_d, "SMMLTrainer")[-1]
    assert last.startswith("SMMLTrainer and ModalityDropoutTrainer are ranked as in the 2d study on TC, "
                           "otherwise on ET: misses the bar")


def test_archive_statistics_take_the_seeds_every_trainer_has(tmp_path):
    for seed, trainer, value in ((1, "A", 0.5), (2, "A", 0.7), (3, "A", 0.0), (1, "B", 0.4), (2, "B", 0.6)):
        folder = tmp_path / "evaluation" / f"seed_{seed}" / trainer
        folder.mkdir(parents=True)
        (folder / "per_case.csv").write_text("case,subset,region,dice,hd95\n"
                                             f"c1,T1,tumor_core,{value},1.0\nc1,T2,tumor_core,{value},1.0\n")
    stats = report.archive_statistics(str(tmp_path), ["A", "B"])
    assert stats["A"].per_seed == {"TC": pytest.approx([0.5, 0.7])}  # seed 3: B has none
    assert stats["B"].mean["TC"] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError, match="none for C"):
        report.archive_statistics(str(tmp_path), ["A", "C"])


@pytest.mark.parametrize("seeds, pairs", [((1,), []), ((1, 2), [(1, 2)]),
                                          ((1, 2, 3), [(1, 2), (2, 3), (3, 1)])])
def test_the_ensemble_control_pairs_each_seed_with_the_next(seeds, pairs):
    """Three seeds give three pairs, every network in two of them: a spread for the ensemble."""
    bare = study.Study.__new__(study.Study)
    bare.seeds = list(seeds)
    assert bare.ensemble_pairs == pairs


def test_smml_above_the_ensemble_only_by_more_than_the_larger_spread():
    ensemble = statistics(TC=(0.78, 0.79, 0.80), ET=(0.70, 0.75, 0.80))  # spreads 0.01, 0.05
    smml = statistics(TC=(0.815, 0.815, 0.815), ET=(0.78, 0.78, 0.78))  # TC +0.025, ET +0.03, no spread of its own
    apart = statistics(TC=(0.795, 0.795, 0.795), ET=(0.78, 0.78, 0.78))
    stats = {study.ENSEMBLE: ensemble, "SMMLTrainer": smml, "SMMLTrainerNoConsistency": apart}
    lines = report.ensemble_verdicts(stats, ["SMMLTrainer", "SMMLTrainerNoConsistency"])
    assert lines[0].startswith("- SMMLTrainer against ModalityDropoutTrainer x2: TC +2.50 (above), ET +3.00 (tie)")
    assert lines[0].endswith("above the ensemble on TC beyond the seed spread and its uncertainty.")
    assert lines[1] == "- SMMLTrainerNoConsistency against ModalityDropoutTrainer x2: TC +0.50 (tie), ET +3.00 (tie)."
    assert lines[2].endswith("TC +2.00 (above), ET +0.00 (tie).")
    # The ensemble's ET spread alone makes SMML's +3 ET a tie; within TC's spread too, the gain is the ensemble's.
    stats["SMMLTrainer"] = statistics(TC=(0.795, 0.795, 0.795), ET=(0.78, 0.78, 0.78))
    lines = report.ensemble_verdicts(stats, ["SMMLTrainer"])
    assert "not above it beyond the seed spread and its uncertainty on TC or ET" in lines[0]


def test_one_ensemble_pair_takes_the_references_seed_spread():
    """A single pair (two seeds) is not an exact number: SMML 0.77 above it is a tie within MD's
    spread; three pairs keep their own spread."""
    reference = statistics(TC=(0.34, 0.37))
    one, label = report.ensemble_statistics(statistics(TC=(0.36,)), reference)
    assert one.spread["TC"] == pytest.approx(reference.spread["TC"]) and "one pair" in label
    assert numbers.compare(statistics(TC=(0.357, 0.357)), one, "TC")[1] == "tie"
    three, label = report.ensemble_statistics(statistics(TC=(0.36, 0.37, 0.38)), reference)
    assert three.spread["TC"] == pytest.approx(0.01) and "over the pairs" in label


def test_which_trainer_says_when_a_two_network_lead_is_the_ensembles():
    """The best TC is a two-network trainer that MD x2 ties: the line says so and names the best
    one-network trainer; a one-network best gets neither."""
    stats = {"ModalityDropoutTrainer": statistics(TC=(0.74, 0.76, 0.78), WT=(0.70, 0.70, 0.70)),
             study.ENSEMBLE: statistics(TC=(0.74, 0.77, 0.80), WT=(0.72, 0.72, 0.72)),
             "SMMLTrainer": statistics(TC=(0.79, 0.79, 0.79), WT=(0.71, 0.71, 0.71)),
             "MSTKDTrainer": statistics(TC=(0.78, 0.78, 0.78), WT=(0.75, 0.75, 0.75))}
    contenders = ["ModalityDropoutTrainer", "SMMLTrainer", "MSTKDTrainer"]
    tc = report.which_trainer_line("TC", stats, contenders, {"SMMLTrainer": 2.18}, lambda t, r: 0.25)
    assert tc.startswith("- **TC**: best mean Dice SMMLTrainer (79.00 ± 0.00 over seeds), +3.00 points against "
                         "ModalityDropoutTrainer: beyond the seed spread and its uncertainty; closes 25 % of")
    assert "trains at 2.18x" in tc
    assert "(ModalityDropoutTrainer x2) are -2.00 against it: a tie, so its lead is what a second network gives" in tc
    assert tc.endswith("the best with one network is MSTKDTrainer (78.00 ± 0.00, +2.00 against "
                       "ModalityDropoutTrainer: a tie).")
    wt = report.which_trainer_line("WT", stats, contenders, {}, None)
    assert wt == ("- **WT**: best mean Dice MSTKDTrainer (75.00 ± 0.00 over seeds), +5.00 points against "
                  "ModalityDropoutTrainer: beyond the seed spread and its uncertainty.")


def small_study(tmp_path, trainers, seeds, dedicated="none", **options) -> study.Study:
    """A Study of a two-modality dataset.json alone (nothing is trained or read but the modalities)."""
    folder = tmp_path / "raw" / "Dataset123_Two"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text('{"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, '
                                         '"tumor": 1}, "numTraining": 1, "file_ending": ".nii.gz"}')
    setup = study.StudySetup("Dataset123_Two", "2d", str(folder / "imagesTs"), epochs=10, iterations=5)
    return study.Study(str(tmp_path / "work"), setup, trainers, seeds, dedicated, "cpu", raw=str(tmp_path / "raw"),
                       preprocessed=str(tmp_path / "preprocessed"), **options)


def test_a_partial_report_lists_the_evaluations_still_to_run(tmp_path):
    """Seeds, then the controls (compute-matched per seed, the ensemble pairs), then the dedicated
    models the full command would evaluate."""
    bare = small_study(tmp_path, ["ModalityDropoutTrainer", "SMMLTrainer"], [1, 2], "singles")
    done = ["evaluate ModalityDropoutTrainer seed 1", "evaluate SMMLTrainer seed 1",
            "evaluate ModalityDropoutTrainer seed 2", "evaluate DedicatedTrainer__T1 seed dedicated"]
    bare.state["done"] = dict.fromkeys(done, "now")
    assert bare.pending_steps() == ["evaluate SMMLTrainer seed 2",
                                    "evaluate ModalityDropoutTrainer compute-matched seed 1",
                                    "evaluate ModalityDropoutTrainer compute-matched seed 2",
                                    "evaluate ModalityDropoutTrainer x2 seed 1+2",
                                    "evaluate DedicatedTrainer__T2 seed dedicated",
                                    "evaluate DedicatedTrainer__T1_T2 seed dedicated"]
    without = small_study(tmp_path / "other", ["ModalityDropoutTrainer", "SMMLTrainer"], [1, 2],
                          compute_matched=False, ensemble=False)
    assert without.pending_steps() == [f"evaluate {t} seed {s}" for s in (1, 2)
                                       for t in ("ModalityDropoutTrainer", "SMMLTrainer")]


def test_the_compute_matched_control_trains_as_long_as_the_costliest_method(tmp_path):
    """Its epochs: the study's epochs x (mean minutes of the costliest method / the reference's), over
    the seeds where all are trained; fixed in the record once, and needing every such training first."""
    matched = small_study(tmp_path, ["FullModalityTrainer", "ModalityDropoutTrainer", "SMMLTrainer", "MSTKDTrainer"],
                          [1, 2])
    assert matched.compute_matched_methods == ["SMMLTrainer", "MSTKDTrainer"]
    assert matched.training_needs(study.COMPUTE_MATCHED, 2) == [
        f"train {t} seed {s}" for s in (1, 2) for t in ("ModalityDropoutTrainer", "SMMLTrainer", "MSTKDTrainer")]
    with pytest.raises(study.StudyError, match="trained first"):
        matched.compute_matched_epochs()
    minutes = {"ModalityDropoutTrainer": (4.0, 5.0), "SMMLTrainer": (9.0, 11.0), "MSTKDTrainer": (20.0, 16.0),
               "FullModalityTrainer": (50.0, 50.0)}  # nnU-Net fed zeros is not a method it is matched to
    matched.state["trainings"] = {f"{t} seed {s}": {"minutes": m[s - 1]} for t, m in minutes.items() for s in (1, 2)}
    assert matched.compute_matched_epochs() == 40  # 10 epochs x 18 / 4.5
    record = matched.reload()["compute_matched"]
    assert record["matched_to"] == "MSTKDTrainer" and record["ratio"] == pytest.approx(4.0)
    assert record["seeds"] == [1, 2]
    matched.state["trainings"]["MSTKDTrainer seed 1"] = {"minutes": 100.0}  # fixed once: a later record changes nothing
    assert matched.compute_matched_epochs() == 40
    assert matched.training_needs(study.COMPUTE_MATCHED, 1) == []
    assert matched.model_folder(study.COMPUTE_MATCHED, 1).endswith(
        "seed_1_compute_matched/nnUNet_results/Dataset123_Two/ModalityDropoutTrainer__nnUNetPlans__2d")


def test_a_method_is_worth_its_cost_only_above_the_compute_matched_control():
    stats = {study.COMPUTE_MATCHED: statistics(TC=(0.70, 0.72, 0.74), ET=(0.60, 0.60, 0.60)),
             "MSTKDTrainer": statistics(TC=(0.80, 0.80, 0.80), ET=(0.61, 0.61, 0.61)),
             "MAGMSTrainer": statistics(TC=(0.71, 0.71, 0.71), ET=(0.50, 0.50, 0.50))}
    lines = report.equal_compute_lines(stats, ["MSTKDTrainer", "MAGMSTrainer"], ["TC", "ET"])
    assert lines[0] == "- MSTKDTrainer: TC +8.00 (above), ET +1.00 (above): worth its cost on TC and ET."
    assert lines[1] == ("- MAGMSTrainer: TC -1.00 (tie), ET -10.00 (below): nowhere above it beyond the seed "
                        "spread and its uncertainty; training ModalityDropoutTrainer for as long gives as much.")
    stats["MAGMSTrainer"] = statistics(TC=(0.61, 0.61, 0.61), ET=(0.50, 0.50, 0.50))
    assert report.equal_compute_lines(stats, ["MAGMSTrainer"], ["TC", "ET"])[0].endswith(
        "below it on every region; training ModalityDropoutTrainer for as long gives more.")


def test_a_study_refuses_a_work_folder_of_another_setup(tmp_path):
    import os
    small_study(tmp_path, ["ModalityDropoutTrainer"], [1])
    # A study keeps its folders to its own commands: this process's nnU-Net folders are left alone
    # (writing them broke every later in-process test of the suite).
    assert os.environ.get("nnUNet_preprocessed") != str(tmp_path / "preprocessed")
    setup = study.StudySetup("Dataset123_Two", "3d_fullres", str(tmp_path / "raw" / "imagesTs"))
    with pytest.raises(study.StudyError, match="holds another study"):
        study.Study(str(tmp_path / "work"), setup, ["ModalityDropoutTrainer"], [1], "none", "cpu",
                    raw=str(tmp_path / "raw"), preprocessed=str(tmp_path / "preprocessed"))
