"""benchmarks/paper_comparison.py and benchmarks/published_splits.py on small synthetic folders.

The evaluation folders are written by the real report writer of ``nnUNetv2_evaluate_missing``
(``write_reports``), with a channel order unlike the papers' (BraTS 2024 names t2f, t1c, t1n,
t2w), so that only matching by modality name puts our numbers in the right rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, load_script
from nnunet_missingmod.inference.metrics import HD95_ONE_EMPTY, dice
from nnunet_missingmod.inference.reports import write_reports
from nnunet_missingmod.modalities import Modalities

REGIONS = ["whole_tumor", "tumor_core", "enhancing_tumor"]
CHANNELS = ("t2f", "t1c", "t1n", "t2w")  # FLAIR, T1ce, T1, T2: neither our order nor the papers'


pc = load_script("paper_comparison")
ps = load_script("published_splits")


def canonical_label(subset_name: str) -> str:
    """Our row name of a subset written with CHANNELS names, e.g. 't2f+t1c' -> 'T1ce+FLAIR'."""
    return pc.subset_label(pc.subset_key(subset_name.split("+")))


def subset_value(subset_name: str) -> float:
    """A value that identifies the subset by its modalities (not by position): a bit per modality."""
    bits = {"T1": 1, "T1ce": 2, "T2": 4, "FLAIR": 8}
    return sum(bits[m] for m in pc.subset_key(subset_name.split("+"))) / 100.0


def write_evaluation(folder, cases=("c1", "c2"), offset=0.0, title="ModalityDropoutTrainer on imagesTs (2 cases)",
                     et_hd95_one_empty=False):
    """An evaluation folder: per case, dice = subset code (+ region step, + per-case spread, + offset)."""
    modalities = Modalities(CHANNELS)
    subsets = [modalities.subset_name(s) for s in modalities.subsets()]
    records = []
    for i, case in enumerate(cases):
        for subset in subsets:
            for r, region in enumerate(REGIONS):
                value = subset_value(subset) + 0.2 * r + offset + (0.02 if i % 2 else -0.02)
                hd = HD95_ONE_EMPTY if (et_hd95_one_empty and region == "enhancing_tumor" and i == 0) else 10.0 + r
                records.append({"case": case, "subset": subset, "region": region, "dice": value, "hd95": hd})
    write_reports(records, subsets, REGIONS, str(folder), title=title)
    return subsets


def markdown_tables(text: str) -> dict:
    """{heading: {row name: {column: cell}}} from the Markdown output."""
    tables, heading, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading, header = line[3:], None
        elif line.startswith("| ") and heading:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                tables[heading] = {}
            else:
                tables[heading][cells[0]] = dict(zip(header[1:], cells[1:]))
    return tables


def test_subsets_are_matched_by_name_and_paper_numbers_printed_beside(tmp_path, capsys):
    subsets = write_evaluation(tmp_path / "eval")
    text = pc.main(["--dataset", "brats2024", str(tmp_path / "eval"), "--methods", "MST-KDNet", "SMU-Net",
                    "--markdown"])
    tables = markdown_tables(text)
    wt = tables["Dice WT (%), BraTS 2024 GLI (post-treatment)"]
    ours = "ModalityDropoutTrainer (ours)"
    assert list(wt)[:4] == ["T2", "T1ce", "T1", "FLAIR"] and list(wt)[-2:] == ["T1+T1ce+T2+FLAIR", "Mean"]
    for subset in subsets:  # every one of our 15 subsets lands in the row of its modalities
        row = canonical_label(subset)
        assert wt[row][ours] == f"{subset_value(subset) * 100:.2f}", row
    # The paper's T1Gd+T2 column is our T1ce+T2 (written t1c+t2w here): MST-KDNet Table 1, WT.
    assert wt["T1ce+T2"]["MST-KDNet"] == "79.8" and wt["T1ce+T2"]["SMU-Net"] == "76.7"
    assert wt["T1+T1ce"]["MST-KDNet"] == "75.1"  # paper column T1+T1Gd
    assert wt["T1+T1ce+T2+FLAIR"]["MST-KDNet"] == "86.8" and wt["Mean"]["MST-KDNet"] == "81.8"
    assert wt["Mean"][ours] == f"{np.mean([subset_value(s) for s in subsets]) * 100:.2f}"
    et = tables["Dice ET (%), BraTS 2024 GLI (post-treatment)"]
    assert et["T1ce"][ours] == f"{(subset_value('t1c') + 0.4) * 100:.2f}" and et["T1ce"]["MST-KDNet"] == "68.6"
    assert "RA-HVED" not in wt["T2"]  # --methods keeps only the methods named
    assert "transcribed from the images" in text and "centre crop" in text


def test_plain_text_output_and_command_line(tmp_path):
    write_evaluation(tmp_path / "eval")
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "paper_comparison.py"),
                             "--dataset", "fets2024", str(tmp_path / "eval")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Dice WT (%), FeTS 2024 (FeTS 2022 release)"
    row = next(line for line in lines if line.startswith("T1ce+T2 "))
    assert row.split()[1:] == [f"{subset_value('t1c+t2w') * 100:.2f}", "75.3", "71.5", "68.8", "84.4", "85.6",
                               "87.8", "88.2"]  # ours, then RA-HVED ... MST-KDNet of Table 3


def test_rfnet_averages_only_fill_the_mean_row(tmp_path):
    write_evaluation(tmp_path / "eval")
    text = pc.main(["--dataset", "brats2018", str(tmp_path / "eval"), "--markdown"])
    tc = markdown_tables(text)["Dice TC (%), BraTS 2018"]
    assert tc["Mean"]["RFNet"] == "76.53" and tc["Mean"]["HeMIS"] == "59.70" and tc["T2"]["RFNet"] == "–"
    assert "SMML (AAAI 2025)" in text and "MAG-MS (ISBI 2024)" in text  # what is not available is said
    assert "not converted: pass --convention paper" in text
    text = pc.main(["--dataset", "brats2018", str(tmp_path / "eval"), "--convention", "paper"])
    assert "not converted: per_case.csv has no predicted ET volume" in text and "--save_predictions" in text


def test_folds_pooled_splits_averaged_and_overlap_refused(tmp_path, capsys):
    write_evaluation(tmp_path / "f0", cases=("a", "b"), offset=0.0)
    write_evaluation(tmp_path / "f1", cases=("c", "d"), offset=0.1)
    write_evaluation(tmp_path / "f2", cases=("a", "c", "e"), offset=0.3)
    text = pc.main(["--dataset", "brats2024", "--run", "cv", str(tmp_path / "f0"), str(tmp_path / "f1"),
                    "--methods", "MST-KDNet", "--markdown"])
    wt = markdown_tables(text)["Dice WT (%), BraTS 2024 GLI (post-treatment)"]
    assert wt["T2"]["cv (ours)"] == f"{(subset_value('t2w') + 0.05) * 100:.2f}"  # 4 cases pooled
    assert "4 cases (cases pooled)" in text
    with pytest.raises(SystemExit, match=r"case a is in both .*f0 and .*f2.*--combine mean"):
        pc.main(["--dataset", "brats2024", "--run", "splits", str(tmp_path / "f0"), str(tmp_path / "f2")])
    text = pc.main(["--dataset", "brats2024", "--run", "splits", str(tmp_path / "f0"), str(tmp_path / "f2"),
                    "--combine", "mean", "--markdown"])
    wt = markdown_tables(text)["Dice WT (%), BraTS 2024 GLI (post-treatment)"]
    # f0's mean is the subset value, f2's (three cases: -0.02, +0.02, -0.02) that + 0.3 - 0.02/3.
    expected = (subset_value("t2w") + subset_value("t2w") + 0.3 - 0.02 / 3) / 2
    assert wt["T2"]["splits (ours)"] == f"{expected * 100:.2f}"


def test_mstkd_hd95_convention_is_recomputed_from_per_case_csv(tmp_path):
    write_evaluation(tmp_path / "eval", et_hd95_one_empty=True)
    args = ["--dataset", "brats2024", "--metric", "hd95", str(tmp_path / "eval"), "--methods", "MST-KDNet",
            "--markdown"]
    et = markdown_tables(pc.main(args))["HD95 ET (mm), BraTS 2024 GLI (post-treatment)"]
    assert et["T2"]["ModalityDropoutTrainer (ours)"] == f"{(HD95_ONE_EMPTY + 12.0) / 2:.2f}"
    assert et["T2"]["MST-KDNet"] == "11.7"
    text = pc.main(args + ["--convention", "paper"])
    et = markdown_tables(text)["HD95 ET (mm), BraTS 2024 GLI (post-treatment)"]
    assert et["T2"]["ModalityDropoutTrainer (ours)"] == f"{(0.0 + 12.0) / 2:.2f}"  # 373.13 -> 0, as MST-KDNet
    assert "converted from per_case.csv" in text


def _write_mask(array: np.ndarray, path) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_rfnet_et_postprocessing_from_the_evaluations_etpp_rows(tmp_path):
    """An evaluation that scored ETpp itself needs neither saved predictions nor labels: the
    papers' convention takes its ET Dice from the ETpp rows, and leaves WT, TC and HD95 alone."""
    subsets = [Modalities(CHANNELS).subset_name(s) for s in Modalities(CHANNELS).subsets()]
    regions = REGIONS + ["enhancing_tumor_postprocessed"]
    records = [{"case": c, "subset": s, "region": r, "dice": {"enhancing_tumor": 0.5,
                                                              "enhancing_tumor_postprocessed": 0.75}.get(r, 0.9),
                "hd95": 2.0} for c in ("a", "b") for s in subsets for r in regions]
    write_reports(records, subsets, regions, str(tmp_path / "eval"))
    args = ["--dataset", "brats2018", str(tmp_path / "eval"), "--markdown"]
    assert markdown_tables(pc.main(args))["Dice ET (%), BraTS 2018"]["T1ce"]["eval (ours)"] == "50.00"
    text = pc.main(args + ["--convention", "paper"])
    assert markdown_tables(text)["Dice ET (%), BraTS 2018"]["T1ce"]["eval (ours)"] == "75.00"
    assert markdown_tables(text)["Dice WT (%), BraTS 2018"]["T1ce"]["eval (ours)"] == "90.00"
    assert "converted: our ET Dice is the evaluation's ETpp column" in text


