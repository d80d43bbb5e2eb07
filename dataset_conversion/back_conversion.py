"""``nnUNetv2_convert_predictions_to_source``: nnU-Net predictions back to a release's own labels.

Our labels (1 edema, 2 necrosis/non-enhancing, 3 enhancing, 4 resection cavity) become the release's
(BraTS 2018-2021/FeTS: 2, 1, 4; BraTS 2023/2024 GLI: 2, 1, 3 and 4; MSD: unchanged). With
``--release auto`` the release is read from the ``source_release`` key that our converters put in
dataset.json, which nnUNetv2_predict copies into its output folder.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile

import numpy as np
import SimpleITK as sitk

from .common import (NIFTI, RELEASES, ConversionError, Workers, default_num_processes, map_labels, raise_for_errors,
                     run_main)


def output_name(case_id: str, release, naming: str) -> str:
    """``case``: <case>.nii.gz, what the BraTS submission portals take; ``source``: the release's own
    label file name (<case>_seg.nii.gz, <case>-seg.nii.gz, MSD labelsTr <case>.nii.gz)."""
    return f"{case_id}.nii.gz" if naming == "case" else release.label_file.format(case=case_id)


def release_of(pred_folder: str, requested: str):
    if requested != "auto":
        return RELEASES[requested]
    path = os.path.join(pred_folder, "dataset.json")
    key = None
    if os.path.isfile(path):
        with open(path) as f:
            key = json.load(f).get("source_release")
    if key not in RELEASES:
        raise ConversionError(f"cannot tell the release: {path} has no known 'source_release'; pass --release")
    return RELEASES[key]


def convert_file(item, to_source: dict, tmp_folder: str):
    """Check and convert one prediction into tmp_folder; returns an error message or None."""
    path, name = item
    try:
        image = sitk.ReadImage(path)
    except RuntimeError:
        return f"prediction {path}: cannot read it"
    array = sitk.GetArrayViewFromImage(image)
    values = set(np.unique(array).tolist())
    unexpected = sorted(values - set(to_source))
    if unexpected:
        return f"prediction {path}: labels {unexpected} are not nnU-Net labels of this release {sorted(to_source)}"
    out = sitk.GetImageFromArray(map_labels(array, to_source))
    out.CopyInformation(image)
    sitk.WriteImage(out, os.path.join(tmp_folder, name), useCompression=True)
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_convert_predictions_to_source",
        description="Map nnU-Net predictions (labels 1 edema, 2 necrosis/non-enhancing, 3 enhancing, 4 cavity) "
                    "back to the label convention of the source release.")
    parser.add_argument("pred_folder", help="nnUNetv2_predict output folder (<case>.nii.gz files)")
    parser.add_argument("out_folder", help="where to write the converted files")
    parser.add_argument("--release", choices=("auto",) + tuple(RELEASES), default="auto",
                        help="source convention; auto reads 'source_release' from PRED_FOLDER/dataset.json")
    parser.add_argument("--naming", choices=("case", "source"), default="case",
                        help="case: <case>.nii.gz (default, challenge submission); source: the release's label "
                             "file name, e.g. <case>_seg.nii.gz or <case>-seg.nii.gz")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in OUT_FOLDER")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes())
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> list:
    if not os.path.isdir(args.pred_folder):
        raise ConversionError(f"prediction folder {args.pred_folder} does not exist")
    release = release_of(args.pred_folder, args.release)
    names = sorted(n for n in os.listdir(args.pred_folder) if not n.startswith(".") and NIFTI.search(n))
    if not names:
        raise ConversionError(f"no .nii/.nii.gz predictions in {args.pred_folder}")
    items = [(os.path.join(args.pred_folder, n), output_name(NIFTI.sub("", n), release, args.naming)) for n in names]
    targets = [os.path.join(args.out_folder, out) for _, out in items]
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not args.overwrite:
        raise ConversionError(f"{len(existing)} file(s) exist in {args.out_folder}, e.g. {existing[0]}; "
                              f"pass --overwrite to replace them")
    if os.path.realpath(args.out_folder) == os.path.realpath(args.pred_folder):
        raise ConversionError("OUT_FOLDER must differ from PRED_FOLDER")
    print(f"converting {len(items)} prediction(s) to the labels of {release.title}")

    os.makedirs(args.out_folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-back-conversion-", dir=args.out_folder)
    try:
        with Workers(args.num_processes) as workers:
            func = functools.partial(convert_file, to_source=release.to_source, tmp_folder=tmp)
            raise_for_errors([e for e in workers.map(func, items, desc="converting") if e])
        for (_, name), target in zip(items, targets):
            os.replace(os.path.join(tmp, name), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {len(targets)} file(s) to {args.out_folder}")
    return targets


def main() -> None:
    run_main(lambda: convert(parse_args()))


if __name__ == "__main__":
    main()
