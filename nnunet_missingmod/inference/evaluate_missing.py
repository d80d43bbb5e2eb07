"""``nnUNetv2_evaluate_missing``: a trained model scored under every subset of modalities.

Each labelled test case is read and preprocessed once; for each subset the missing channels of
the preprocessed tensor are set to zero (equal to zero-filled raw files under ZScore / no
normalisation, which preserve zero; other schemes are preprocessed again per subset) and
predicted with nnU-Net's predictor. Bringing the logits back to the original geometry, saving and
scoring (``scoring``: legacy Dice/HD95, ETpp, lesion-wise; ``calibration``: ECE and Brier score
of each region's probability) run in worker processes while the device predicts the next subset.
Each case's scores are saved as soon as it is done (``records``), so an interrupted run
continues and a run split into parts is merged; the reports (``reports``) are written from the
records.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import copy
import multiprocessing
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_missingmod.inference import hausdorff
from nnunet_missingmod.inference.calibration import calibration_scores, region_probabilities
from nnunet_missingmod.inference.cases import (CaseError, attach_labels, check_case, check_case_data, check_labels,
                                               defined_label_values, find_cases, read_case, read_label)
from nnunet_missingmod.inference.figures import case_figure
from nnunet_missingmod.inference.metrics import regions_from_dataset_json
from nnunet_missingmod.inference.model import add_model_arguments, predictor_from_args
from nnunet_missingmod.inference.records import (EvaluationFolder, EvaluationStateError, check_part,
                                                 merged_records, test_set_digest, weights_digest)
from nnunet_missingmod.inference.reports import write_reports
from nnunet_missingmod.inference.scoring import (Conventions, enhancing_region, etpp_threshold_note, score_prediction,
                                                 scored_regions)
from nnunet_missingmod.modalities import Modalities

# Normalisation schemes that map an all-zero channel to an all-zero channel.
ZERO_PRESERVING_NORMALIZATIONS = {"ZScoreNormalization", "NoNormalization"}


def default_label_folder(image_folder: str) -> str:
    """``.../imagesTs`` -> ``.../labelsTs`` (nnU-Net's layout)."""
    parent, name = os.path.split(os.path.normpath(image_folder))
    return os.path.join(parent, name.replace("images", "labels", 1))


class _InProcess:
    """The executor for ``num_workers=0``: each job runs when it is submitted."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:
            future.set_exception(e)
        return future

    def shutdown(self, cancel_futures: bool = False):
        pass


class ExportAndScore:
    """The CPU half of an evaluation step: logits -> segmentation in the original geometry ->
    scores (and the file, with ``save_to``). It runs in a worker while the device predicts the
    next subset, and is sent to each worker once: nnU-Net's plans and configuration managers cache
    their lookups (reader, resampling functions: a walk over nnU-Net's modules) per object, so a
    manager unpickled with every job would repeat the walk every time."""

    def __init__(self, plans_manager, configuration_manager, label_manager, regions: dict, conventions: Conventions):
        self.plans_manager, self.configuration_manager, self.label_manager = (
            plans_manager, configuration_manager, label_manager)
        self.regions, self.conventions = regions, conventions

    def __call__(self, logits: torch.Tensor, properties: dict, reference: np.ndarray, brain: np.ndarray, spacing,
                 save_to: Optional[str], keep: bool):
        """``(scores, segmentation if keep else None)``; ``brain``: the voxels calibration counts."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        # One torch thread, whatever nnUNet_def_n_proc says (nnU-Net runs this step in that many): torch's
        # sigmoid splits the volume into a chunk per thread, and a chunk's tail, computed by scalar
        # code, can differ in the last bit from the vectorised code. Measured on the test suite's
        # cases: 0-3 of 177,660 probabilities differ between 1 and 2 threads, 0-6 between 1 and 8.
        # With one thread a score does not depend on the process, node or setting that exported it.
        segmentation, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties,
            return_probabilities=True, num_threads_torch=1)
        if save_to is not None:
            folder, name = os.path.split(save_to)
            os.makedirs(folder, exist_ok=True)
            partial = os.path.join(folder, ".partial_" + name)
            self.plans_manager.image_reader_writer_class().write_seg(segmentation, partial, properties)
            os.replace(partial, save_to)
        scores = score_prediction(segmentation, reference, self.regions, spacing, self.conventions)
        probability_of = region_probabilities(probabilities, self.regions, self.label_manager)
        del probabilities
        for name in scores:  # ETpp post-processes the segmentation, not the probabilities: no calibration
            scores[name].update({"ece": None, "brier": None, "bins": None} if name not in probability_of else
                                calibration_scores(probability_of[name], np.isin(reference, self.regions[name]),
                                                   brain, self.conventions.calibration_bins))
        return scores, (segmentation if keep else None)


_worker_job: Optional[ExportAndScore] = None


def _start_worker(job: ExportAndScore) -> None:
    """A worker's one-time set-up: its job, and one torch thread (it runs beside the predicting
    process; with torch's default of a thread per core, their threads would contend for the cores)."""
    global _worker_job
    torch.set_num_threads(1)
    _worker_job = job


def _run_in_worker(*args):
    return _worker_job(*args)


def evaluation_identity(predictor, subsets: Sequence[str], regions: dict, conventions: Conventions,
                        cases: dict, data_digest: str, save_predictions: bool, figures: int) -> dict:
    """Everything a score, or a file a case writes, depends on (see :mod:`.records`)."""
    return {"trainer": predictor.trainer_name, "plans": predictor.plans_manager.plans_name,
            "configuration": predictor.configuration_manager.configuration,
            "weights": weights_digest(predictor.list_of_parameters), "networks": len(predictor.list_of_parameters),
            "mirroring": bool(predictor.use_mirroring), "step_size": float(predictor.tile_step_size),
            "subsets": list(subsets), "regions": {k: list(v) for k, v in regions.items()},
            "conventions": conventions.as_dict(), "cases": sorted(cases), "data": data_digest,
            "outputs": {"save_predictions": bool(save_predictions), "figures": sorted(cases)[:figures]}}


def check_inputs(cases: dict, modalities: Modalities, reader, defined_labels: set[int], check_data: bool,
                 num_threads: int) -> None:
    """The pre-pass: every case's headers (one grid, a label), then, with ``check_data``, every
    file decoded and checked (:func:`.cases.check_case_data`), in threads; the first bad case
    stops the run, before anything is written."""
    for case in cases.values():
        check_case(case, modalities, reader)
    if not check_data:
        return
    with concurrent.futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
        checks = [pool.submit(check_case_data, case, modalities, reader, defined_labels) for case in cases.values()]
        try:
            for check in checks:
                check.result()
        finally:
            for check in checks:
                check.cancel()


def evaluate_missing(predictor, image_folder: str, label_folder: str, output_folder: str,
                     subsets: Optional[Sequence[str]] = None, save_predictions: bool = False,
                     overwrite: bool = False, show_progress: bool = True, figures: int = 0,
                     continue_evaluation: bool = False, num_parts: int = 1, part_id: int = 0,
                     num_workers: int = 0, conventions: Conventions = Conventions(),
                     check_data: bool = True) -> Optional[dict]:
    """Score ``predictor`` on every case of ``image_folder`` (or part ``part_id`` of ``num_parts``)
    under each subset; returns the summary, or None for one part of several (merge them with
    :func:`merge_evaluation`).

    ``figures``: for the first ``figures`` cases, a picture of the modalities, the reference and
    the prediction under each subset (``figures/<case>.png``, :mod:`.figures`). ``num_workers``:
    processes that export, save and score while the device predicts (0: in this process).
    ``check_data``: decode and check every file of this part's cases before anything is written
    (otherwise headers before, contents when each case is reached).
    """
    dataset_json = predictor.dataset_json
    modalities = Modalities.from_dataset_json(dataset_json)
    file_ending = dataset_json["file_ending"]
    subset_indices = [modalities.parse_subset(s) for s in subsets] if subsets else modalities.subsets()
    subset_indices = list(dict.fromkeys(subset_indices))
    subset_names = [modalities.subset_name(s) for s in subset_indices]
    regions = regions_from_dataset_json(dataset_json)
    check_part(num_parts, part_id)  # before any reading

    all_cases = find_cases(image_folder, file_ending, modalities)
    if not all_cases:
        raise CaseError(f"no case files (CASE_XXXX{file_ending}) in {image_folder}")
    for case in all_cases.values():
        if case.missing(len(modalities)):
            absent = ", ".join(modalities.names[c] for c in case.missing(len(modalities)))
            raise CaseError(f"case {case.case_id} lacks {absent} in {image_folder}; the evaluation removes "
                            f"modalities itself and needs every test case complete")
    attach_labels(all_cases, label_folder, file_ending)
    threads = max(num_workers, 2)
    data_digest = test_set_digest({c: [*case.files.values(), case.label_file] for c, case in all_cases.items()},
                                  threads)
    identity = evaluation_identity(predictor, subset_names, scored_regions(regions), conventions, all_cases,
                                   data_digest, save_predictions, figures)
    folder = EvaluationFolder(output_folder, identity, list(all_cases), num_parts, part_id,
                              title=os.path.basename(os.path.normpath(image_folder)))
    cases = {c: all_cases[c] for c in folder.cases}
    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    reader = plans_manager.image_reader_writer_class()
    defined_labels = defined_label_values(dataset_json)
    check_inputs(cases, modalities, reader, defined_labels, check_data, threads)  # before anything is written
    todo = folder.open(overwrite, continue_evaluation)

    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    preprocess_once = set(configuration_manager.normalization_schemes) <= ZERO_PRESERVING_NORMALIZATIONS

    def preprocess(raw: np.ndarray, properties: dict):
        data, _, properties = preprocessor.run_case_npy(raw, None, copy.deepcopy(properties), plans_manager,
                                                        configuration_manager, dataset_json)
        return torch.from_numpy(data), properties

    figure_cases = set(sorted(all_cases)[:figures])
    job = ExportAndScore(plans_manager, configuration_manager, predictor.label_manager, regions, conventions)
    if num_workers > 0:
        executor = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                                          initializer=_start_worker, initargs=(job,))
        job_function = _run_in_worker
    else:
        executor, job_function = _InProcess(), job
    in_flight: collections.deque = collections.deque()  # (case, raw or None, reference or None, {subset: future})
    progress = tqdm(total=len(folder.cases) * len(subset_indices), initial=(len(folder.cases) - len(todo)) *
                    len(subset_indices), desc="evaluating", unit="prediction", disable=not show_progress)

    def finish_cases(wait_for_all: bool) -> None:
        """Record every finished case at the head of the queue (all of them when ``wait_for_all``)."""
        while in_flight and (wait_for_all or all(f.done() for f in in_flight[0][3].values())):
            case, raw, reference, futures = in_flight.popleft()
            records, pictured = [], {}
            for subset_name, future in futures.items():
                scores, segmentation = future.result()
                pictured[subset_name] = segmentation
                records += [{"case": case.case_id, "subset": subset_name, "region": region, **values}
                            for region, values in scores.items()]
            if raw is not None:
                case_figure(raw, modalities.names, reference, pictured, dataset_json,
                            os.path.join(output_folder, "figures", f"{case.case_id}.png"),
                            title=f"{predictor.trainer_name}: {case.case_id}")
            folder.save_case(case.case_id, records)

    try:
        for case_id in todo:
            case = cases[case_id]
            raw, raw_properties, _ = read_case(case, modalities, reader)
            reference, label_properties = read_label(case, reader, raw.shape[1:])
            check_labels(case, reference, defined_labels)
            brain = np.any(raw != 0, axis=0)  # the full case's: the same voxels for every subset
            if preprocess_once:
                full, properties = preprocess(raw, raw_properties)
            pictured = case_id in figure_cases
            futures = {}
            for subset, subset_name in zip(subset_indices, subset_names):
                progress.set_postfix_str(f"{case_id} {subset_name}")
                missing = [c for c in range(len(modalities)) if c not in subset]
                if preprocess_once:
                    data = full.clone()
                    data[missing] = 0
                else:
                    masked = raw.copy()
                    masked[missing] = 0
                    data, properties = preprocess(masked, raw_properties)
                logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
                save_to = (os.path.join(output_folder, "predictions", subset_name, case_id + file_ending)
                           if save_predictions else None)
                futures[subset_name] = executor.submit(job_function, logits, properties, reference, brain,
                                                       label_properties["spacing"], save_to, pictured)
                del logits
                progress.update()
                # Bounded memory: at most two jobs per worker wait for the CPU side.
                while sum(not f.done() for *_, fs in in_flight for f in fs.values()) + \
                        sum(not f.done() for f in futures.values()) > 2 * max(num_workers, 1):
                    concurrent.futures.wait([f for *_, fs in in_flight for f in fs.values()] + list(futures.values()),
                                            return_when=concurrent.futures.FIRST_COMPLETED)
            in_flight.append((case, raw if pictured else None, reference if pictured else None, futures))
            finish_cases(wait_for_all=False)
        finish_cases(wait_for_all=True)
    finally:
        executor.shutdown(cancel_futures=True)
        progress.close()
    folder.finish()
    if num_parts > 1:
        return None
    return merge_evaluation(output_folder)


