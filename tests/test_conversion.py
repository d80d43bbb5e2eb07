"""The dataset converters (dataset_conversion/, docs/conversion.md) on tiny synthetic source trees in
each release's real layout.

The release conversions run the installed console scripts in subprocesses, as a user types them.
Validation failures and --overwrite call the same ``main()`` in-process (a subprocess adds nothing
there but time); one failure also goes through the real script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # also under --import-mode=importlib
import conversion_fixtures as fx  # noqa: E402
from conversion_fixtures import read_array  # noqa: E402

EXPECTED_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
LEGACY_TO_OURS = {0: 0, 1: 2, 2: 1, 4: 3}
GLI_TO_OURS = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """nnU-Net folders in tmp_path, in the environment of this process and of the scripts."""
    out = {"nnUNet_raw": str(tmp_path / "nnUNet_raw"), "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed")}
    for k, v in out.items():
        monkeypatch.setenv(k, v)
    return out


def script(name, *args, folders, check=True):
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"),
           "LANG": "C.UTF-8", **folders}
    result = subprocess.run([name, *map(str, args)], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def in_process(module, *args, capsys):
    """Call a converter's console-script main() with sys.argv; returns (exit status, stdout, stderr)."""
    import importlib
    main = importlib.import_module(f"nnunet_missingmod.dataset_conversion.{module}").main
    saved = sys.argv
    sys.argv = [module, *map(str, args)]
    try:
        main()
        status = 0
    except SystemExit as e:
        status = e.code
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def load_json(path):
    with open(path) as f:
        return json.load(f)


def mapped(label, mapping):
    out = np.zeros_like(label)
    for source, ours in mapping.items():
        out[label == source] = ours
    return out


def assert_dataset(folder, cases, source_channels, to_ours, test_cases=()):
    """imagesTr/labelsTr hold `cases` with channels T1, T1ce, T2, FLAIR and mapped labels; imagesTs `test_cases`."""
    assert sorted(os.listdir(os.path.join(folder, "labelsTr"))) == sorted(f"{c}.nii.gz" for c in cases)
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == sorted(
        f"{c}_{i:04d}.nii.gz" for c in cases for i in range(4))
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == sorted(
        f"{c}_{i:04d}.nii.gz" for c in test_cases for i in range(4))
    for case_id, paths in cases.items():
        for i, modality in enumerate(source_channels):
            np.testing.assert_array_equal(read_array(os.path.join(folder, "imagesTr", f"{case_id}_{i:04d}.nii.gz")),
                                          read_array(paths[modality]))
        label = read_array(os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"))
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, mapped(read_array(paths["seg"]), to_ours))


def no_leftovers(root):
    """Nothing but finished datasets in nnUNet_raw (no temporary folders)."""
    return [n for n in os.listdir(root) if not n.startswith("Dataset")] if os.path.isdir(root) else []


# --- BraTS 2018-2021 ------------------------------------------------------------------------------

