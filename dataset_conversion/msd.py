"""``nnUNetv2_convert_msd_brain``: MSD Task01_BrainTumour to nnU-Net raw format.

MSD stores each case as one 4D file (volumes FLAIR, T1w, t1gd, T2w, as its dataset.json "modality"
says) and already uses our labels (1 edema, 2 non-enhancing tumour, 3 enhancing tumour). The 4D
files are split into T1, T1ce, T2, FLAIR (``_0000.._0003``), unlike nnU-Net's generic MSD converter,
which keeps the MSD order; the same trained model then serves BraTS and MSD data.
"""

from __future__ import annotations

import argparse
import json
import os

from nnunet_missingmod.modalities import canonical_name

from .common import (CHANNELS, NIFTI, RELEASES, AtomicDatasetFolder, Case, ConversionError, Workers,
                     add_common_arguments, check_cases, check_output_outside_source, nnunet_folder,
                     run_main, summarise, write_cases, write_dataset_json)

MSD_DEFAULT_ORDER = ("FLAIR", "T1w", "t1gd", "T2w")


def channel_order(src: str) -> list:
    """For each of our CHANNELS, its volume index in the MSD 4D files, from SRC/dataset.json."""
    path = os.path.join(src, "dataset.json")
    names = list(MSD_DEFAULT_ORDER)
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
        modality = info.get("modality") or info.get("channel_names")
        if modality:
            names = [modality[k] for k in sorted(modality, key=int)]
    else:
        print(f"note: no {path}; assuming the MSD volume order {', '.join(MSD_DEFAULT_ORDER)}")
    ours = [canonical_name(n) for n in names]
    if sorted(ours) != sorted(CHANNELS):
        raise ConversionError(f"{path}: modalities {names} are not FLAIR, T1w, t1gd, T2w in some order")
    return [ours.index(c) for c in CHANNELS]


def case_id_of(name: str) -> str:
    return NIFTI.sub("", name)


def discover(src: str, order: list) -> tuple:
    """(cases, errors, notes) from imagesTr/labelsTr/imagesTs."""
    if not os.path.isdir(os.path.join(src, "imagesTr")):
        raise ConversionError(f"{src} has no imagesTr folder; expected the MSD Task01_BrainTumour layout")
    files = {}
    errors, notes = [], []
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        found = {}
        folder = os.path.join(src, sub)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                # skips MSD's ._* AppleDouble files
                if not name.startswith(".") and NIFTI.search(name) and os.path.isfile(os.path.join(folder, name)):
                    found.setdefault(case_id_of(name), []).append(os.path.join(folder, name))
        for case_id, paths in found.items():
            if len(paths) > 1:
                errors.append(f"case {case_id}: more than one file in {sub}: {', '.join(paths)}")
        files[sub] = {case_id: paths[0] for case_id, paths in found.items()}

    cases = []
    for case_id in sorted(set(files["imagesTr"]) & set(files["imagesTs"])):
        errors.append(f"case {case_id}: duplicate case id, in imagesTr ({files['imagesTr'][case_id]}) and imagesTs "
                      f"({files['imagesTs'][case_id]})")
    for case_id in sorted(set(files["labelsTr"]) - set(files["imagesTr"])):
        cases.append(Case(case_id, os.path.join(src, "imagesTr"), [None] * len(CHANNELS), files["labelsTr"][case_id],
                          missing=[os.path.join(src, "imagesTr", f"{case_id}.nii[.gz]")]))
    for sub in ("imagesTr", "imagesTs"):
        for case_id, path in sorted(files[sub].items()):
            if sub == "imagesTs" and case_id in files["imagesTr"]:
                continue
            label = files["labelsTr"].get(case_id) if sub == "imagesTr" else None
            if sub == "imagesTr" and label is None:
                notes.append(f"warning: case {case_id} in imagesTr has no label in labelsTr: it goes to imagesTs")
            cases.append(Case(case_id, os.path.dirname(path), [(path, i) for i in order], label))
    return sorted(cases, key=lambda c: c.case_id), errors, notes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_convert_msd_brain",
        description="Convert MSD Task01_BrainTumour (4D images) to nnU-Net raw format with channels "
                    "T1, T1ce, T2, FLAIR and labels 1 edema, 2 non-enhancing, 3 enhancing.")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> str:
    raw_root = nnunet_folder("nnUNet_raw")
    check_output_outside_source(args.src, raw_root)
    release = RELEASES["msd"]
    name = args.name or release.default_name
    AtomicDatasetFolder(raw_root, args.dataset_id, name, args.overwrite, args.src)  # fail early: id taken, bad name
    if not os.path.isdir(args.src):
        raise ConversionError(f"source folder {args.src} does not exist")

    order = channel_order(args.src)
    cases, errors, notes = discover(args.src, order)
    for note in notes:
        print(note)
    if not cases and not errors:
        raise ConversionError(f"no cases found in {args.src}/imagesTr or imagesTs")
    training = sum(c.is_training for c in cases)
    print(f"found {len(cases)} case(s) in {args.src} ({training} with labels)")
    print(f"release: {release.title} (4D volumes {order[3]}=FLAIR {order[0]}=T1 {order[1]}=T1ce {order[2]}=T2)")
    with Workers(args.num_processes) as workers:
        check_cases(cases, release.source_labels, workers, errors)
        output = AtomicDatasetFolder(raw_root, args.dataset_id, name, args.overwrite, args.src)
        with output as folder:
            write_cases(cases, folder, release.to_ours, workers)
            write_dataset_json(folder, output.name, release, training, len(cases) - training, release.to_ours,
                               converter="nnUNetv2_convert_msd_brain")
    summarise(output.final, cases)
    return output.final


def main() -> None:
    run_main(lambda: convert(parse_args()))


if __name__ == "__main__":
    main()
