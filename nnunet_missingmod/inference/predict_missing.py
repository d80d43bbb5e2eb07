"""``nnUNetv2_predict_missing``: nnUNetv2_predict for cases whose modality files are absent.

A case may lack some of its ``CASE_XXXX`` files, or the user may declare modalities missing with
``--missing T1ce,FLAIR``; those channels are filled with zeros in memory (a zero raw image stays
exactly zero through nnU-Net's ZScore normalisation, so this equals predicting from all-zero
files). Every case is checked before anything is predicted, from the files' headers: a case with
no modality left, or whose images disagree in geometry, stops the run with a message naming the
file, and nothing is written. Outputs are
written atomically and never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from nnunet_missingmod.inference.cases import CaseError, RawCase, check_case, find_cases, read_case
from nnunet_missingmod.inference.model import add_model_arguments, predictor_from_args
from nnunet_missingmod.modalities import Modalities

REPORT_FILE = "missing_modalities.json"


def plan_cases(input_folder: str, modalities: Modalities, file_ending: str,
               forced_missing: Sequence[int] = (), reader=None) -> list[RawCase]:
    """The cases to predict, each with the channels it will treat as missing. Every case is checked
    here, before anything is predicted (:func:`check_case`): none left without a modality, every
    file readable, the files of a case on one grid."""
    cases = list(find_cases(input_folder, file_ending, modalities).values())
    if not cases:
        raise CaseError(f"no case files (CASE_XXXX{file_ending}) in {input_folder}")
    declared = f"; --missing {','.join(modalities.names[c] for c in forced_missing)}" if forced_missing else ""
    for case in cases:
        case.forced_missing = tuple(forced_missing)
        if len(case.missing(len(modalities))) == len(modalities):
            raise CaseError(f"case {case.case_id}: every modality is missing (files: "
                            f"{', '.join(sorted(case.files.values())) or 'none'}{declared})")
    for case in cases:
        check_case(case, modalities, reader)
    return cases


def predict_missing(predictor, input_folder: str, output_folder: str, missing: Optional[str] = None,
                    overwrite: bool = False, continue_prediction: bool = False, save_probabilities: bool = False,
                    show_progress: bool = True) -> dict[str, list[str]]:
    """Predict every case of ``input_folder``; returns ``{case: [missing modality names]}``."""
    if overwrite and continue_prediction:
        raise ValueError("--overwrite and --continue_prediction exclude each other")
    modalities = Modalities.from_dataset_json(predictor.dataset_json)
    file_ending = predictor.dataset_json["file_ending"]
    forced = modalities.parse_names(missing) if missing else ()
    reader = predictor.plans_manager.image_reader_writer_class()
    cases = plan_cases(input_folder, modalities, file_ending, forced, reader)

    os.makedirs(output_folder, exist_ok=True)
    outputs = {c.case_id: os.path.join(output_folder, c.case_id + file_ending) for c in cases}
    existing = [p for p in outputs.values() if os.path.exists(p)]
    if existing and not (overwrite or continue_prediction):
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} of {len(cases)} outputs do); pass --overwrite "
                              f"to replace them or --continue_prediction to skip them")
    if continue_prediction:
        cases = [c for c in cases if not os.path.exists(outputs[c.case_id])]

    report_path = os.path.join(output_folder, REPORT_FILE)
    report = {}
    if continue_prediction and os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
    for name in ("dataset.json", "plans.json"):
        _write_json_atomically(os.path.join(output_folder, name),
                               predictor.dataset_json if name == "dataset.json" else predictor.plans_manager.plans)

    for case in tqdm(cases, desc="predicting", unit="case", disable=not show_progress):
        data, properties, missing_channels = read_case(case, modalities, reader)
        names = [modalities.names[c] for c in missing_channels]
        tqdm.write(f"{case.case_id}: missing {'+'.join(names) if names else 'nothing'}")
        partial = os.path.join(output_folder, f".partial_{case.case_id}")
        predictor.predict_single_npy_array(data, properties, None, partial, save_probabilities)
        os.replace(partial + file_ending, outputs[case.case_id])
        if save_probabilities:
            os.replace(partial + ".npz", os.path.join(output_folder, case.case_id + ".npz"))
            os.replace(partial + ".pkl", os.path.join(output_folder, case.case_id + ".pkl"))
        report[case.case_id] = names
        _write_json_atomically(report_path, report)
    return report


def _write_json_atomically(path: str, content) -> None:
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(content, f, indent=2, sort_keys=False)
    os.replace(partial, path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_missing",
        description="nnUNetv2_predict for cases with missing modalities: absent channel files (or those named by "
                    "--missing) are zero-filled in memory; no fake files are written.")
    parser.add_argument("-i", dest="input_folder", required=True,
                        help="folder with CASE_XXXX<file_ending> files; a case may lack some channels")
    parser.add_argument("-o", dest="output_folder", required=True, help="output folder")
    parser.add_argument("--missing", default=None,
                        help="modalities to treat as missing in every case, by name (aliases allowed), "
                             "comma separated, e.g. T1ce,FLAIR")
    parser.add_argument("--save_probabilities", action="store_true", help="also write .npz probabilities")
    parser.add_argument("--continue_prediction", "--c", action="store_true", help="skip cases already predicted")
    parser.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        predictor = predictor_from_args(args)
        report = predict_missing(predictor, args.input_folder, args.output_folder, args.missing, args.overwrite,
                                 args.continue_prediction, args.save_probabilities)
    except (CaseError, FileExistsError, FileNotFoundError, ValueError) as e:
        sys.exit(f"nnUNetv2_predict_missing: error: {e}")
    print(f"{len(report)} cases predicted into {args.output_folder} (missing modalities per case: "
          f"{os.path.join(args.output_folder, REPORT_FILE)})")


if __name__ == "__main__":
    main()
