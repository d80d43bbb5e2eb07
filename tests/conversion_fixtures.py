"""Tiny synthetic source trees in each release's real layout, for tests/test_conversion.py.

Cases are 8x9x10 voxels with random intensities; labels are drawn from the release's set and every
value of the set occurs in every case (so label mapping is checked for each value)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import SimpleITK as sitk

SIZE = (8, 9, 10)                      # x, y, z as SimpleITK sizes them
SPACING = (1.0, 1.2, 1.5)
ORIGIN = (-3.0, 4.0, 10.0)
LEGACY_LABELS = (0, 1, 2, 4)
GLI2023_LABELS = (0, 1, 2, 3)
GLI2024_LABELS = (0, 1, 2, 3, 4)
MSD_LABELS = (0, 1, 2, 3)
LEGACY_MODALITIES = ("t1", "t1ce", "t2", "flair")      # our channel order
GLI_MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def write_image(path, array, spacing=SPACING, origin=ORIGIN):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(image, path, useCompression=path.endswith(".gz"))
    return path


def read_array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def random_image(rng, dtype=np.int16):
    return rng.integers(1, 1000, size=SIZE[::-1]).astype(dtype)


def random_label(rng, values):
    label = rng.choice(np.array(values, dtype=np.uint8), size=SIZE[::-1])
    label.flat[: len(values)] = values        # every value present
    return label


def write_case(folder, case_id, modalities, separator, labels, rng, ext=".nii.gz", label_name=None, with_label=True):
    """One case: <folder>/<case><sep><modality><ext> and the label; returns {kind: path}."""
    paths = {m: write_image(os.path.join(folder, f"{case_id}{separator}{m}{ext}"), random_image(rng))
             for m in modalities}
    if with_label:
        name = label_name or f"{case_id}{separator}seg{ext}"
        paths["seg"] = write_image(os.path.join(folder, name), random_label(rng, labels))
    return paths


def legacy_case(root, case_id, rng, **kw):
    return write_case(os.path.join(root, case_id), case_id, LEGACY_MODALITIES, "_", LEGACY_LABELS, rng, **kw)


def gli_case(root, case_id, rng, labels=GLI2023_LABELS, **kw):
    return write_case(os.path.join(root, case_id), case_id, GLI_MODALITIES, "-", labels, rng, **kw)


def brats2020_kaggle(root, rng):
    """The Kaggle copy of BraTS 2020: uncompressed .nii, case 355's label named W39_1998.09.19_Segm.nii,
    CSV files beside the cases, and a validation case without label."""
    train = os.path.join(root, "BraTS2020_TrainingData", "MICCAI_BraTS2020_TrainingData")
    cases = {"BraTS20_Training_001": legacy_case(train, "BraTS20_Training_001", rng, ext=".nii"),
             "BraTS20_Training_355": legacy_case(train, "BraTS20_Training_355", rng, ext=".nii",
                                                 label_name="W39_1998.09.19_Segm.nii"),
             "BraTS20_Validation_001": legacy_case(os.path.join(root, "BraTS2020_ValidationData",
                                                                "MICCAI_BraTS2020_ValidationData"),
                                                   "BraTS20_Validation_001", rng, ext=".nii", with_label=False)}
    with open(os.path.join(train, "name_mapping.csv"), "w") as f:
        f.write("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n")
    return cases


def brats2018(root, rng):
    """BraTS 2018: HGG/ and LGG/ subfolders, one folder per case."""
    return {"Brats18_2013_2_1": legacy_case(os.path.join(root, "HGG"), "Brats18_2013_2_1", rng),
            "Brats18_TCIA10_103_1": legacy_case(os.path.join(root, "LGG"), "Brats18_TCIA10_103_1", rng)}


def msd_task01(root, rng, train_ids=("BRATS_001", "BRATS_002"), test_ids=("BRATS_485",)):
    """MSD Task01_BrainTumour: 4D images (FLAIR, T1w, t1gd, T2w), labelsTr, imagesTs, dataset.json and
    a ._ AppleDouble file as in the tarball. Returns {case: (4D array (c, z, y, x), label or None)}."""
    cases = {}
    for case_id in list(train_ids) + list(test_ids):
        volumes = np.stack([random_image(rng, np.float32) for _ in range(4)])
        image = sitk.JoinSeries([sitk.GetImageFromArray(v) for v in volumes])
        image.SetSpacing(SPACING + (1.0,))
        image.SetOrigin(ORIGIN + (0.0,))
        folder = os.path.join(root, "imagesTr" if case_id in train_ids else "imagesTs")
        os.makedirs(folder, exist_ok=True)
        sitk.WriteImage(image, os.path.join(folder, f"{case_id}.nii.gz"), useCompression=True)
        label = None
        if case_id in train_ids:
            label = random_label(rng, MSD_LABELS)
            write_image(os.path.join(root, "labelsTr", f"{case_id}.nii.gz"), label)
        cases[case_id] = (volumes, label)
    with open(os.path.join(root, "imagesTr", "._BRATS_001.nii.gz"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 AppleDouble junk")
    with open(os.path.join(root, "dataset.json"), "w") as f:
        f.write('{"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, '
                '"labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}')
    return cases


def tree_hash(root) -> str:
    """Hash of every relative path and file content under root (and of the folders themselves)."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        digest.update(os.path.relpath(folder, root).encode())
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()
