import csv
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CONFIGURATION, DATASET_ID, TRAINER, clean_env, load_json, run
from nnunet_missingmod.inference.cases import CaseError
from nnunet_missingmod.inference.evaluate_missing import evaluate_missing
from nnunet_missingmod.inference.records import EvaluationStateError
from nnunet_missingmod.inference.scoring import Conventions, score_prediction

SUBSETS_IN_ORDER = ["T1", "T1ce", "T2", "FLAIR", "T1+T1ce", "T1+T2", "T1+FLAIR", "T1ce+T2", "T1ce+FLAIR", "T2+FLAIR",
                    "T1+T1ce+T2", "T1+T1ce+FLAIR", "T1+T2+FLAIR", "T1ce+T2+FLAIR", "T1+T1ce+T2+FLAIR"]
REGIONS = ["whole_tumor", "tumor_core", "enhancing_tumor", "enhancing_tumor_postprocessed"]


@pytest.fixture(scope="module")
def evaluation(nnunet_folders, raw_dataset, trained_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation") / "all_subsets"
    result = run(["nnUNetv2_evaluate_missing", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", TRAINER, "-f", "0",
                  "-i", os.path.join(raw_dataset, "imagesTs"), "-o", out, "-device", "cpu", "--disable_tta",
                  "--save_predictions", "--figures", "1", "--hd95", "brats2023"], clean_env(nnunet_folders))
    return out, result


def test_reports_cover_every_case_subset_and_region(evaluation, raw_dataset):
    out, result = evaluation
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    cases = {f[:-len(".nii.gz")] for f in os.listdir(os.path.join(raw_dataset, "labelsTs"))}
    assert {(r["case"], r["subset"], r["region"]) for r in rows} == {
        (c, s, r) for c in cases for s in SUBSETS_IN_ORDER for r in REGIONS}
    for r in rows:
        assert 0 <= float(r["dice"]) <= 1 and 0 <= float(r["hd95"]) <= 374
        assert 0 <= float(r["lesion_dice"]) <= 1 and 0 <= float(r["lesion_hd95"]) <= 374
    summary = load_json(out / "summary.json")
    assert summary["subsets"] == SUBSETS_IN_ORDER
    # --hd95 brats2023: the legacy HD95 and its penalty are the BraTS 2023 script's, and say so
    assert summary["conventions"]["hd95"] == summary["conventions"]["lesion_hd95"] == "brats2023"
    assert summary["conventions"]["hd95_one_empty"] == summary["conventions"]["lesion_penalty_hd95"] == 374
    table = (out / "table.md").read_text()
    positions = [table.index(f"| {s} ") for s in SUBSETS_IN_ORDER]
    assert positions == sorted(positions) and "Mean" in table
    assert table.strip() in result.stdout  # the command prints the table
    assert "Dice ETpp (%)" in table and "Lesion-wise (BraTS 2023+ GLI" in table
    assert "HD95 in mm, the BraTS 2023 script's: surfel-area weighted" in table and "(374 when exactly one" in table
    # the synthetic voxels are far from BraTS' 1 mm^3: the user is told what RFNet's 500 voxels mean here
    assert "note: ETpp counts a predicted ET of fewer than 500 voxels" in result.stderr
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # calibration of each region's probability: in the CSV, the summary, a table and a diagram
    assert all(0 <= float(r["ece"]) <= 1 and 0 <= float(r["brier"]) <= 1
               for r in rows if "postprocessed" not in r["region"])
    assert summary["conventions"]["calibration_bins"] == 10 and summary["conventions"]["calibration_voxels"] == "brain"
    assert summary["mean_over_subsets"]["whole_tumor"]["ece"] is not None
    assert "| Subset | ECE WT (x100) | ECE TC (x100) | ECE ET (x100) | Brier WT (x100)" in table
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_predictions_match_the_per_case_scores(evaluation, raw_dataset):
    """Re-score a saved prediction from disk: the CSV holds what the prediction really scores."""
    out, _ = evaluation
    with open(out / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["subset"] == "T1ce+FLAIR"]
    case = rows[0]["case"]
    prediction = sitk.ReadImage(str(out / "predictions" / "T1ce+FLAIR" / f"{case}.nii.gz"))
    reference = sitk.ReadImage(os.path.join(raw_dataset, "labelsTs", f"{case}.nii.gz"))
    scores = score_prediction(sitk.GetArrayFromImage(prediction), sitk.GetArrayFromImage(reference),
                              {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)},
                              reference.GetSpacing()[::-1], Conventions(hd95="brats2023"))
    for row in (r for r in rows if r["case"] == case):
        for metric in ("dice", "hd95", "lesion_dice", "lesion_hd95"):
            assert float(row[metric]) == pytest.approx(scores[row["region"]][metric], abs=1e-4), metric


