"""The built-in synthetic BraTS-like generator (nnunet_missingmod/synthetic.py, docs/synthetic.md).

Cases are small (40, 48, 40), as the demo and the shared fixtures use them. Contrast rules are
measured on generated cases, the way a reader of the docs' table would check them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from nnunet_missingmod import synthetic
from nnunet_missingmod.synthetic import (MODALITIES, SyntheticDataError, case_seed, contrast_table, generate_case,
                                         write_brats2023_layout, write_nnunet_dataset)

SHAPE = (40, 48, 40)
EXPECTED_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
    "labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]},
    "regions_class_order": [1, 2, 3],
    "numTraining": 3,
    "file_ending": ".nii.gz",
}


@pytest.fixture(scope="module")
def cases():
    return [generate_case(case_seed(0, i), SHAPE) for i in range(8)]


def read(path):
    image = sitk.ReadImage(path)
    return image, sitk.GetArrayFromImage(image)


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = generate_case(5, SHAPE), generate_case(5, SHAPE), generate_case(6, SHAPE)
    for m in MODALITIES:
        np.testing.assert_array_equal(a.images[m], b.images[m])
        assert a.images[m].dtype == np.float32 and a.images[m].shape == SHAPE
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.spacing == b.spacing and len(a.spacing) == 3


def test_labels_nest_core_inside_edema_and_rim_around_necrosis(cases):
    for case in cases:
        label = case.label
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3}
        assert (label == 1).sum() > 20, "every case has an edema halo"
        core = label >= 2
        assert core.any()
        assert not (core & ndi.binary_dilation(label == 0)).any(), "the core touches background"
        if case.info["has_enhancing"]:
            necrosis_neighbours = ndi.binary_dilation(label == 2)
            assert not (necrosis_neighbours & (label <= 1)).any(), "necrosis not enclosed by the enhancing rim"
    assert any(c.info["has_enhancing"] and c.info["has_necrosis"] for c in cases)


def test_probabilities_of_empty_compartments():
    no_et = generate_case(3, SHAPE, p_no_enhancing=1.0)
    assert not (no_et.label == 3).any() and (no_et.label == 2).any()
    solid = generate_case(3, SHAPE, p_no_enhancing=0.0, p_no_necrosis=1.0)
    assert (solid.label == 3).any() and not (solid.label == 2).any()
    with pytest.raises(SyntheticDataError, match="p_no_enhancing"):
        generate_case(3, SHAPE, p_no_enhancing=1.5)
    # By default about 15% of cases have no enhancing tumour (6 of 40 expected; tiny shape for speed).
    small = [generate_case(case_seed(0, i), (20, 24, 20)) for i in range(40)]
    assert 2 <= sum(not c.info["has_enhancing"] for c in small) <= 12


def test_background_is_exactly_zero_outside_the_brain(cases):
    for case in cases:
        brain = case.brain_mask
        assert 0.25 < brain.mean() < 0.55, "the brain fills the volume"
        assert not (case.label.astype(bool) & ~brain).any()
        for m in MODALITIES:
            image = case.images[m]
            assert np.all(image[~brain] == 0), m
            assert np.isfinite(image).all() and (image[brain] > 0).mean() > 0.999, m


def test_normal_tissue_contrast(cases):
    """T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM > CSF (CSF dark)."""
    case = cases[0]
    far = ~ndi.binary_dilation(case.label > 0, iterations=2)
    means = {m: {name: case.images[m][(case.tissue == value) & far].mean() for value, name in
                 synthetic.TISSUE_CLASSES.items() if value} for m in MODALITIES}
    assert means["T1"]["WM"] > means["T1"]["GM"] > means["T1"]["CSF"]
    assert means["T1ce"]["WM"] > means["T1ce"]["GM"] > means["T1ce"]["CSF"]
    assert means["T2"]["CSF"] > means["T2"]["GM"] > means["T2"]["WM"]
    assert means["FLAIR"]["GM"] > means["FLAIR"]["WM"] > means["FLAIR"]["CSF"]


def test_tumour_contrast_per_modality():
    table = contrast_table(8, SHAPE, seed=0)  # {compartment: {modality: (ratio to WM, CNR, cases)}}
    ratio = {c: {m: v[0] for m, v in per.items()} for c, per in table.items()}
    cnr = {c: {m: v[1] for m, v in per.items()} for c, per in table.items()}
    assert all(v[2] >= 4 for c in ("edema", "necrosis", "enhancing") for v in table[c].values())
    # Edema is bright in FLAIR and T2, only weakly visible (slightly dark) in T1 and T1ce.
    assert ratio["edema"]["FLAIR"] > 1.3 and ratio["edema"]["T2"] > 1.3
    assert cnr["edema"]["FLAIR"] > 4 and cnr["edema"]["T2"] > 4
    assert abs(cnr["edema"]["T1"]) < cnr["edema"]["FLAIR"] / 2 and abs(cnr["edema"]["T1ce"]) < cnr["edema"]["FLAIR"] / 2
    # The enhancing rim is bright in T1ce, far more than in any other modality.
    assert ratio["enhancing"]["T1ce"] > 1.4 and cnr["enhancing"]["T1ce"] > 4
    assert cnr["enhancing"]["T1ce"] > 3 * abs(cnr["enhancing"]["T1"])
    assert cnr["enhancing"]["T1ce"] > 1.5 * max(cnr["enhancing"]["T2"], cnr["enhancing"]["FLAIR"])
    # Necrosis is dark in T1ce (darker than WM, far darker than the rim) and bright in T2.
    assert ratio["necrosis"]["T1ce"] < 0.9 < 1.4 < ratio["enhancing"]["T1ce"]
    assert ratio["necrosis"]["T2"] > 1.5


def test_nnunet_dataset_passes_nnunets_integrity_check(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    raw = str(tmp_path / "raw")
    folder = write_nnunet_dataset(995, num_train=3, num_test=2, shape=SHAPE, seed=4, raw_folder=raw)
    assert folder == os.path.join(raw, "Dataset995_SyntheticBraTS")
    assert sorted(os.listdir(raw)) == ["Dataset995_SyntheticBraTS"], "no temporary folder left behind"
    verify_dataset_integrity(folder, num_processes=1)

    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    assert {k: dataset_json[k] for k in EXPECTED_JSON} == EXPECTED_JSON
    assert list(dataset_json["labels"]) == ["background", "whole_tumor", "tumor_core", "enhancing_tumor"]
    assert dataset_json["name"] == "Dataset995_SyntheticBraTS" and dataset_json["description"]
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == \
        [f"case_{i:04d}_{c:04d}.nii.gz" for i in range(3) for c in range(4)]
    assert sorted(os.listdir(os.path.join(folder, "labelsTr"))) == [f"case_{i:04d}.nii.gz" for i in range(3)]
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == \
        [f"case_{i:04d}_{c:04d}.nii.gz" for i in (3, 4) for c in range(4)]
    assert sorted(os.listdir(os.path.join(folder, "labelsTs"))) == ["case_0003.nii.gz", "case_0004.nii.gz"]

    expected = generate_case(case_seed(4, 3), SHAPE)
    image, t1ce = read(os.path.join(folder, "imagesTs", "case_0003_0001.nii.gz"))
    np.testing.assert_array_equal(t1ce, expected.images["T1ce"])
    np.testing.assert_array_equal(read(os.path.join(folder, "labelsTs", "case_0003.nii.gz"))[1], expected.label)
    np.testing.assert_allclose(image.GetSpacing(), expected.spacing[::-1])
    template = sitk.ReadImage(os.path.join(synthetic.template_folder(), synthetic.TEMPLATE_FILES["t1"]))
    assert image.GetDirection() == template.GetDirection()
    # The grid is centred on the template's brain: the volume centre lies near the template's centre of mass.
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    brain = sitk.GetArrayFromImage(template) > 0
    mass = template.TransformContinuousIndexToPhysicalPoint(np.argwhere(brain).mean(0)[::-1].tolist())
    assert np.linalg.norm(np.subtract(centre, mass)) < 15


def test_refuses_to_overwrite_a_dataset_id(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    first = write_nnunet_dataset(996, 1, shape=SHAPE, raw_folder=str(raw))
    with pytest.raises(SyntheticDataError, match="996.*overwrite"):
        write_nnunet_dataset(996, 1, name="Other", shape=SHAPE, raw_folder=str(raw))
    assert sorted(os.listdir(raw)) == ["Dataset996_SyntheticBraTS"]
    second = write_nnunet_dataset(996, 2, name="Other", shape=SHAPE, seed=1, raw_folder=str(raw), overwrite=True)
    assert sorted(os.listdir(raw)) == ["Dataset996_Other"] and not os.path.exists(first)
    assert len(os.listdir(os.path.join(second, "labelsTr"))) == 2

    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SyntheticDataError, match="nnUNet_raw"):
        write_nnunet_dataset(997, 1, shape=SHAPE)


def test_brats2023_layout_names_and_labels_and_converter(tmp_path, monkeypatch):
    out = str(tmp_path / "brats")
    assert write_brats2023_layout(out, 2, shape=SHAPE, seed=4) == out
    assert sorted(os.listdir(out)) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    files = sorted(os.listdir(os.path.join(out, "BraTS-GLI-00001-000")))
    assert files == [f"BraTS-GLI-00001-000-{s}.nii.gz" for s in ("seg", "t1c", "t1n", "t2f", "t2w")]

    expected = generate_case(case_seed(4, 1), SHAPE)
    _, seg = read(os.path.join(out, "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-seg.nii.gz"))
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    for brats, ours in ((1, 2), (2, 1), (3, 3), (0, 0)):  # 1 NCR, 2 ED, 3 ET
        np.testing.assert_array_equal(seg == brats, expected.label == ours)
    image, t1c = read(os.path.join(out, "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t1c.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    assert np.abs(t1c - expected.images["T1ce"]).max() <= 0.5 + 1e-3

    with pytest.raises(SyntheticDataError, match="not empty"):
        write_brats2023_layout(out, 1, shape=SHAPE)
    write_brats2023_layout(out, 1, shape=SHAPE, overwrite=True)
    assert os.listdir(out) == ["BraTS-GLI-00000-000"]
    os.makedirs(os.path.join(out, "mine"))
    with pytest.raises(SyntheticDataError, match="refusing"):
        write_brats2023_layout(out, 1, shape=SHAPE, overwrite=True)
    os.rmdir(os.path.join(out, "mine"))

    # The project's converter reads the layout back into nnU-Net format with our labels.
    from nnunet_missingmod.dataset_conversion import brats
    raw = tmp_path / "raw"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    write_brats2023_layout(out, 2, shape=SHAPE, seed=4, overwrite=True)
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_convert_brats", out, "-d", "998", "-np", "1"])
    brats.main()
    converted = [d for d in os.listdir(raw) if d.startswith("Dataset998_")]
    assert len(converted) == 1
    label_file = os.path.join(raw, converted[0], "labelsTr", "BraTS-GLI-00001-000.nii.gz")
    np.testing.assert_array_equal(read(label_file)[1], expected.label)


def test_command_line(tmp_path):
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"),
           "LANG": "C.UTF-8", "nnUNet_raw": str(tmp_path / "raw")}
    command = ["nnUNetv2_synthetic_brats", "-d", "7", "-n", "2", "--num-test", "1", "--shape", "32", "40", "32",
               "--seed", "3", "-np", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    folder = os.path.join(tmp_path, "raw", "Dataset007_SyntheticBraTS")
    assert result.stdout.strip() == folder
    assert len(os.listdir(os.path.join(folder, "imagesTr"))) == 8
    assert len(os.listdir(os.path.join(folder, "imagesTs"))) == 4
    image, label = read(os.path.join(folder, "labelsTr", "case_0000.nii.gz"))
    assert image.GetSize() == (32, 40, 32)
    # Written by worker processes, identical to the case generated here: independent of num_processes.
    expected = generate_case(case_seed(3, 0), (32, 40, 32))
    np.testing.assert_array_equal(label, expected.label)
    np.testing.assert_array_equal(read(os.path.join(folder, "imagesTr", "case_0000_0003.nii.gz"))[1],
                                  expected.images["FLAIR"])

    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "overwrite" in again.stderr


@pytest.mark.parametrize("argv, fault", [
    (["-n", "2"], "-d/--dataset-id"),
    (["-d", "7", "-n", "0"], "-n/--num-cases"),
    (["-d", "7", "-n", "2", "--shape", "8", "40", "32"], "--shape"),
    (["-n", "2", "--layout", "brats2023"], "-o/--output"),
    (["-d", "1000", "-n", "2"], "-d/--dataset-id"),
    (["-d", "7", "-n", "2", "--p-no-enhancing", "2"], "--p-no-enhancing"),
])
def test_command_line_errors_name_the_argument(argv, fault, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(argv)
    assert exit_info.value.code == 2
    assert fault in capsys.readouterr().err


def test_brats_geometry_keeps_the_brain_at_its_real_size():
    """The BraTS grid (240 x 240 x 155 at 1 mm): the brain keeps its size instead of filling the grid."""
    geometry = synthetic.GEOMETRIES["brats"]
    case = generate_case(1, geometry["shape"], spacing=geometry["spacing"])
    assert case.label.shape == case.images["T1"].shape == (155, 240, 240)
    assert case.spacing == (1.0, 1.0, 1.0)
    brain_ml = case.brain_mask.sum() / 1000  # 1 mm voxels
    assert 1200 < brain_ml < 2000, brain_ml  # an adult brain, not one stretched over the grid
    extent = [np.ptp(np.flatnonzero(case.brain_mask.any(axis=tuple(j for j in range(3) if j != i)))) + 1
              for i in range(3)]
    assert extent[1] < 200 and extent[2] < 170, extent  # room around it in y and x, as in BraTS
    assert 10 < (case.label > 0).sum() / 1000 < 150  # a tumour of 10-150 ml
    assert not (case.label[~case.brain_mask]).any()
    with pytest.raises(SyntheticDataError, match="smaller than the brain"):
        generate_case(1, (100, 240, 240), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(SyntheticDataError, match="spacing"):
        generate_case(1, (64, 72, 64), spacing=(1.0, 0.0, 1.0))


def test_command_line_takes_shape_or_geometry_not_both(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["-d", "5", "-n", "1", "--shape", "32", "32", "32", "--geometry", "brats"])
    assert exit_info.value.code == 2
    assert "--shape and --geometry" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
