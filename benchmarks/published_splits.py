"""nnU-Net folds and test folders from published case lists, so that our models are trained and
scored on the cases the papers used.

    python benchmarks/published_splits.py folds -d 518 --lists rfnet_brats2018 [--overwrite]
    python benchmarks/published_splits.py test-folder -d 518 --lists rfnet_brats2018 --fold 0 -o DIR
    python benchmarks/published_splits.py test-folder -d 525 --fold 0 -o DIR

``--lists`` is a folder of case lists (one case id per line): ``train.txt``, ``val.txt``,
``test.txt`` for one split, or ``train1.txt``, ``val1.txt``, ``test1.txt``, ``train2.txt``, ... for
several; split k becomes nnU-Net fold k-1. Built in (``benchmarks/splits/``, provenance in its
README): ``rfnet_brats2018`` (RFNet's three splits, 199/29/57 cases) and ``rfnet_brats2020``
(219/50/100). Any other folder in that layout works the same.

``folds`` writes nnU-Net's ``splits_final.json`` (fold k: ``train`` = train list, ``val`` = val list;
the test list is never trained on) into ``$nnUNet_preprocessed/DatasetXXX_NAME/`` and the raw
dataset folder, as ``nnUNetv2_convert_fets --partitioning`` does for FeTS (use that for FeTS: it
already holds out whole institutions). ``test-folder`` links the cases to score into
``DIR/imagesTs`` and ``DIR/labelsTs`` for ``nnUNetv2_evaluate_missing -i DIR/imagesTs``: the test
list of a split, or without ``--lists`` the ``val`` cases of a fold of ``splits_final.json``
(FeTS institution folds, nnU-Net's own 5-fold split of BraTS 2024). The cases stay in ``imagesTr``:
RFNet's three test sets overlap, so one dataset serves all three splits.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil

from nnunet_missingmod.dataset_conversion.common import ConversionError, nnunet_folder, run_main, write_json_atomic

BUILT_IN_LISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
LIST_KINDS = ("train", "val", "test")
# RFNet's preprocessed BraTS 2020 names carry the grade: HG_BraTS20_Training_001.
GRADE_PREFIX = re.compile(r"^(HG|LG)_")


def find_dataset(dataset: str) -> str:
    """``$nnUNet_raw/DatasetXXX_NAME`` from an id (``518``) or a full name."""
    raw = nnunet_folder("nnUNet_raw")
    if dataset.isdigit():
        matches = sorted(glob.glob(os.path.join(raw, f"Dataset{int(dataset):03d}_*")))
    else:
        matches = [os.path.join(raw, dataset)] if os.path.isdir(os.path.join(raw, dataset)) else []
    matches = [m for m in matches if os.path.isdir(m)]
    if len(matches) != 1:
        raise ConversionError(f"dataset {dataset}: {'no folder' if not matches else 'several folders'} in {raw}"
                              + (f" ({', '.join(matches)})" if matches else ""))
    return matches[0]


def read_dataset(folder: str) -> tuple[dict, list]:
    """(dataset.json, training case ids from labelsTr)."""
    path = os.path.join(folder, "dataset.json")
    try:
        with open(path, encoding="utf-8") as f:
            dataset_json = json.load(f)
    except OSError:
        raise ConversionError(f"{path} is missing; convert the dataset first") from None
    ending = dataset_json["file_ending"]
    labels = os.path.join(folder, "labelsTr")
    if not os.path.isdir(labels):
        raise ConversionError(f"{labels} is missing")
    cases = sorted(name[:-len(ending)] for name in os.listdir(labels) if name.endswith(ending))
    return dataset_json, cases


def list_folder(lists: str) -> str:
    """A folder of case lists: a path, or the name of a built-in one."""
    if os.path.isdir(lists):
        return lists
    built_in = os.path.join(BUILT_IN_LISTS, lists)
    if os.path.sep not in lists and os.path.isdir(built_in):
        return built_in
    names = sorted(d for d in os.listdir(BUILT_IN_LISTS) if os.path.isdir(os.path.join(BUILT_IN_LISTS, d)))
    raise ConversionError(f"--lists {lists}: no such folder, and not a built-in list ({', '.join(names)})")


def read_case_list(path: str) -> list:
    """One case id per line; blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def read_splits(folder: str) -> list[dict]:
    """``[{"train": [...], "val": [...], "test": [...]}, ...]``, split 1 first."""
    if all(os.path.isfile(os.path.join(folder, f"{kind}.txt")) for kind in LIST_KINDS):
        numbers = [""]
    else:
        numbers = sorted({m.group(1) for name in os.listdir(folder) if (m := re.fullmatch(r"train(\d+)\.txt", name))},
                         key=int)
    if not numbers:
        raise ConversionError(f"{folder} holds no train.txt/val.txt/test.txt nor train1.txt/val1.txt/test1.txt ...")
    splits = []
    for number in numbers:
        split = {}
        for kind in LIST_KINDS:
            path = os.path.join(folder, f"{kind}{number}.txt")
            if not os.path.isfile(path):
                raise ConversionError(f"{path} is missing: every split needs a train, a val and a test list")
            split[kind] = read_case_list(path)
            repeated = sorted({c for c in split[kind] if split[kind].count(c) > 1})
            if repeated:
                raise ConversionError(f"{path} lists {', '.join(repeated)} more than once")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(split[a]) & set(split[b]))
            if shared:
                raise ConversionError(f"split {number or 1} of {folder}: {len(shared)} case(s) in both {a} and {b}: "
                                      f"{', '.join(shared[:5])}")
        splits.append(split)
    return splits


