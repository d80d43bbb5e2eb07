"""``nnUNetv2_evaluate_missing``: a trained model scored under every subset of modalities.

Each labelled test case is read and preprocessed once; for each subset the missing channels of
the preprocessed tensor are set to zero (equal to zero-filled raw files under ZScore / no
normalisation, which preserve zero; other schemes are preprocessed again per subset), predicted
with nnU-Net's predictor, brought back to the original geometry and scored per region (Dice,
HD95 in mm). Writes per-case CSV, summary JSON, a Markdown table in the papers' layout and a heat
map (see ``reports``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_missingmod.inference.cases import (CaseError, attach_labels, check_case, find_cases, read_case,
                                               read_label)
from nnunet_missingmod.inference.figures import case_figure
from nnunet_missingmod.inference.metrics import region_metrics, regions_from_dataset_json
from nnunet_missingmod.inference.model import add_model_arguments, predictor_from_args
from nnunet_missingmod.inference.reports import write_reports
from nnunet_missingmod.modalities import Modalities

# Normalisation schemes that map an all-zero channel to an all-zero channel.
ZERO_PRESERVING_NORMALIZATIONS = {"ZScoreNormalization", "NoNormalization"}
SUMMARY_FILE = "summary.json"


def default_label_folder(image_folder: str) -> str:
    """``.../imagesTs`` -> ``.../labelsTs`` (nnU-Net's layout)."""
    parent, name = os.path.split(os.path.normpath(image_folder))
    return os.path.join(parent, name.replace("images", "labels", 1))


def evaluate_missing(predictor, image_folder: str, label_folder: str, output_folder: str,
                     subsets: Optional[Sequence[str]] = None, save_predictions: bool = False,
                     overwrite: bool = False, show_progress: bool = True, figures: int = 0) -> dict:
    """Score ``predictor`` on every case of ``image_folder`` under each subset; returns the summary.

    ``figures``: for the first ``figures`` cases, a picture of the modalities, the reference and
    the prediction under each subset (``figures/<case>.png``, :mod:`.figures`).
    """
    dataset_json = predictor.dataset_json
    modalities = Modalities.from_dataset_json(dataset_json)
    file_ending = dataset_json["file_ending"]
    subset_indices = [modalities.parse_subset(s) for s in subsets] if subsets else modalities.subsets()
    subset_indices = list(dict.fromkeys(subset_indices))
    subset_names = [modalities.subset_name(s) for s in subset_indices]
    regions = regions_from_dataset_json(dataset_json)

    if os.path.isfile(os.path.join(output_folder, SUMMARY_FILE)) and not overwrite:
        raise FileExistsError(f"{os.path.join(output_folder, SUMMARY_FILE)} exists; pass --overwrite to replace "
                              f"the evaluation in {output_folder}")
    cases = find_cases(image_folder, file_ending, modalities)
    if not cases:
        raise CaseError(f"no case files (CASE_XXXX{file_ending}) in {image_folder}")
    for case in cases.values():
        if case.missing(len(modalities)):
            absent = ", ".join(modalities.names[c] for c in case.missing(len(modalities)))
            raise CaseError(f"case {case.case_id} lacks {absent} in {image_folder}; the evaluation removes "
                            f"modalities itself and needs every test case complete")
    attach_labels(cases, label_folder, file_ending)

    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    reader = plans_manager.image_reader_writer_class()
    for case in cases.values():  # every case, label included, before anything runs
        check_case(case, modalities, reader)
    preprocess_once = set(configuration_manager.normalization_schemes) <= ZERO_PRESERVING_NORMALIZATIONS

    def preprocess(raw: np.ndarray, properties: dict):
        data, _, properties = preprocessor.run_case_npy(raw, None, copy.deepcopy(properties), plans_manager,
                                                        configuration_manager, dataset_json)
        return torch.from_numpy(data), properties

    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    records = []
    progress = tqdm(total=len(cases) * len(subset_indices), desc="evaluating", unit="prediction",
                    disable=not show_progress)
    figure_cases = set(sorted(cases)[:figures])
    for case in cases.values():
        raw, raw_properties, _ = read_case(case, modalities, reader)
        pictured = {}
        reference, label_properties = read_label(case, reader, raw.shape[1:])
        if preprocess_once:
            full, properties = preprocess(raw, raw_properties)
        for subset, subset_name in zip(subset_indices, subset_names):
            progress.set_postfix_str(f"{case.case_id} {subset_name}")
            missing = [c for c in range(len(modalities)) if c not in subset]
            if preprocess_once:
                data = full.clone()
                data[missing] = 0
            else:
                masked = raw.copy()
                masked[missing] = 0
                data, properties = preprocess(masked, raw_properties)
            logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
            prediction = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, plans_manager, configuration_manager, predictor.label_manager, properties,
                return_probabilities=False)
            if save_predictions:
                folder = os.path.join(output_folder, "predictions", subset_name)
                os.makedirs(folder, exist_ok=True)
                reader.write_seg(prediction, os.path.join(folder, case.case_id + file_ending), raw_properties)
            if case.case_id in figure_cases:
                pictured[subset_name] = prediction
            scores = region_metrics(prediction, reference, regions, label_properties["spacing"])
            for region, values in scores.items():
                records.append({"case": case.case_id, "subset": subset_name, "region": region, **values})
            progress.update()
        if pictured:
            case_figure(raw, modalities.names, reference, pictured, dataset_json,
                        os.path.join(output_folder, "figures", f"{case.case_id}.png"),
                        title=f"{predictor.trainer_name}: {case.case_id}")
    progress.close()
    title = f"{predictor.trainer_name} on {os.path.basename(os.path.normpath(image_folder))} ({len(cases)} cases)"
    return write_reports(records, subset_names, list(regions), output_folder, title=title)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_evaluate_missing",
        description="Evaluate a trained nnU-Net model under every non-empty subset of its modalities: "
                    "per-case Dice and HD95 per region, a summary, a Markdown table and a heat map.")
    parser.add_argument("-i", dest="image_folder", required=True, help="test images (every modality present)")
    parser.add_argument("-l", dest="label_folder", default=None,
                        help="reference segmentations (default: the labels folder beside -i, e.g. labelsTs)")
    parser.add_argument("-o", dest="output_folder", required=True, help="where the reports go")
    parser.add_argument("--subsets", nargs="+", default=None,
                        help="only these subsets, e.g. T1ce+FLAIR T2 all (default: all 2^M-1)")
    parser.add_argument("--save_predictions", action="store_true", help="also write every prediction")
    parser.add_argument("--figures", type=int, default=0, metavar="K",
                        help="a picture of each of the first K cases under every subset (figures/<case>.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing evaluation")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    label_folder = args.label_folder or default_label_folder(args.image_folder)
    try:
        predictor = predictor_from_args(args)
        evaluate_missing(predictor, args.image_folder, label_folder, args.output_folder, args.subsets,
                         args.save_predictions, args.overwrite, figures=args.figures)
    except (CaseError, FileExistsError, FileNotFoundError, ValueError) as e:
        sys.exit(f"nnUNetv2_evaluate_missing: error: {e}")
    with open(os.path.join(args.output_folder, "table.md")) as f:
        print(f.read())
    print(f"reports in {args.output_folder}: per_case.csv, summary.json, table.md, heatmap.png")


if __name__ == "__main__":
    main()