def test_brats2020_kaggle_quirks_and_round_trip(tmp_path, folders):
    """Kaggle BraTS 2020 (.nii, case 355's W39_1998.09.19_Segm.nii, a validation case without label),
    converted with 2 workers, then converted back bit for bit."""
    src = tmp_path / "kaggle"
    cases = fx.brats2020_kaggle(str(src), np.random.default_rng(0))
    before = fx.tree_hash(src)

    result = script("nnUNetv2_convert_brats", src, "-d", 20, "-np", 2, folders=folders)
    assert "release: BraTS 2020" in result.stdout
    assert "W39_1998.09.19_Segm.nii" in result.stdout            # the quirk is reported, not failed on
    folder = os.path.join(folders["nnUNet_raw"], "Dataset020_BraTS2020")
    training = {c: p for c, p in cases.items() if "seg" in p}
    assert_dataset(folder, training, fx.LEGACY_MODALITIES, LEGACY_TO_OURS, test_cases=["BraTS20_Validation_001"])
    dataset = load_json(os.path.join(folder, "dataset.json"))
    assert list(dataset["labels"].items()) == list(EXPECTED_LABELS.items())    # key order is the region order
    assert dataset["channel_names"] == CHANNELS
    assert dataset["regions_class_order"] == [1, 2, 3]
    assert dataset["file_ending"] == ".nii.gz" and dataset["numTraining"] == 2
    assert dataset["source_release"] == "2020"
    assert fx.tree_hash(src) == before
    assert no_leftovers(folders["nnUNet_raw"]) == []

    # Back-conversion, release read from dataset.json as nnUNetv2_predict copies it beside predictions.
    predictions = tmp_path / "predictions"
    os.makedirs(predictions)
    for case_id in training:
        os.link(os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"), predictions / f"{case_id}.nii.gz")
    os.link(os.path.join(folder, "dataset.json"), predictions / "dataset.json")
    back = tmp_path / "back"
    script("nnUNetv2_convert_predictions_to_source", predictions, back, "--naming", "source", folders=folders)
    assert sorted(os.listdir(back)) == ["BraTS20_Training_001_seg.nii.gz", "BraTS20_Training_355_seg.nii.gz"]
    for case_id, paths in training.items():
        original, restored = read_array(paths["seg"]), read_array(back / f"{case_id}_seg.nii.gz")
        np.testing.assert_array_equal(restored, original)
        assert restored.tobytes() == original.astype(np.uint8).tobytes()
    again = script("nnUNetv2_convert_predictions_to_source", predictions, back, folders=folders, check=False)
    assert again.returncode == 0 and sorted(os.listdir(back))[0] == "BraTS20_Training_001.nii.gz"  # --naming case


def test_brats2018_hgg_lgg(tmp_path, folders):
    src = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    cases = fx.brats2018(str(src), np.random.default_rng(1))
    result = script("nnUNetv2_convert_brats", src, "-d", 18, "-n", "MyBraTS", "-np", 1, folders=folders)
    assert "release: BraTS 2018" in result.stdout
    folder = os.path.join(folders["nnUNet_raw"], "Dataset018_MyBraTS")
    assert_dataset(folder, cases, fx.LEGACY_MODALITIES, LEGACY_TO_OURS)
    # .nii.gz sources with one geometry are copied byte for byte.
    with open(cases["Brats18_2013_2_1"]["flair"], "rb") as a, \
            open(os.path.join(folder, "imagesTr", "Brats18_2013_2_1_0003.nii.gz"), "rb") as b:
        assert a.read() == b.read()


# --- BraTS 2023 / 2024 GLI --------------------------------------------------------------------------

def test_brats2023(tmp_path, folders):
    src = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    rng = np.random.default_rng(2)
    cases = {c: fx.gli_case(str(src), c, rng) for c in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000")}
    result = script("nnUNetv2_convert_brats", src, "-d", 23, folders=folders)
    assert "release: BraTS 2023 GLI" in result.stdout and "no label 4" in result.stdout
    folder = os.path.join(folders["nnUNet_raw"], "Dataset023_BraTS2023_GLI")
    assert_dataset(folder, cases, fx.GLI_MODALITIES, GLI_TO_OURS)
    assert load_json(os.path.join(folder, "dataset.json"))["source_release"] == "2023"


def test_brats2024_cavity_background_and_keep(tmp_path, folders):
    src = tmp_path / "BraTS2024-BraTS-GLI-TrainingData"
    rng = np.random.default_rng(3)
    cases = {c: fx.gli_case(str(src), c, rng, labels=fx.GLI2024_LABELS)
             for c in ("BraTS-GLI-02000-100", "BraTS-GLI-02001-101")}
    cases["BraTS-GLI-02002-100"] = fx.gli_case(str(src), "BraTS-GLI-02002-100", rng, with_label=False)
    training = {c: p for c, p in cases.items() if "seg" in p}
    before = fx.tree_hash(src)

    result = script("nnUNetv2_convert_brats", src, "-d", 240, folders=folders)
    assert "release: BraTS 2024 GLI" in result.stdout and "label 4 (resection cavity) found in 2" in result.stdout
    folder = os.path.join(folders["nnUNet_raw"], "Dataset240_BraTS2024_GLI")
    assert_dataset(folder, training, fx.GLI_MODALITIES, {**GLI_TO_OURS, 4: 0}, test_cases=["BraTS-GLI-02002-100"])
    dataset = load_json(os.path.join(folder, "dataset.json"))
    assert dataset["labels"] == EXPECTED_LABELS and dataset["cavity"] == "background"

    result = script("nnUNetv2_convert_brats", src, "-d", 241, "--cavity", "keep", "--release", "2024",
                    folders=folders)
    folder = os.path.join(folders["nnUNet_raw"], "Dataset241_BraTS2024_GLI")
    assert_dataset(folder, training, fx.GLI_MODALITIES, GLI_TO_OURS, test_cases=["BraTS-GLI-02002-100"])
    dataset = load_json(os.path.join(folder, "dataset.json"))
    assert list(dataset["labels"].items()) == list({**EXPECTED_LABELS, "resection_cavity": [4]}.items())
    assert dataset["regions_class_order"] == [1, 2, 3, 4] and dataset["cavity"] == "keep"
    assert fx.tree_hash(src) == before

    # nnU-Net accepts the layout: 4 sigmoid regions, the cavity in none of the tumour regions.
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    verify_dataset_integrity(folder, num_processes=1)
    manager = LabelManager(dataset["labels"], dataset["regions_class_order"])
    assert manager.foreground_regions == [(1, 2, 3), (2, 3), (3,), (4,)]
    assert manager.num_segmentation_heads == 4

    # Round trip: predictions in our labels back to BraTS 2024's, bit for bit.
    back = tmp_path / "back"
    script("nnUNetv2_convert_predictions_to_source", os.path.join(folder, "labelsTr"), back, "--release", "2024",
           "--naming", "source", folders=folders)
    for case_id, paths in training.items():
        np.testing.assert_array_equal(read_array(back / f"{case_id}-seg.nii.gz"), read_array(paths["seg"]))


def test_release_detection_rules(tmp_path, folders, capsys):
    """--cavity keep is refused for 2023; a legacy label 4 with --release 2023 is a bad label."""
    src = tmp_path / "gli"
    fx.gli_case(str(src), "BraTS-GLI-00000-000", np.random.default_rng(4))
    status, _, err = in_process("brats", src, "-d", 5, "--cavity", "keep", "-np", 1, capsys=capsys)
    assert status == 1 and "--cavity keep applies to BraTS 2024 GLI only" in err
    status, _, err = in_process("brats", src, "-d", 5, "--release", "2021", "-np", 1, capsys=capsys)
    assert status == 1 and "--release 2021" in err
    cavity = tmp_path / "gli_with_cavity"
    fx.gli_case(str(cavity), "BraTS-GLI-00001-000", np.random.default_rng(5), labels=fx.GLI2024_LABELS)
    status, _, err = in_process("brats", cavity, "-d", 5, "--release", "2023", "-np", 1, capsys=capsys)
    assert status == 1 and "BraTS-GLI-00001-000-seg.nii.gz: label values [4] are not in the release" in err, err
    assert not os.path.exists(folders["nnUNet_raw"]) or os.listdir(folders["nnUNet_raw"]) == []

    from nnunet_missingmod.dataset_conversion.brats import legacy_year
    assert legacy_year(["BraTS2021_00000", "BraTS2021_00002"]) == "2021"
    assert legacy_year(["BraTS19_CBICA_AAB_1"]) == "2019"
    assert legacy_year(["Patient7"]) == "legacy"


# --- FeTS --------------------------------------------------------------------------------------------

FETS_PARTITIONS = {1: 4, 2: 3, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1}    # partition -> number of subjects


def test_fets_partitioning_holds_out_institutions(tmp_path, folders):
    src = tmp_path / "FeTS2022_TrainingData"
    rng = np.random.default_rng(5)
    rows, subject = [], 0
    for partition, count in FETS_PARTITIONS.items():
        for _ in range(count):
            subject += 1
            rows.append((partition, f"FeTS2022_{subject:05d}"))
    rows.append((-1, "FeTS2022_01500"))                     # FeTS validation subject, no label
    for partition, case_id in rows:
        fx.legacy_case(str(src), case_id, rng, with_label=partition != -1)
    csv_path = tmp_path / "partitioning_1.csv"
    csv_path.write_text("Partition_ID,Subject_ID\n" + "".join(f"{p},{s}\n" for p, s in rows))

    result = script("nnUNetv2_convert_fets", src, "-d", 501, "--partitioning", csv_path, folders=folders)
    assert "release: FeTS" in result.stdout
    name = "Dataset501_FeTS2022"
    splits = load_json(os.path.join(folders["nnUNet_preprocessed"], name, "splits_final.json"))
    assert load_json(os.path.join(folders["nnUNet_raw"], name, "splits_final.json")) == splits
    dataset = load_json(os.path.join(folders["nnUNet_raw"], name, "dataset.json"))
    # Largest partition first, each to the emptiest fold (ties: lower fold; equal sizes: lower id).
    assert dataset["fold_partitions"] == [[1], [2], [3, 7], [4], [5, 6]]
    partition_of = {s: p for p, s in rows if p != -1}
    assert len(splits) == 5
    for split in splits:
        val_partitions = {partition_of[c] for c in split["val"]}
        train_partitions = {partition_of[c] for c in split["train"]}
        assert val_partitions and not val_partitions & train_partitions        # whole institutions held out
        assert sorted(split["train"] + split["val"]) == sorted(partition_of)
    assert sorted(c for s in splits for c in s["val"]) == sorted(partition_of)  # each case validated once
    assert sorted(os.listdir(os.path.join(folders["nnUNet_raw"], name, "imagesTs"))) == [
        f"FeTS2022_01500_{i:04d}.nii.gz" for i in range(4)]                   # Partition_ID -1
    assert dataset["numTraining"] == len(partition_of) == 14

    # Reproducible: a second conversion (other id, a CSV subject missing from SRC ignored) gives the same folds.
    csv_extra = tmp_path / "partitioning_extra.csv"
    csv_extra.write_text(csv_path.read_text() + "7,FeTS2022_09999\n")
    failed = script("nnUNetv2_convert_fets", src, "-d", 502, "--partitioning", csv_extra, folders=folders,
                    check=False)
    assert failed.returncode == 1 and "FeTS2022_09999" in failed.stderr
    assert not any(n.startswith("Dataset502") for n in os.listdir(folders["nnUNet_raw"]))
    script("nnUNetv2_convert_fets", src, "-d", 502, "--partitioning", csv_extra, "--ignore-missing-subjects",
           folders=folders)
    assert load_json(os.path.join(folders["nnUNet_preprocessed"], "Dataset502_FeTS2022", "splits_final.json")) == splits


def test_fets_fold_assignment_is_deterministic():
    from nnunet_missingmod.dataset_conversion.fets import assign_folds
    from nnunet_missingmod.dataset_conversion.common import ConversionError
    partition_of = {f"c{i:03d}": p for i, p in enumerate([1] * 9 + [2] * 5 + [3] * 5 + [4, 4, 5, 6, 7, 8])}
    shuffled = dict(sorted(partition_of.items(), key=lambda kv: hash(kv[0]) % 7))
    assert assign_folds(partition_of) == assign_folds(shuffled)
    assert assign_folds(partition_of)[1] == [[1], [2], [3], [4, 7], [5, 6, 8]]
    with pytest.raises(ConversionError, match="at least 5"):
        assign_folds({"a": 1, "b": 2, "c": 3, "d": 4})


def test_fets_csv_problems(tmp_path, folders, capsys):
    """A labelled subject missing from the CSV has no institution: error naming it, nothing written."""
    src = tmp_path / "FeTS"
    rng = np.random.default_rng(11)
    for i in range(6):
        fx.legacy_case(str(src), f"FeTS2022_{i:05d}", rng)
    csv_path = tmp_path / "partitioning_2.csv"
    csv_path.write_text("Partition_ID,Subject_ID\n" + "".join(f"{i + 1},FeTS2022_{i:05d}\n" for i in range(5)))
    status, _, err = in_process("fets", src, "-d", 7, "--partitioning", csv_path, "-np", 1, capsys=capsys)
    assert status == 1 and "case FeTS2022_00005" in err and "FeTS2022_00005_seg.nii.gz" in err
    csv_path.write_text("Partition_ID,Subject_ID\n" + "".join(f"{i % 4 + 1},FeTS2022_{i:05d}\n" for i in range(6)))
    status, _, err = in_process("fets", src, "-d", 7, "--partitioning", csv_path, "-np", 1, capsys=capsys)
    assert status == 1 and "4 partition(s)" in err
    assert not os.path.exists(folders["nnUNet_raw"]) and not os.path.exists(folders["nnUNet_preprocessed"])


# --- MSD ---------------------------------------------------------------------------------------------

def test_msd_4d(tmp_path, folders):
    src = tmp_path / "Task01_BrainTumour"
    cases = fx.msd_task01(str(src), np.random.default_rng(6))
    before = fx.tree_hash(src)
    result = script("nnUNetv2_convert_msd_brain", src, "-d", 1, "-np", 1, folders=folders)
    assert "release: MSD Task01_BrainTumour" in result.stdout
    folder = os.path.join(folders["nnUNet_raw"], "Dataset001_MSDBrainTumour")
    msd_volume = {0: 1, 1: 2, 2: 3, 3: 0}        # our channel (T1, T1ce, T2, FLAIR) -> MSD volume
    for case_id, (volumes, label) in cases.items():
        split = "Tr" if label is not None else "Ts"
        for channel, volume in msd_volume.items():
            path = os.path.join(folder, f"images{split}", f"{case_id}_{channel:04d}.nii.gz")
            np.testing.assert_array_equal(read_array(path), volumes[volume])
        if label is not None:
            np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", f"{case_id}.nii.gz")), label)
    import SimpleITK as sitk
    image = sitk.ReadImage(os.path.join(folder, "imagesTr", "BRATS_001_0000.nii.gz"))
    assert image.GetDimension() == 3
    assert np.allclose(image.GetSpacing(), fx.SPACING) and np.allclose(image.GetOrigin(), fx.ORIGIN)
    dataset = load_json(os.path.join(folder, "dataset.json"))
    assert dataset["labels"] == EXPECTED_LABELS and dataset["source_release"] == "msd"
    assert sorted(os.listdir(os.path.join(folder, "labelsTr"))) == ["BRATS_001.nii.gz", "BRATS_002.nii.gz"]
    assert fx.tree_hash(src) == before


# --- validation: every error names case and file, exits non-zero, writes nothing ---------------------

def _break_missing_modality(src, case):
    os.remove(case["t2"])
    return "BraTS2021_00001_t2.nii[.gz]"


def _break_shape(src, case):
    fx.write_image(case["t1ce"], np.zeros((11, 9, 8), np.int16))
    return case["t1ce"]


def _break_spacing(src, case):
    fx.write_image(case["flair"], fx.random_image(np.random.default_rng(0)), spacing=(1.0, 1.2, 2.0))
    return case["flair"]


def _break_label(src, case):
    fx.write_image(case["seg"], fx.random_label(np.random.default_rng(0), (0, 1, 2, 3)))
    return case["seg"]


def _break_nan(src, case):
    array = fx.random_image(np.random.default_rng(0), np.float32)
    array[2, 3, 4] = np.nan
    fx.write_image(case["t1"], array)
    return case["t1"]


def _break_duplicate(src, case):
    fx.legacy_case(str(src / "LGG"), "BraTS2021_00001", np.random.default_rng(0))
    return str(src / "LGG" / "BraTS2021_00001")


BREAKERS = {"missing modality": (_break_missing_modality, "missing file"),
            "shape": (_break_shape, "shape"),
            "spacing": (_break_spacing, "spacing"),
            "label": (_break_label, "label values [3]"),
            "nan": (_break_nan, "NaN"),
            "duplicate id": (_break_duplicate, "duplicate case id")}


@pytest.mark.parametrize("problem", list(BREAKERS))
def test_validation_errors(tmp_path, folders, capsys, problem):
    src = tmp_path / "BraTS2021"
    rng = np.random.default_rng(7)
    cases = {c: fx.legacy_case(str(src), c, rng) for c in ("BraTS2021_00000", "BraTS2021_00001")}
    breaker, words = BREAKERS[problem]
    culprit = breaker(src, cases["BraTS2021_00001"])
    before = fx.tree_hash(src)
    status, out, err = in_process("brats", src, "-d", 21, "-np", 1, capsys=capsys)
    assert status == 1
    line = next(ln for ln in err.splitlines() if words in ln)
    assert "case BraTS2021_00001" in line and culprit in line
    assert "BraTS2021_00000" not in err
    assert not os.path.exists(folders["nnUNet_raw"]) or os.listdir(folders["nnUNet_raw"]) == []
    assert fx.tree_hash(src) == before


def test_validation_error_from_the_console_script(tmp_path, folders):
    src = tmp_path / "BraTS2021"
    case = fx.legacy_case(str(src), "BraTS2021_00007", np.random.default_rng(8))
    os.remove(case["flair"])
    result = script("nnUNetv2_convert_brats", src, "-d", 21, folders=folders, check=False)
    assert result.returncode == 1
    assert "case BraTS2021_00007: missing file" in result.stderr and "BraTS2021_00007_flair.nii[.gz]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(folders["nnUNet_raw"]) or os.listdir(folders["nnUNet_raw"]) == []


def test_check_case_tolerance_and_reporting(tmp_path):
    """Geometry within tolerance passes (and is harmonised on writing); several problems are all reported."""
    from nnunet_missingmod.dataset_conversion.common import LEGACY_NAMING, check_case, discover_named_cases
    rng = np.random.default_rng(9)
    case = fx.legacy_case(str(tmp_path / "src"), "BraTS2021_00003", rng)
    fx.write_image(case["t2"], fx.random_image(rng), origin=(fx.ORIGIN[0] + 1e-4,) + fx.ORIGIN[1:])
    naming, cases, errors, _ = discover_named_cases(str(tmp_path / "src"))
    assert naming is LEGACY_NAMING and errors == []
    assert check_case(cases[0], {0, 1, 2, 4}).errors == []
    fx.write_image(case["t2"], fx.random_image(rng), origin=(fx.ORIGIN[0] + 0.5,) + fx.ORIGIN[1:])
    fx.write_image(case["seg"], fx.random_label(rng, (0, 1, 2, 4, 5)))
    check = check_case(cases[0], {0, 1, 2, 4})
    assert len(check.errors) == 2 and "origin" in check.errors[0] and "[5]" in check.errors[1]


# --- --overwrite ---------------------------------------------------------------------------------------

def test_overwrite(tmp_path, folders, capsys):
    src = tmp_path / "BraTS2021"
    fx.legacy_case(str(src), "BraTS2021_00000", np.random.default_rng(10))
    raw = folders["nnUNet_raw"]
    assert in_process("brats", src, "-d", 30, "-np", 1, capsys=capsys)[0] == 0
    assert os.listdir(raw) == ["Dataset030_BraTS2021"]
    marker = os.path.join(raw, "Dataset030_BraTS2021", "marker")
    open(marker, "w").close()

    status, _, err = in_process("brats", src, "-d", 30, "-n", "Other", "-np", 1, capsys=capsys)
    assert status == 1 and "already exists" in err and "--overwrite" in err
    assert os.listdir(raw) == ["Dataset030_BraTS2021"] and os.path.exists(marker)

    status, out, _ = in_process("brats", src, "-d", 30, "-n", "Other", "--overwrite", "-np", 1, capsys=capsys)
    assert status == 0 and "replaced" in out
    assert os.listdir(raw) == ["Dataset030_Other"]            # the old dataset of this id is gone, no leftovers
    assert load_json(os.path.join(raw, "Dataset030_Other", "dataset.json"))["name"] == "Dataset030_Other"

    # Back-conversion does not overwrite files either, unless told to.
    predictions = os.path.join(raw, "Dataset030_Other", "labelsTr")
    assert in_process("back_conversion", predictions, tmp_path / "b", "--release", "2021", "-np", 1,
                      capsys=capsys)[0] == 0
    status, _, err = in_process("back_conversion", predictions, tmp_path / "b", "--release", "2021", "-np", 1,
                                capsys=capsys)
    assert status == 1 and "--overwrite" in err
    status, _, err = in_process("back_conversion", os.path.join(raw, "Dataset030_Other", "imagesTr"), tmp_path / "c",
                                "--release", "2021", "-np", 1, capsys=capsys)
    assert status == 1 and "BraTS2021_00000_0000.nii.gz" in err           # image values are no labels
    assert not os.path.exists(tmp_path / "c") or os.listdir(tmp_path / "c") == []