def test_rfnet_et_postprocessing_from_saved_predictions(tmp_path):
    """Predicted ET under 500 voxels is emptied: a 400-voxel hit becomes a miss, a 100-voxel false
    positive on a case without ET becomes a perfect score; a 600-voxel ET is kept."""
    shape = (20, 20, 20)
    ref_et, no_et = np.zeros(shape, bool), np.zeros(shape, bool)
    ref_et[:6, :10, :10] = True                      # 600 voxels of ET
    small_hit = np.zeros(shape, bool)
    small_hit[:4, :10, :10] = True                   # 400 voxels inside it
    small_fp = np.zeros(shape, bool)
    small_fp[10:11, :10, :10] = True                 # 100 voxels where there is no ET
    tumour = np.zeros(shape, np.uint8)
    tumour[:12, :12, :12] = 1                        # edema around everything
    references = {"a": ref_et, "b": no_et}
    predictions = {("t1c", "a"): small_hit, ("t1c", "b"): small_fp, ("t1c+t2w", "a"): ref_et, ("t1c+t2w", "b"): no_et}
    raw = tmp_path / "Dataset518_BraTS2018"
    (raw / "labelsTr").mkdir(parents=True)
    dataset_json = {"channel_names": dict(enumerate(CHANNELS)), "file_ending": ".nii.gz",
                    "labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                               "enhancing_tumor": [3]}, "regions_class_order": [1, 2, 3]}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    records = []
    for case, et in references.items():
        _write_mask(np.where(et, 3, tumour), raw / "labelsTr" / f"{case}.nii.gz")
    for (subset, case), et in predictions.items():
        _write_mask(np.where(et, 3, tumour), tmp_path / "eval" / "predictions" / subset / f"{case}.nii.gz")
        for region in REGIONS:
            d = dice(et, references[case]) if region == "enhancing_tumor" else 0.9
            records.append({"case": case, "subset": subset, "region": region, "dice": d, "hd95": 1.0})
    write_reports(records, ["t1c", "t1c+t2w"], REGIONS, str(tmp_path / "eval"))

    args = ["--dataset", "brats2018", str(tmp_path / "eval"), "--markdown"]
    et = markdown_tables(pc.main(args))["Dice ET (%), BraTS 2018"]
    assert et["T1ce"]["eval (ours)"] == f"{(0.8 + 0.0) / 2 * 100:.2f}" and et["T1ce+T2"]["eval (ours)"] == "100.00"
    text = pc.main(args + ["--convention", "paper", "--labels", str(raw / "labelsTr")])
    et = markdown_tables(text)["Dice ET (%), BraTS 2018"]
    assert et["T1ce"]["eval (ours)"] == f"{(0.0 + 1.0) / 2 * 100:.2f}"
    assert et["T1ce+T2"]["eval (ours)"] == "100.00"
    assert markdown_tables(text)["Dice WT (%), BraTS 2018"]["T1ce"]["eval (ours)"] == "90.00"  # WT untouched
    assert "only 2 of the 15 subsets" in text and "converted: our ET Dice recomputed" in text

    os.remove(tmp_path / "eval" / "predictions" / "t1c" / "b.nii.gz")
    with pytest.raises(SystemExit, match=r"predictions/t1c/b\.nii\.gz is missing"):
        pc.main(args + ["--convention", "paper", "--labels", str(raw / "labelsTr")])


def test_errors_name_the_folder_and_file(tmp_path):
    with pytest.raises(SystemExit, match=r"evaluation folder .*nowhere does not exist"):
        pc.main(["--dataset", "brats2024", str(tmp_path / "nowhere")])
    write_evaluation(tmp_path / "eval")
    os.remove(tmp_path / "eval" / "summary.json")
    with pytest.raises(SystemExit, match=r"eval/summary\.json is missing"):
        pc.main(["--dataset", "brats2024", str(tmp_path / "eval")])

    write_evaluation(tmp_path / "edited")
    csv_path = tmp_path / "edited" / "per_case.csv"
    lines = csv_path.read_text().splitlines()
    case, subset, region, value, hd = lines[1].split(",")
    lines[1] = ",".join([case, subset, region, str(float(value) + 0.5), hd])
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=r"edited/per_case\.csv and .*summary\.json disagree .*one of them replaced"):
        pc.main(["--dataset", "brats2024", str(tmp_path / "edited")])

    write_evaluation(tmp_path / "ok")
    with pytest.raises(SystemExit, match=r"unknown --dataset 'brats2015'"):
        pc.main(["--dataset", "brats2015", str(tmp_path / "ok")])
    with pytest.raises(SystemExit, match=r"--methods SMML: not in the dice tables of brats2018 \(they have HeMIS, "):
        pc.main(["--dataset", "brats2018", str(tmp_path / "ok"), "--methods", "SMML", "RFNet"])
    write_reports([{"case": "x", "subset": "CT", "region": r, "dice": 1.0, "hd95": 0.0} for r in REGIONS],
                  ["CT"], REGIONS, str(tmp_path / "ct"))
    with pytest.raises(SystemExit, match=r"ct/summary\.json: subset 'CT' names modalities outside"):
        pc.main(["--dataset", "brats2024", str(tmp_path / "ct")])


