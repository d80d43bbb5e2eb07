"""``nnUNetv2_convert_brats``: BraTS 2018-2021 and BraTS 2023/2024 GLI to nnU-Net raw format.

The release is taken from the file names: ``<case>_flair|_t1|_t1ce|_t2|_seg`` is 2018-2021 (the
year from the case-id prefix Brats18_/BraTS19_/BraTS20_/BraTS2021_), ``<case>-t1n|-t1c|-t2w|-t2f|-seg``
is 2023 or 2024 GLI. Those two share their naming, so they are told apart by the labels: label 4
(resection cavity) anywhere means 2024, otherwise 2023; ``--release`` overrides the guess.
"""

from __future__ import annotations

import argparse
import re

from .common import (GLI_NAMING, LEGACY_NAMING, RELEASES, AtomicDatasetFolder, ConversionError, Workers,
                     add_common_arguments, check_cases, check_output_outside_source, discover_named_cases,
                     nnunet_folder, run_main, summarise, write_cases, write_dataset_json)

LEGACY_YEARS = {"2018": r"^brats18_", "2019": r"^brats19_", "2020": r"^brats20_", "2021": r"^brats2021_"}
RELEASE_CHOICES = ("auto", "2018", "2019", "2020", "2021", "2023", "2024")


def legacy_year(case_ids) -> str:
    """2018..2021 from the case-id prefixes; 'legacy' when none is recognised."""
    years = {year for case_id in case_ids for year, prefix in LEGACY_YEARS.items() if re.match(prefix, case_id, re.I)}
    if len(years) > 1:
        raise ConversionError(f"case ids of several releases ({', '.join(sorted(years))}) in one folder; "
                              f"convert them separately or pass --release")
    return years.pop() if years else "legacy"


def gli_release(checks, requested: str) -> tuple:
    """(release key, explanation) for GLI naming: 2024 when label 4 occurs anywhere."""
    with_cavity = sum(4 in c.label_values for c in checks)
    if requested != "auto":
        return requested, f"--release {requested}"
    if with_cavity:
        return "2024", f"label 4 (resection cavity) found in {with_cavity} case(s)"
    return "2023", "no label 4 (resection cavity) in any case; pass --release 2024 for 2024 data without cavities"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_convert_brats",
        description="Convert BraTS 2018/2019/2020/2021 or BraTS 2023/2024 GLI to nnU-Net raw format "
                    "(channels T1, T1ce, T2, FLAIR; labels 1 edema, 2 necrosis/non-enhancing, 3 enhancing).")
    add_common_arguments(parser)
    parser.add_argument("--release", choices=RELEASE_CHOICES, default="auto",
                        help="default auto: from the file names (2018-2021 vs GLI), the case ids (year) and, "
                             "for GLI, the labels (label 4 anywhere -> 2024, else 2023)")
    parser.add_argument("--cavity", choices=("background", "keep"), default="background",
                        help="BraTS 2024 label 4 (resection cavity): 'background' (default) sets it to 0; "
                             "'keep' keeps it as nnU-Net label 4, its own region outside WT/TC/ET")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> str:
    raw_root = nnunet_folder("nnUNet_raw")
    check_output_outside_source(args.src, raw_root)
    # Fail early (id taken, bad name) rather than after reading every case.
    AtomicDatasetFolder(raw_root, args.dataset_id, args.name or "x", args.overwrite, args.src)

    naming, cases, errors, notes = discover_named_cases(args.src)
    for note in notes:
        print(note)
    requested = args.release
    if naming is LEGACY_NAMING:
        if requested in ("2023", "2024"):
            raise ConversionError(f"--release {requested} given, but {args.src} uses {naming.name}")
        key = requested if requested != "auto" else legacy_year(c.case_id for c in cases)
        if any(c.case_id.lower().startswith("fets") for c in cases):
            print("hint: this looks like FeTS; nnUNetv2_convert_fets also writes institution-wise folds")
        allowed = RELEASES[key].source_labels
    else:
        if requested not in ("auto", "2023", "2024"):
            raise ConversionError(f"--release {requested} given, but {args.src} uses {naming.name}")
        if not all(c.case_id.upper().startswith("BRATS-GLI-") for c in cases):
            print("warning: some case ids do not start with BraTS-GLI-; labels are read with the GLI convention")
        key = requested
        allowed = RELEASES["2024" if requested == "auto" else requested].source_labels
    if args.cavity == "keep" and key not in ("auto", "2024"):
        raise ConversionError(f"--cavity keep applies to BraTS 2024 GLI only (this is {RELEASES[key].title})")

    labelled = sum(c.label is not None for c in cases)
    print(f"found {len(cases)} case(s) in {args.src} ({labelled} with labels), naming {naming.name}")
    with Workers(args.num_processes) as workers:
        checks = check_cases(cases, allowed, workers, errors)
        if naming is GLI_NAMING:
            key, why = gli_release(checks, requested)
            if args.cavity == "keep" and key != "2024":
                raise ConversionError(f"--cavity keep applies to BraTS 2024 GLI only; this was taken for "
                                      f"BraTS 2023 GLI ({why})")
        else:
            why = "from the case ids" if requested == "auto" else f"--release {requested}"
        release = RELEASES[key]
        print(f"release: {release.title} ({why})")

        to_ours = dict(release.to_ours)
        keep_cavity = key == "2024" and args.cavity == "keep"
        extra = {}
        if key == "2024":
            extra["cavity"] = args.cavity
            if not keep_cavity:
                to_ours[4] = 0
        output = AtomicDatasetFolder(raw_root, args.dataset_id, args.name or release.default_name, args.overwrite,
                                     args.src)
        with output as folder:
            write_cases(cases, folder, to_ours, workers)
            write_dataset_json(folder, output.name, release, labelled, len(cases) - labelled, to_ours, keep_cavity,
                               converter="nnUNetv2_convert_brats", **extra)
    summarise(output.final, cases)
    return output.final


def main() -> None:
    run_main(lambda: convert(parse_args()))


if __name__ == "__main__":
    main()