def test_evaluation_equals_prediction_from_absent_files(evaluation, predictor, raw_dataset, tmp_path):
    """Zeroing the preprocessed tensor (evaluation) == zero-filling the raw case (prediction)."""
    from nnunet_missingmod.inference.predict_missing import predict_missing
    out, _ = evaluation
    predict_missing(predictor, os.path.join(raw_dataset, "imagesTs"), str(tmp_path / "pred"), missing="T1,T2",
                    show_progress=False, save_probabilities=True)
    for name in (f for f in os.listdir(tmp_path / "pred") if f.endswith(".nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / "T1ce+FLAIR" / name)))
        assert np.array_equal(a, b), name

    # Calibration is that prediction's: from nnU-Net's probabilities (its .npz), on the brain's voxels.
    from nnunet_missingmod.inference.calibration import calibration_scores, region_probabilities
    with open(out / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["subset"] == "T1ce+FLAIR"]
    case = rows[0]["case"]
    probabilities = np.load(tmp_path / "pred" / f"{case}.npz")["probabilities"]
    reference = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw_dataset, "labelsTs", f"{case}.nii.gz")))
    images = [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw_dataset, "imagesTs", f"{case}_{c:04d}.nii.gz")))
              for c in range(4)]
    brain = np.any(np.stack(images) != 0, axis=0)
    regions = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
    maps = region_probabilities(probabilities, regions, predictor.label_manager)
    for row in (r for r in rows if r["case"] == case):
        if row["region"] not in regions:
            assert row["ece"] == row["brier"] == ""  # ETpp: no probabilities of its own
            continue
        expected = calibration_scores(maps[row["region"]], np.isin(reference, regions[row["region"]]), brain)
        assert float(row["ece"]) == pytest.approx(expected["ece"], abs=1e-6)
        assert float(row["brier"]) == pytest.approx(expected["brier"], abs=1e-6)


def test_bad_input_is_refused_with_a_clear_message(predictor, raw_dataset, tmp_path):
    images = os.path.join(raw_dataset, "imagesTs")
    labels = tmp_path / "labels"
    shutil.copytree(os.path.join(raw_dataset, "labelsTs"), labels)
    dropped = sorted(os.listdir(labels))[0]
    os.remove(labels / dropped)
    with pytest.raises(CaseError, match=rf"case {dropped[:-7]} has no label: expected .*{dropped}"):
        evaluate_missing(predictor, images, str(labels), str(tmp_path / "out"), show_progress=False)
    with pytest.raises(ValueError, match="unknown modality 'PD'"):
        evaluate_missing(predictor, images, os.path.join(raw_dataset, "labelsTs"), str(tmp_path / "out"),
                         subsets=["T1+PD"], show_progress=False)
    misplaced = tmp_path / "misplaced_labels"
    shutil.copytree(os.path.join(raw_dataset, "labelsTs"), misplaced)
    last = sorted(os.listdir(misplaced))[-1]
    label = sitk.ReadImage(str(misplaced / last))
    label.SetOrigin([o + 20 for o in label.GetOrigin()])
    sitk.WriteImage(label, str(misplaced / last))
    with pytest.raises(CaseError, match=rf"{last} \(the label\) does not match .*: origin"):
        evaluate_missing(predictor, images, str(misplaced), str(tmp_path / "misplaced_out"), show_progress=False)
    assert not (tmp_path / "misplaced_out").exists()  # checked before the first prediction
    incomplete = tmp_path / "incomplete"
    shutil.copytree(images, incomplete)
    os.remove(incomplete / sorted(os.listdir(incomplete))[1])
    with pytest.raises(CaseError, match="lacks T1ce"):
        evaluate_missing(predictor, str(incomplete), os.path.join(raw_dataset, "labelsTs"), str(tmp_path / "out"),
                         show_progress=False)


def test_subset_choice_and_refusal_to_overwrite(predictor, raw_dataset, tmp_path):
    args = (predictor, os.path.join(raw_dataset, "imagesTs"), os.path.join(raw_dataset, "labelsTs"),
            str(tmp_path / "out"))
    summary = evaluate_missing(*args, subsets=["flair", "T1c+FLAIR"], show_progress=False)
    assert summary["subsets"] == ["FLAIR", "T1ce+FLAIR"]
    with pytest.raises(EvaluationStateError, match=r"holds another evaluation .*subsets.*--overwrite"):
        evaluate_missing(*args, subsets=["T1"], show_progress=False)
    assert evaluate_missing(*args, subsets=["T1"], overwrite=True, show_progress=False)["subsets"] == ["T1"]


def test_figures_show_the_first_case_under_every_subset(evaluation, raw_dataset):
    out, _ = evaluation
    first = sorted(f[:-len(".nii.gz")] for f in os.listdir(os.path.join(raw_dataset, "labelsTs")))[0]
    assert sorted(os.listdir(out / "figures")) == [f"{first}.png"]
    from PIL import Image
    with Image.open(out / "figures" / f"{first}.png") as picture:  # 4 modalities, reference, 15 subsets, legend
        assert picture.width > 1000 and picture.height > 600


def test_a_model_ensembled_with_another_averages_their_logits(trained_model, predictor, raw_dataset, tmp_path):
    """--ensemble_with: nnU-Net's own averaging over parameter sets, here two models' weights."""
    import torch

    from nnunet_missingmod.inference.model import ensemble_with, load_predictor
    other = tmp_path / "other_model"
    shutil.copytree(trained_model["folder"], other)
    checkpoint = torch.load(other / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["network_weights"] = {k: v * 0.9 if v.is_floating_point() else v
                                     for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, other / "fold_0" / "checkpoint_final.pth")

    def single(folder):
        return load_predictor(str(folder), folds=[0], device=torch.device("cpu"), use_mirroring=False)

    torch.manual_seed(0)
    data = torch.randn(4, 40, 48, 40)
    mine, theirs = single(trained_model["folder"]), single(other)
    pair = single(trained_model["folder"])
    ensemble_with(pair, [str(other)], folds=[0])
    assert len(pair.list_of_parameters) == 2
    expected = (mine.predict_logits_from_preprocessed_data(data)
                + theirs.predict_logits_from_preprocessed_data(data)) / 2
    torch.testing.assert_close(pair.predict_logits_from_preprocessed_data(data), expected, rtol=1e-4, atol=1e-4)

    checkpoint["trainer_name"] = "FullModalityTrainer"
    torch.save(checkpoint, other / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ValueError, match="only models of the same trainer"):
        ensemble_with(single(trained_model["folder"]), [str(other)], folds=[0])