def test_paper_numbers_file_is_consistent():
    tables, datasets, unavailable = pc.load_paper_numbers(pc.DEFAULT_NUMBERS)
    assert set(datasets) == {"brats2018", "brats2020", "brats2024", "fets2024"}
    for table in tables:
        for region, methods in table.values.items():
            for method, row in methods.items():
                keys = [k for k in row if k != pc.MEAN]
                assert len(keys) in (0, 15) and set(keys) <= set(pc.COMMUNITY_ORDER), (table.id, method)
                if keys:  # the Avg column is the mean of the 15 within the transcription's rounding
                    # (a few differ more, by up to 1.4)
                    assert abs(np.mean([row[k] for k in keys]) - row[pc.MEAN]) < 1.5, (table.id, region, method)
    assert {t.id for t in tables} >= {"mstkdnet_brats2024_dice", "mstkdnet_fets2024_hd95",
                                      "rfnet_readme_brats2018_dice"}


# --- published_splits ------------------------------------------------------------------------------

def make_raw_dataset(root, dataset_id: int, name: str, cases) -> str:
    """A raw dataset folder with empty image and label files: the split tools only look at names."""
    folder = root / "nnUNet_raw" / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                                                     "file_ending": ".nii.gz"}))
    for case in cases:
        (folder / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
        for c in range(4):
            (folder / "imagesTr" / f"{case}_{c:04d}.nii.gz").write_bytes(b"")
    return str(folder)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    return tmp_path


def test_rfnet_brats2018_lists_become_three_folds_and_test_folders(nnunet_env):
    lists = os.path.join(REPO, "benchmarks", "splits", "rfnet_brats2018")
    splits = ps.read_splits(lists)
    assert len(splits) == 3 and all(len(s["train"]) == 199 and len(s["val"]) == 29 and len(s["test"]) == 57
                                     for s in splits)
    cases = sorted(set(splits[0]["train"]) | set(splits[0]["val"]) | set(splits[0]["test"]))
    assert len(cases) == 285
    raw = make_raw_dataset(nnunet_env, 518, "BraTS2018", cases)

    target = ps.write_folds("518", "rfnet_brats2018", overwrite=False)
    assert target == str(nnunet_env / "nnUNet_preprocessed" / "Dataset518_BraTS2018" / "splits_final.json")
    folds = json.load(open(target))
    assert folds == json.load(open(os.path.join(raw, "splits_final.json")))
    assert [f["train"] for f in folds] == [sorted(s["train"]) for s in splits]
    assert [f["val"] for f in folds] == [sorted(s["val"]) for s in splits]
    assert not set(folds[1]["train"]) & set(splits[1]["test"])  # a split's test cases are never trained on

    chosen = ps.make_test_folder("518", 1, str(nnunet_env / "test2"), lists="rfnet_brats2018")
    assert sorted(chosen) == sorted(splits[1]["test"])
    images = sorted(os.listdir(nnunet_env / "test2" / "imagesTs"))
    assert len(images) == 57 * 4 and images[0].endswith("_0000.nii.gz")
    label = nnunet_env / "test2" / "labelsTs" / f"{chosen[0]}.nii.gz"
    assert os.path.islink(label) and os.readlink(label) == os.path.join(raw, "labelsTr", f"{chosen[0]}.nii.gz")
    with pytest.raises(ps.ConversionError, match=r"test2/imagesTs is not empty; pass --overwrite"):
        ps.make_test_folder("518", 1, str(nnunet_env / "test2"), lists="rfnet_brats2018")
    with pytest.raises(ps.ConversionError, match=r"--fold 3: .* has 3 split\(s\)"):
        ps.make_test_folder("518", 3, str(nnunet_env / "t"), lists="rfnet_brats2018")


def test_rfnet_brats2020_names_lose_their_grade_prefix(nnunet_env):
    make_raw_dataset(nnunet_env, 520, "BraTS2020", [f"BraTS20_Training_{i:03d}" for i in range(1, 370)])
    folds = json.load(open(ps.write_folds("520", "rfnet_brats2020", overwrite=False)))
    assert len(folds) == 1 and len(folds[0]["train"]) == 219 and len(folds[0]["val"]) == 50
    assert all(c.startswith("BraTS20_Training_") for c in folds[0]["train"] + folds[0]["val"])
    assert "BraTS20_Training_002" in folds[0]["train"]  # HG_BraTS20_Training_002 in the list


def test_split_errors_and_folds_from_splits_final(nnunet_env, tmp_path):
    make_raw_dataset(nnunet_env, 530, "Tiny", ["c1", "c2", "c3", "c4", "c5"])
    own = tmp_path / "lists"
    own.mkdir()
    (own / "train.txt").write_text("c1\nc2\n# a comment\n\nc3\n")
    (own / "val.txt").write_text("c4\n")
    (own / "test.txt").write_text("c5\n")
    assert json.load(open(ps.write_folds("530", str(own), overwrite=False))) == [
        {"train": ["c1", "c2", "c3"], "val": ["c4"]}]

    (own / "val.txt").write_text("c5\n")
    with pytest.raises(ps.ConversionError, match=r"1 case\(s\) in both val and test: c5"):
        ps.write_folds("530", str(own), overwrite=False)
    (own / "val.txt").write_text("c4\n")
    (own / "train.txt").write_text("c1\nc2\nnot_a_case\n")
    with pytest.raises(ps.ConversionError, match=r"1 case\(s\) of .*train list of split 1 are not training "
                                                 r"cases of the dataset: not_a_case"):
        ps.write_folds("530", str(own), overwrite=False)
    (own / "train.txt").write_text("c1\nc2\n")
    with pytest.raises(ps.ConversionError, match=r"splits_final\.json exists with other folds; pass --overwrite"):
        ps.write_folds("530", str(own), overwrite=False)
    ps.write_folds("530", str(own), overwrite=True)
    with pytest.raises(ps.ConversionError, match=r"not a built-in list \(rfnet_brats2018, rfnet_brats2020\)"):
        ps.write_folds("530", "rfnet_brats2015", overwrite=False)

    # Without --lists, the val cases of a fold of splits_final.json (FeTS folds, nnU-Net's own split).
    assert ps.make_test_folder("530", 0, str(tmp_path / "fold0"), copy=True) == ["c4"]
    assert sorted(os.listdir(tmp_path / "fold0" / "imagesTs")) == [f"c4_{c:04d}.nii.gz" for c in range(4)]
    assert not os.path.islink(tmp_path / "fold0" / "labelsTs" / "c4.nii.gz")
    make_raw_dataset(nnunet_env, 531, "NoSplits", ["x"])
    with pytest.raises(ps.ConversionError, match=r"dataset 531 has no splits_final\.json yet"):
        ps.make_test_folder("531", 0, str(tmp_path / "none"))
