"""``nnUNetv2_missingmod_study``: which trainer to pick, measured on your data, locally or through SLURM.

    nnUNetv2_missingmod_study -d 501 -c 3d_fullres --work /scratch/study501 [-f 0] [-i imagesTs] [-l labelsTs]
        [-tr ModalityDropoutTrainer MSTKDTrainer ...] [--seeds 1 2 3] [--dedicated all|singles|none]
        [--epochs E] [--iterations I] [--device cuda] [--run local|slurm] [--report report.md]
    nnUNetv2_missingmod_study --preset cpu --work /tmp/study        # the synthetic study (docs/results.md)

Running the same command again goes on where it stopped (docs/study.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Optional

from nnunet_missingmod.study.presets import BEST_2D, SIZES, Size, preset_study
from nnunet_missingmod.study.report import ARCHIVE_2D, BAR_REGIONS, REPO, best_method_in_archive, write_report
from nnunet_missingmod.study.study import (COMPUTE_MATCHED, METHODS, NO_MASKING, REFERENCE, Study, StudyError,
                                           StudySetup, log)

DEFAULT_TRAINERS = [NO_MASKING, REFERENCE, *METHODS]


def build_parser() -> argparse.ArgumentParser:
    from nnunet_missingmod.study import slurm
    parser = argparse.ArgumentParser(prog="nnUNetv2_missingmod_study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("the data (a dataset nnU-Net has planned, or a synthetic preset)")
    data.add_argument("-d", dest="dataset", help="dataset name or id, planned and preprocessed by nnU-Net")
    data.add_argument("-c", dest="configuration", help="nnU-Net configuration, e.g. 3d_fullres")
    data.add_argument("-f", dest="fold", type=int, default=0, help="fold every model trains on (default 0)")
    data.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    data.add_argument("-i", dest="test_images", help="test images, every modality present (default: the raw "
                      "dataset's imagesTs)")
    data.add_argument("-l", dest="test_labels", help="their reference segmentations (default: labelsTs beside -i)")
    data.add_argument("--preset", choices=sorted(SIZES), help="the synthetic study instead: its own generated data, "
                      "sizes and budget (docs/study.md); the default when -d is not given is 'cpu'")
    data.add_argument("--size", dest="preset", choices=sorted(SIZES), help=argparse.SUPPRESS)  # the earlier name

    what = parser.add_argument_group("what is trained and evaluated")
    what.add_argument("--work", required=True, help="work folder (models, evaluations, study.json); rerun the "
                      "same command to resume")
    what.add_argument("-tr", "--trainers", nargs="+", help=f"trainers (default: {' '.join(DEFAULT_TRAINERS)}; "
                      f"{REFERENCE} is the reference and must be one)")
    what.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 1 2 3)")
    what.add_argument("--dedicated", choices=("all", "singles", "none"),
                      help="the dedicated ceiling: one nnU-Net per subset, per single modality and the full set, "
                           "or none (default singles; a preset's own)")
    what.add_argument("--no_ensemble", action="store_true", help=f"no ensemble control ({REFERENCE}'s seeds "
                      "averaged in pairs)")
    what.add_argument("--no_compute_matched", action="store_true", help=f"no compute-matched control ({REFERENCE} "
                      "trained for the costliest method's training time)")
    what.add_argument("--epochs", type=int, help="epochs per model (default nnU-Net's 1000; a preset's own)")
    what.add_argument("--iterations", type=int, help="iterations per epoch (default nnU-Net's 250; a preset's own)")
    what.add_argument("--disable_tta", action="store_true", help="no test-time mirroring in the evaluations")
    what.add_argument("-device", "--device", dest="device", choices=("cpu", "cuda"),
                      help="device of every training and evaluation (default cuda; the CPU presets: cpu)")
    what.add_argument("-np", dest="evaluation_workers", type=int,
                      help="nnUNetv2_evaluate_missing's -np (default 3 on cuda, 0 on cpu)")

    output = parser.add_argument_group("the report and the archive")
    output.add_argument("--report", help="the report (default WORK/report.md; the cpu preset: docs/results.md)")
    output.add_argument("--report_only", action="store_true",
                        help="write the report from the steps done so far, run none; it lists the steps still to run")
    output.add_argument("--archive", help="folder of finished steps kept between machines (default for a preset "
                        "in the repository: benchmarks/results/study_<preset>; otherwise none; 'none': no archive)")
    output.add_argument("--restamp_archive", metavar="EVIDENCE",
                        help="give the archived steps made with other training code the current code's fingerprint, "
                             "recording EVIDENCE that training did not change; run nothing (docs/study.md)")

    slurm.add_arguments(parser)
    return parser


def resolve_dataset(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as error:
        raise StudyError(f"-d {dataset}: {error}") from None


def make_study(args, parser) -> tuple[Study, Optional[Size], str]:
    """The study the arguments describe, its preset (None for a user's dataset) and its report path."""
    if args.dataset is None:
        if args.configuration or args.test_images or args.test_labels:
            parser.error("-c, -i and -l describe a dataset: give it with -d (or use --preset alone)")
        name = args.preset or "cpu"
        size = SIZES[name]
        custom = {k: v for k, v in (("epochs", args.epochs), ("iterations", args.iterations)) if v}
        if custom:
            size = Size(**{**size.__dict__, **custom})
        if args.disable_tta:
            parser.error("--disable_tta: a preset sets its own test-time mirroring")
        trainers = list(args.trainers or size.trainers)
        if BEST_2D in trainers:
            try:
                best, scores = best_method_in_archive(ARCHIVE_2D)
            except FileNotFoundError as error:
                parser.error(f"--preset {name} trains the 2d study's best method: {error}")
            log(f"the 2d study's best method on mean {' and '.join(BAR_REGIONS)} Dice ({ARCHIVE_2D}): {best} ("
                + ", ".join(f"{m} {v * 100:.2f}" for m, v in scores.items()) + ")")
            trainers = [best if t == BEST_2D else t for t in trainers]
        in_repository = os.path.isdir(os.path.join(REPO, "benchmarks", "results"))
        archive = args.archive or (os.path.join(REPO, "benchmarks", "results", f"study_{name}{'_custom' if custom else ''}")
                                   if in_repository else "none")
        report = args.report or (os.path.join(REPO, "docs", "results.md") if in_repository and name == "cpu"
                                 else os.path.join(args.work, "report.md"))
        check_trainers(trainers, parser)
        device = args.device or ("cuda" if name.startswith("gpu") else "cpu")
        study = preset_study(size, os.path.abspath(args.work), trainers, list(args.seeds or size.seeds),
                             args.dedicated or size.dedicated, device,
                             archive_folder=None if archive == "none" else os.path.abspath(archive),
                             compute_matched=not args.no_compute_matched and name != "tiny",
                             evaluation_workers=args.evaluation_workers, ensemble=not args.no_ensemble)
        return study, size, report
    if args.preset:
        parser.error("--preset is the synthetic study: leave out -d, or leave out --preset")
    if not args.configuration:
        parser.error("-c (the configuration to train, e.g. 3d_fullres) is required with -d")
    dataset = resolve_dataset(args.dataset)
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise StudyError("set nnUNet_raw (and nnUNet_preprocessed) to nnU-Net's folders of the dataset")
    test_images = os.path.abspath(args.test_images or os.path.join(raw, dataset, "imagesTs"))
    setup = StudySetup(dataset, args.configuration, test_images,
                       os.path.abspath(args.test_labels) if args.test_labels else None, args.fold, args.plans,
                       args.epochs, args.iterations, not args.disable_tta)
    trainers = list(args.trainers or DEFAULT_TRAINERS)
    check_trainers(trainers, parser)
    archive = args.archive if args.archive and args.archive != "none" else None
    study = Study(os.path.abspath(args.work), setup, trainers, list(args.seeds or (1, 2, 3)), args.dedicated or "singles",
                  args.device or "cuda", archive_folder=os.path.abspath(archive) if archive else None,
                  compute_matched=not args.no_compute_matched, evaluation_workers=args.evaluation_workers,
                  ensemble=not args.no_ensemble)
    return study, None, args.report or os.path.join(os.path.abspath(args.work), "report.md")


def check_trainers(trainers: list[str], parser) -> None:
    from nnunet_missingmod.training.mstkd_teacher import find_trainer_class
    if REFERENCE not in trainers:
        parser.error(f"--trainers must include {REFERENCE}, the reference of every comparison")
    for trainer in trainers:
        try:
            find_trainer_class(trainer)
        except (ImportError, AttributeError, ValueError, LookupError) as error:
            parser.error(f"--trainers: {trainer} is not a trainer nnU-Net can find ({error})")


def main(argv: Optional[list[str]] = None) -> None:
    from nnunet_missingmod.study import slurm
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        study, preset, report = make_study(args, parser)
        if args.restamp_archive:
            if study.archive_folder is None:
                parser.error("--restamp_archive needs an archive")
            log(f"archive {study.archive_folder}: {len(study.restamp_archive(args.restamp_archive))} step(s) restamped")
            return
        command = "nnUNetv2_missingmod_study " + shlex.join(argv if argv is not None else sys.argv[1:])
        start = time.time()
        if args.step:
            slurm.run_step(study, args.step, args.part, args.num_parts, report, command, preset)
            return
        if args.run == "slurm":
            slurm.submit(study, slurm.resources_of(args), slurm.study_arguments(args, parser), report,
                         dry_run=args.dry_run, resubmit_failed=args.resubmit_failed)
            return
        if args.report_only:
            study.prepare_data(planned=False)  # a preset's data, whose fingerprint the archive checks
            study.open_archive()
            missing = [step for step in study.pending_steps()  # the controls may be missing
                       if step.rsplit(" seed ", 1)[1].isdigit() and COMPUTE_MATCHED not in step]
            if missing:
                parser.error("--report_only needs every trainer evaluated for every seed; not done: "
                             + "; ".join(missing) + " (name fewer with --trainers or --seeds)")
        else:
            study.run_all()
        write_report(study, os.path.abspath(report), command, preset)
        log(f"study finished in {(time.time() - start) / 60:.1f} min")
    except StudyError as error:
        sys.exit(f"nnUNetv2_missingmod_study: {error}")


if __name__ == "__main__":
    main()
