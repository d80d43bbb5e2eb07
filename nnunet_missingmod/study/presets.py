"""The synthetic study: the presets that generate their own BraTS-like data (synthetic.py), the
study this project reports (docs/results.md) and the one anyone can run without a dataset.

A preset's work folder holds its own nnUNet_raw and nnUNet_preprocessed; its identity (what its
archive and work folder must agree on) is the generator's sizes and the budget, as it has been
since the first archived step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from nnunet_missingmod.study.study import NO_MASKING, REFERENCE, TRAINERS, Study, StudySetup, log

DATASET_ID = 982
DATASET_NAME = "RobustnessStudy"
DATASET = f"Dataset{DATASET_ID}_{DATASET_NAME}"
BEST_2D = "best-2d"  # in a preset's trainers: the 2d CPU study's best method (report.best_method_in_archive)


@dataclass(frozen=True)
class Size:
    num_train: int
    num_test: int
    shape: tuple
    configuration: str
    epochs: int
    iterations: int
    mirroring: bool  # test-time mirroring in the evaluation (4x the prediction time in 2d, 8x in 3d)
    seeds: tuple = (1,)
    dedicated: str = "none"  # which dedicated models: "all" 2^M - 1, "singles" (and the full set), "none"
    trainers: tuple = tuple(TRAINERS)

    def identity(self) -> dict:
        """The archive's and work folder's record of this preset (the defaults a command overrides left out)."""
        return {k: v for k, v in json.loads(json.dumps(asdict(self))).items()
                if k not in ("seeds", "dedicated", "trainers")}


SIZES = {
    # A smoke run: minutes per trainer on 2 CPU cores.
    "tiny": Size(8, 4, (40, 48, 40), "2d", 4, 25, False, seeds=(1,), dedicated="none",
                 trainers=(NO_MASKING, REFERENCE)),
    # The default, for 2 CPU cores. nnU-Net's 2d batch grows with the dataset (12 cases: batch
    # 18); 2d learns all three regions in a few hundred iterations where 3d_fullres does not.
    # Measured per seed (docs/results.md): FullModality 9.5, MD 4.3, MSTKD 27, MAG-MS about 25 min.
    "cpu": Size(12, 8, (40, 48, 40), "2d", 16, 50, False, seeds=(1, 2, 3), dedicated="all"),
    # 3d_fullres on the CPU at a size one developer session holds: a smaller volume, two seeds,
    # the baseline, nnU-Net fed zeroed channels and the 2d study's best method (read from its archive).
    "cpu3d": Size(8, 4, (32, 40, 32), "3d_fullres", 10, 40, False, seeds=(1, 2), dedicated="none",
                  trainers=(NO_MASKING, REFERENCE, BEST_2D)),
    # On a GPU: 3d_fullres at a realistic size, nnU-Net's iterations per epoch, every trainer.
    "gpu3d": Size(60, 20, (96, 112, 96), "3d_fullres", 100, 250, True, seeds=(1, 2, 3), dedicated="all"),
}
SIZES["gpu"] = SIZES["gpu3d"]  # the earlier name


def preset_setup(size: Size, work: str) -> StudySetup:
    raw = os.path.join(work, "nnUNet_raw")
    return StudySetup(DATASET, size.configuration, os.path.join(raw, DATASET, "imagesTs"), epochs=size.epochs,
                      iterations=size.iterations, mirroring=size.mirroring)


def prepare_synthetic_data(size: Size):
    """The preset's ``data_preparation``: the generator's dataset, then (``planned``) nnU-Net's plans,
    each once. A report alone needs only the dataset, whose fingerprint the archive checks."""
    def prepare(study: Study, planned: bool = True) -> None:
        from nnunet_missingmod.planning import plan_and_preprocess
        from nnunet_missingmod.synthetic import write_nnunet_dataset
        if not study.done("dataset"):
            log(f"dataset: {size.num_train} training + {size.num_test} test cases, shape {size.shape}")
            write_nnunet_dataset(DATASET_ID, size.num_train, size.num_test, name=DATASET_NAME, shape=tuple(size.shape),
                                 seed=0, raw_folder=study.env["nnUNet_raw"], overwrite=True, num_processes=2)
            study.mark("dataset")
        if planned and not study.done("preprocessing"):
            log(f"plans and preprocessing ({size.configuration})")
            for name in ("nnUNet_raw", "nnUNet_preprocessed"):  # nnU-Net's planning, in this process, reads them
                os.environ[name] = study.env[name]
            plan_and_preprocess(DATASET_ID, (size.configuration,), num_processes=2)
            study.mark("preprocessing")
    return prepare


def preset_study(size: Size, work: str, trainers: list[str], seeds: list[int], dedicated: str, device: str,
                 **options) -> Study:
    return Study(work, preset_setup(size, work), trainers, seeds, dedicated, device, identity=size.identity(),
                 raw=os.path.join(work, "nnUNet_raw"), preprocessed=os.path.join(work, "nnUNet_preprocessed"),
                 data_preparation=prepare_synthetic_data(size), **options)