def match_cases(names: list, cases: list, where: str) -> list:
    """List names -> the dataset's case ids (a grade prefix HG_/LG_ is dropped if needed)."""
    known, matched, unknown = set(cases), [], []
    for name in names:
        if name in known:
            matched.append(name)
        elif GRADE_PREFIX.sub("", name) in known:
            matched.append(GRADE_PREFIX.sub("", name))
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(f"{len(unknown)} case(s) of {where} are not training cases of the dataset: "
                              f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
    return matched


def splits_for_dataset(lists: str, cases: list) -> list[dict]:
    folder = list_folder(lists)
    splits = read_splits(folder)
    return [{kind: match_cases(split[kind], cases, f"{folder} {kind} list of split {k + 1}") for kind in LIST_KINDS}
            for k, split in enumerate(splits)]


def write_folds(dataset: str, lists: str, overwrite: bool) -> str:
    """Write splits_final.json (one fold per split: train and val lists) for the dataset."""
    raw_folder = find_dataset(dataset)
    _, cases = read_dataset(raw_folder)
    splits = splits_for_dataset(lists, cases)
    folds = [{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in splits]
    target = os.path.join(nnunet_folder("nnUNet_preprocessed"), os.path.basename(raw_folder), "splits_final.json")
    if os.path.isfile(target):
        with open(target) as f:
            if json.load(f) != folds and not overwrite:
                raise ConversionError(f"{target} exists with other folds; pass --overwrite to replace it (models "
                                      f"trained on the old folds no longer match their fold numbers)")
    # nnU-Net's planner copies a raw splits_final.json to nnUNet_preprocessed, so both must agree.
    write_json_atomic(folds, os.path.join(raw_folder, "splits_final.json"))
    write_json_atomic(folds, target)
    for k, split in enumerate(splits):
        unused = len(cases) - sum(len(split[kind]) for kind in LIST_KINDS)
        print(f"fold {k}: train {len(split['train'])}, val {len(split['val'])} (split {k + 1}; its "
              f"{len(split['test'])} test cases are trained on by no fold-{k} model)"
              + (f"; {unused} training case(s) of the dataset are in none of its lists" if unused else ""))
    print(f"wrote {target}")
    return target


def cases_to_score(dataset: str, raw_folder: str, cases: list, fold: int, lists: str | None) -> list:
    if lists is not None:
        splits = splits_for_dataset(lists, cases)
        if not 0 <= fold < len(splits):
            raise ConversionError(f"--fold {fold}: {lists} has {len(splits)} split(s), folds 0-{len(splits) - 1}")
        return splits[fold]["test"]
    for folder in (os.path.join(nnunet_folder("nnUNet_preprocessed"), os.path.basename(raw_folder)), raw_folder):
        path = os.path.join(folder, "splits_final.json")
        if os.path.isfile(path):
            with open(path) as f:
                folds = json.load(f)
            if not 0 <= fold < len(folds):
                raise ConversionError(f"--fold {fold}: {path} has {len(folds)} folds")
            return match_cases(folds[fold]["val"], cases, f"{path} fold {fold}")
    raise ConversionError(f"dataset {dataset} has no splits_final.json yet: pass --lists, convert FeTS with "
                          f"--partitioning, or train fold 0 once (nnU-Net then writes its 5-fold split)")


def make_test_folder(dataset: str, fold: int, output: str, lists: str | None = None, copy: bool = False,
                     overwrite: bool = False) -> list:
    """Link (or copy) the images and labels of the cases to score into OUTPUT/imagesTs, OUTPUT/labelsTs."""
    raw_folder = find_dataset(dataset)
    dataset_json, cases = read_dataset(raw_folder)
    chosen = cases_to_score(dataset, raw_folder, cases, fold, lists)
    ending, channels = dataset_json["file_ending"], len(dataset_json["channel_names"])
    images, labels = os.path.join(output, "imagesTs"), os.path.join(output, "labelsTs")
    for folder in (images, labels):
        if os.path.isdir(folder) and os.listdir(folder):
            if not overwrite:
                raise ConversionError(f"{folder} is not empty; pass --overwrite to replace it")
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
    sources = []
    for case in chosen:
        sources += [(os.path.join(raw_folder, "imagesTr", f"{case}_{c:04d}{ending}"), images) for c in range(channels)]
        sources.append((os.path.join(raw_folder, "labelsTr", case + ending), labels))
    absent = [src for src, _ in sources if not os.path.isfile(src)]
    if absent:
        raise ConversionError(f"{len(absent)} file(s) missing from {raw_folder}: {', '.join(absent[:5])}")
    for src, folder in sources:
        target = os.path.join(folder, os.path.basename(src))
        if copy:
            shutil.copy2(src, target)
        else:
            os.symlink(os.path.abspath(src), target)
    print(f"{'copied' if copy else 'linked'} {len(chosen)} case(s) into {images} and {labels}")
    print(f"score them with: nnUNetv2_evaluate_missing -d {dataset} -c 3d_fullres -tr TRAINER -f {fold} "
          f"-i {images} -o EVAL_FOLDER")
    return chosen


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    folds = commands.add_parser("folds", help="write splits_final.json from case lists (split k -> fold k-1)")
    folds.add_argument("-d", dest="dataset", required=True, help="dataset id or name (in $nnUNet_raw)")
    folds.add_argument("--lists", required=True, help="a folder of case lists, or rfnet_brats2018 / rfnet_brats2020")
    folds.add_argument("--overwrite", action="store_true",
                       help="replace an existing splits_final.json with other folds")
    test = commands.add_parser("test-folder", help="link the cases to score into DIR/imagesTs and DIR/labelsTs")
    test.add_argument("-d", dest="dataset", required=True, help="dataset id or name (in $nnUNet_raw)")
    test.add_argument("--fold", type=int, required=True, help="the fold (split k is fold k-1)")
    test.add_argument("-o", dest="output", required=True, help="DIR to create imagesTs/ and labelsTs/ in")
    test.add_argument("--lists", default=None,
                      help="take the test list of the split; without it, the val cases of the fold in "
                           "splits_final.json")
    test.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    test.add_argument("--overwrite", action="store_true", help="replace DIR/imagesTs and DIR/labelsTs")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "folds":
        run_main(lambda: write_folds(args.dataset, args.lists, args.overwrite))
    else:
        run_main(lambda: make_test_folder(args.dataset, args.fold, args.output, args.lists, args.copy, args.overwrite))


if __name__ == "__main__":
    main()