def merge_evaluation(output_folder: str) -> dict:
    """The reports of a finished evaluation from the records of all its parts."""
    part, records = merged_records(output_folder)
    identity = part["identity"]
    title = f"{identity['trainer']} on {part['title']} ({len(identity['cases'])} cases)"
    return write_reports(records, identity["subsets"], list(identity["regions"]), output_folder, title=title,
                         conventions=identity["conventions"])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_evaluate_missing",
        description="Evaluate a trained nnU-Net model under every non-empty subset of its modalities: "
                    "per-case Dice and HD95 per region (legacy, ETpp and lesion-wise), a summary, a Markdown table "
                    "and a heat map. Resumable, and shardable over processes with -num_parts/-part_id.")
    parser.add_argument("-i", dest="image_folder", help="test images (every modality present)")
    parser.add_argument("-l", dest="label_folder", default=None,
                        help="reference segmentations (default: the labels folder beside -i, e.g. labelsTs)")
    parser.add_argument("-o", dest="output_folder", required=True, help="where the records and reports go")
    parser.add_argument("--subsets", nargs="+", default=None,
                        help="only these subsets, e.g. T1ce+FLAIR T2 all (default: all 2^M-1)")
    parser.add_argument("--save_predictions", action="store_true", help="also write every prediction")
    parser.add_argument("--figures", type=int, default=0, metavar="K",
                        help="a picture of each of the first K cases under every subset (figures/<case>.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing evaluation (this part's share)")
    parser.add_argument("--continue_evaluation", "--c", action="store_true",
                        help="go on with an interrupted evaluation of the same model, subsets and conventions")
    parser.add_argument("-num_parts", type=int, default=1, help="share the cases among this many runs (as "
                        "nnUNetv2_predict); then merge with --merge")
    parser.add_argument("-part_id", type=int, default=0, help="which share this run evaluates (0 to num_parts-1)")
    parser.add_argument("--merge", action="store_true",
                        help="only merge the finished parts in -o into the reports (no model needed)")
    parser.add_argument("-np", dest="num_workers", type=int, default=3,
                        help="processes that export, save and score while the device predicts (default 3, as "
                             "nnUNetv2_predict's -nps; 0: all in this process)")
    parser.add_argument("--et_min_voxels", type=int, default=None,
                        help=f"ETpp: a predicted ET of fewer voxels counts as none (default: RFNet's "
                             f"{Conventions.et_min_voxels}, set on BraTS' 1 mm grid)")
    parser.add_argument("--hd95", choices=hausdorff.CONVENTIONS, default=hausdorff.DEFAULT_CONVENTION,
                        help="the legacy HD95's convention: medpy (pooled surface distances, 373.13 mm when one "
                             "side is empty; what the missing-modality papers report; default) or brats2023 "
                             "(the BraTS 2023 script's surfel-weighted HD95, 374 mm). Lesion-wise HD95 is always brats2023")
    parser.add_argument("--skip_data_check", action="store_true",
                        help="check only the files' headers before the run (grids, labels present); their contents "
                             "(decoding, finite values, label values) are then checked when each case is reached, "
                             "after the run has started writing")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.merge:
            merge_evaluation(args.output_folder)
        else:
            if args.image_folder is None:
                parser.error("-i is required (unless --merge)")
            check_part(args.num_parts, args.part_id)  # before the model loads
            label_folder = args.label_folder or default_label_folder(args.image_folder)
            predictor = predictor_from_args(args)
            et_min_voxels = args.et_min_voxels
            if et_min_voxels is None:
                et_min_voxels = Conventions.et_min_voxels
                if enhancing_region(regions_from_dataset_json(predictor.dataset_json)) is not None:
                    note = etpp_threshold_note(predictor.plans_manager.original_median_spacing_after_transp,
                                               et_min_voxels)
                    if note:
                        print(f"nnUNetv2_evaluate_missing: note: {note}", file=sys.stderr)
            summary = evaluate_missing(predictor, args.image_folder, label_folder, args.output_folder, args.subsets,
                                       args.save_predictions, args.overwrite, figures=args.figures,
                                       continue_evaluation=args.continue_evaluation, num_parts=args.num_parts,
                                       part_id=args.part_id, num_workers=args.num_workers,
                                       conventions=Conventions(et_min_voxels=et_min_voxels, hd95=args.hd95),
                                       check_data=not args.skip_data_check)
            if summary is None:
                print(f"part {args.part_id} of {args.num_parts} done; when every part is, merge them: "
                      f"nnUNetv2_evaluate_missing --merge -o {args.output_folder}")
                return
    except (CaseError, EvaluationStateError, FileExistsError, FileNotFoundError, ValueError) as e:
        sys.exit(f"nnUNetv2_evaluate_missing: error: {e}")
    with open(os.path.join(args.output_folder, "table.md")) as f:
        print(f.read())
    print(f"reports in {args.output_folder}: per_case.csv, summary.json, table.md, heatmap.png")


if __name__ == "__main__":
    main()
