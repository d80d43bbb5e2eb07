"""``nnUNetv2_convert_fets``: FeTS 2022/2024 to nnU-Net raw format, optionally with folds that hold
out whole institutions.

FeTS uses the BraTS 2020 naming (``FeTS2022_XXXXX_flair|_t1|_t1ce|_t2|_seg``) and labels 0/1/2/4.
With ``--partitioning partitioning_1.csv`` (or _2) the partitions (institutions) are dealt to 5 folds
so that nnU-Net's cross-validation never sees an institution in both train and val: partitions by
decreasing case count (ties: lower Partition_ID first), each to the fold with the fewest cases so
far (ties: lower fold). ``Partition_ID -1`` (FeTS validation subjects) go to imagesTs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import Counter

from .common import (LEGACY_NAMING, RELEASES, AtomicDatasetFolder, ConversionError, Workers, add_common_arguments,
                     check_cases, check_output_outside_source, discover_named_cases, nnunet_folder, raise_for_errors,
                     run_main, summarise, write_cases, write_dataset_json, write_json_atomic)

NUM_FOLDS = 5
VALIDATION_PARTITION = -1


def read_partitioning(path: str) -> dict:
    """Subject_ID -> Partition_ID from a FeTS partitioning CSV (header ``Partition_ID,Subject_ID``)."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise ConversionError(f"cannot read partitioning file {path}: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if "Partition_ID" not in header or "Subject_ID" not in header:
            raise ConversionError(f"{path}: expected the header Partition_ID,Subject_ID, found {','.join(header)}")
        pi, si = header.index("Partition_ID"), header.index("Subject_ID")
        partition_of = {}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                subject, partition = row[si].strip(), int(row[pi])
            except (IndexError, ValueError):
                raise ConversionError(f"{path} line {line}: cannot read {','.join(row)!r}") from None
            if subject in partition_of:
                raise ConversionError(f"{path} line {line}: subject {subject} is listed twice")
            partition_of[subject] = partition
    return partition_of


def assign_folds(partition_of: dict, num_folds: int = NUM_FOLDS) -> tuple:
    """Deal whole partitions to folds, largest first, each to the fold with the fewest cases.

    ``partition_of``: training case id -> Partition_ID. Returns (splits, partitions per fold), splits in
    nnU-Net's splits_final.json format. Deterministic: depends only on the case ids and partitions."""
    sizes = Counter(partition_of.values())
    if len(sizes) < num_folds:
        raise ConversionError(f"{len(sizes)} partition(s) with training cases, need at least {num_folds} "
                              f"to hold out whole institutions in {num_folds} folds")
    fold_cases, fold_partitions = [0] * num_folds, [[] for _ in range(num_folds)]
    for partition in sorted(sizes, key=lambda p: (-sizes[p], p)):
        fold = min(range(num_folds), key=lambda i: (fold_cases[i], i))
        fold_cases[fold] += sizes[partition]
        fold_partitions[fold].append(partition)
    splits = []
    for partitions in fold_partitions:
        held_out = set(partitions)
        splits.append({"train": sorted(c for c, p in partition_of.items() if p not in held_out),
                       "val": sorted(c for c, p in partition_of.items() if p in held_out)})
    return splits, fold_partitions


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_convert_fets",
        description="Convert FeTS 2022/2024 to nnU-Net raw format; with --partitioning, also write "
                    "splits_final.json whose 5 folds hold out whole institutions.")
    add_common_arguments(parser)
    parser.add_argument("--partitioning", default=None,
                        help="partitioning_1.csv or partitioning_2.csv (Partition_ID,Subject_ID); Partition_ID -1 "
                             "subjects go to imagesTs")
    parser.add_argument("--ignore-missing-subjects", action="store_true",
                        help="warn instead of failing when subjects of the CSV are not in SRC")
    return parser.parse_args(argv)


def plan_partitions(cases, partitioning: str, ignore_missing: bool) -> tuple:
    """Apply the CSV to the cases (Partition_ID -1 -> imagesTs) and compute the folds."""
    partition_of = read_partitioning(partitioning)
    present = {c.case_id for c in cases}
    missing = sorted(set(partition_of) - present)
    if missing:
        message = (f"{len(missing)} subject(s) of {partitioning} are not in the source folder: "
                   f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if not ignore_missing:
            raise ConversionError(message + " (pass --ignore-missing-subjects to convert the others)")
        print(f"warning: {message}; folds are built from the subjects present")
    errors, training = [], {}
    for case in cases:
        partition = partition_of.get(case.case_id)
        if partition == VALIDATION_PARTITION:
            case.to_test = True
        elif case.label is None:
            if partition is not None:
                print(f"warning: case {case.case_id} (partition {partition}) has no label: imagesTs, in no fold")
        elif partition is None:
            errors.append(f"case {case.case_id}: has a label ({case.label}) but is not in {partitioning}, "
                          f"so it cannot be given an institution")
        else:
            training[case.case_id] = partition
    raise_for_errors(errors)
    return assign_folds(training)


def convert(args: argparse.Namespace) -> str:
    raw_root = nnunet_folder("nnUNet_raw")
    preprocessed_root = nnunet_folder("nnUNet_preprocessed") if args.partitioning else None
    check_output_outside_source(args.src, raw_root)
    release = RELEASES["fets"]
    name = args.name or release.default_name
    AtomicDatasetFolder(raw_root, args.dataset_id, name, args.overwrite, args.src)  # fail early: id taken, bad name

    naming, cases, errors, notes = discover_named_cases(args.src, (LEGACY_NAMING,))
    for note in notes:
        print(note)
    splits = fold_partitions = splits_target = None
    if args.partitioning:
        splits, fold_partitions = plan_partitions(cases, args.partitioning, args.ignore_missing_subjects)
        splits_target = os.path.join(preprocessed_root, f"Dataset{args.dataset_id:03d}_{name}", "splits_final.json")
        if os.path.isfile(splits_target) and not args.overwrite:
            with open(splits_target) as f:
                if json.load(f) != splits:
                    raise ConversionError(f"{splits_target} exists with other folds; pass --overwrite to replace it")
    training = sum(c.is_training for c in cases)
    print(f"found {len(cases)} case(s) in {args.src} ({training} for training), naming {naming.name}")
    print(f"release: {release.title}")

    with Workers(args.num_processes) as workers:
        check_cases(cases, release.source_labels, workers, errors)
        output = AtomicDatasetFolder(raw_root, args.dataset_id, name, args.overwrite, args.src)
        with output as folder:
            write_cases(cases, folder, release.to_ours, workers)
            extra = {}
            if splits is not None:
                extra = {"partitioning": os.path.basename(args.partitioning), "fold_partitions": fold_partitions}
                # nnU-Net's planner copies a raw splits_final.json to nnUNet_preprocessed too.
                write_json_atomic(splits, os.path.join(folder, "splits_final.json"))
            write_dataset_json(folder, output.name, release, training, len(cases) - training, release.to_ours,
                               converter="nnUNetv2_convert_fets", **extra)
    if splits is not None:
        write_json_atomic(splits, splits_target)
        for fold, (split, partitions) in enumerate(zip(splits, fold_partitions)):
            print(f"fold {fold}: val = partitions {partitions} ({len(split['val'])} cases), "
                  f"train = {len(split['train'])} cases")
        print(f"wrote {splits_target}")
    summarise(output.final, cases)
    return output.final


def main() -> None:
    run_main(lambda: convert(parse_args()))


if __name__ == "__main__":
    main()
