import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CONFIGURATION, DATASET_ID, TRAINER, clean_env, load_json, run_together
from nnunet_missingmod.inference.cases import CaseError
from nnunet_missingmod.inference.predict_missing import REPORT_FILE, predict_missing

MODEL = ["-d", DATASET_ID, "-c", CONFIGURATION, "-tr", TRAINER, "-f", "0", "-device", "cpu", "--disable_tta"]
T1CE = 1


def _test_images(raw_dataset):
    return os.path.join(raw_dataset, "imagesTs")


def _copy_cases(source, target, skip_channel=None, zero_channel=None):
    os.makedirs(target)
    for name in sorted(os.listdir(source)):
        channel = int(name[-len("0000.nii.gz"):-len(".nii.gz")])
        if channel == skip_channel:
            continue
        if channel == zero_channel:
            image = sitk.ReadImage(os.path.join(source, name))
            zeros = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
            zeros.CopyInformation(image)
            sitk.WriteImage(zeros, os.path.join(target, name))
        else:
            shutil.copy(os.path.join(source, name), target)


def _segmentations(folder):
    return {f: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f)))
            for f in sorted(os.listdir(folder)) if f.endswith(".nii.gz")}


def test_absent_files_declared_missing_and_zero_files_give_the_same_prediction(
        nnunet_folders, raw_dataset, trained_model, tmp_path):
    """Ours (absent T1ce files; --missing T1ce) equals plain nnUNetv2_predict on all-zero T1ce images."""
    env = clean_env(nnunet_folders)
    source = _test_images(raw_dataset)
    _copy_cases(source, tmp_path / "zero_files", zero_channel=T1CE)
    _copy_cases(source, tmp_path / "absent_files", skip_channel=T1CE)
    _, absent, declared = run_together([
        (["nnUNetv2_predict", "-i", tmp_path / "zero_files", "-o", tmp_path / "nnunet", *MODEL], env),
        (["nnUNetv2_predict_missing", "-i", tmp_path / "absent_files", "-o", tmp_path / "absent", *MODEL], env),
        (["nnUNetv2_predict_missing", "-i", source, "-o", tmp_path / "declared", "--missing", "t1c", *MODEL], env)])

    reference = _segmentations(tmp_path / "nnunet")
    assert len(reference) == 2
    for folder in ("absent", "declared"):
        ours = _segmentations(tmp_path / folder)
        assert ours.keys() == reference.keys()
        for name in reference:
            assert np.array_equal(ours[name], reference[name]), f"{folder}/{name} differs from nnUNetv2_predict"
        assert all(v == ["T1ce"] for v in load_json(tmp_path / folder / REPORT_FILE).values())
    assert "missing T1ce" in absent.stdout + absent.stderr
    assert "missing T1ce" in declared.stdout + declared.stderr
    # predictions keep the input geometry
    original = sitk.ReadImage(os.path.join(source, sorted(os.listdir(source))[0]))
    predicted = sitk.ReadImage(str(tmp_path / "absent" / sorted(reference)[0]))
    assert predicted.GetSize() == original.GetSize() and np.allclose(predicted.GetSpacing(), original.GetSpacing())


def test_every_modality_missing_is_refused_before_predicting(predictor, raw_dataset, tmp_path):
    source = _test_images(raw_dataset)
    only_flair = tmp_path / "only_flair"
    os.makedirs(only_flair)
    for name in os.listdir(source):
        if name.endswith("_0003.nii.gz"):
            shutil.copy(os.path.join(source, name), only_flair)
    with pytest.raises(CaseError, match=r"case \S+: every modality is missing.*_0003.nii.gz.*--missing FLAIR"):
        predict_missing(predictor, str(only_flair), str(tmp_path / "out"), missing="FLAIR", show_progress=False)
    out = tmp_path / "out"
    assert not os.path.exists(out) or not [f for f in os.listdir(out) if f.endswith(".nii.gz")]


def test_a_bad_case_in_the_middle_stops_the_run_before_anything_is_written(predictor, raw_dataset, tmp_path):
    """Every case's headers are checked first: with the bad case last in order, no earlier case's
    prediction (nor anything else) is written, and the message names the file."""
    images = tmp_path / "images"
    _copy_cases(_test_images(raw_dataset), images)
    for name in sorted(os.listdir(images)):  # a third case after the two good ones, copied from the first
        if name.startswith(sorted(os.listdir(images))[0][:-len("_0000.nii.gz")]):
            shutil.copy(images / name, images / ("zz_last" + name[-len("_0000.nii.gz"):]))
    bad = sorted(f for f in os.listdir(images) if f.endswith("_0002.nii.gz"))[1]  # the second case of three
    image = sitk.ReadImage(str(images / bad))
    image.SetSpacing([s * 1.5 for s in image.GetSpacing()])
    sitk.WriteImage(image, str(images / bad))
    with pytest.raises(CaseError, match=rf"{bad} does not match .*_0000.nii.gz: spacing"):
        predict_missing(predictor, str(images), str(tmp_path / "out"), show_progress=False)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_unknown_modality_and_existing_outputs_are_refused(predictor, raw_dataset, tmp_path):
    source = _test_images(raw_dataset)
    with pytest.raises(ValueError, match="unknown modality 'DWI'"):
        predict_missing(predictor, source, str(tmp_path / "out"), missing="DWI", show_progress=False)
    predict_missing(predictor, source, str(tmp_path / "out"), missing="T2", show_progress=False)
    before = _segmentations(tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_missing(predictor, source, str(tmp_path / "out"), show_progress=False)
    assert predict_missing(predictor, source, str(tmp_path / "out"), continue_prediction=True,
                           show_progress=False).keys() == {k[:-len(".nii.gz")] for k in before}
    predict_missing(predictor, source, str(tmp_path / "out"), missing="T2", overwrite=True, show_progress=False)
    after = _segmentations(tmp_path / "out")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not [f for f in os.listdir(tmp_path / "out") if "partial" in f]


def test_unknown_channel_file_is_refused(predictor, raw_dataset, tmp_path):
    images = tmp_path / "images"
    _copy_cases(_test_images(raw_dataset), images)
    first = sorted(os.listdir(images))[0]
    shutil.copy(images / first, images / first.replace("_0000", "_0004"))
    with pytest.raises(CaseError, match="channel 0004 does not exist; the model knows 4 channels"):
        predict_missing(predictor, str(images), str(tmp_path / "out"), show_progress=False)
