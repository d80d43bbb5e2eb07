"""nnU-Net's planning and preprocessing through its Python API, with a lighter fingerprint.

nnU-Net's fingerprint samples 1e8 foreground voxels across the dataset for its intensity
statistics (~45 s and ~5 GB on a tiny dataset on 2 CPU cores). Its ``-fpe`` option only looks for
extractors inside nnunetv2, so the demo and the benchmarks call the API with this subclass
instead; plans and preprocessed data are otherwise exactly what ``nnUNetv2_plan_and_preprocess``
writes. Users with real data should run nnU-Net's own command.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor


class LightFingerprintExtractor(DatasetFingerprintExtractor):
    """Samples 1e6 foreground voxels in all (plenty for percentiles of a synthetic dataset)."""

    def __init__(self, dataset_name_or_id, num_processes: int = 8, verbose: bool = False):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        self.num_foreground_voxels_for_intensitystats = 1e6


def plan_and_preprocess(dataset_id: int, configurations: Sequence[str] = ("3d_fullres",),
                        num_processes: int = 2, verbose: bool = False) -> None:
    """Fingerprint (light), plan and preprocess, as ``nnUNetv2_plan_and_preprocess -d ID -c ...``."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                     plan_experiment_dataset, preprocess)

    extract_fingerprint_dataset(dataset_id, LightFingerprintExtractor, num_processes, check_dataset_integrity=True,
                                clean=True, verbose=verbose, show_progress_bar=verbose)
    plan_experiment_dataset(dataset_id)
    preprocess([dataset_id], configurations=tuple(configurations), num_processes=[num_processes] * len(configurations),
               verbose=verbose, show_progress_bar=verbose)


NARROW_PLANS = "nnUNetPlansNarrow"


def write_narrow_plans(preprocessed_folder: str, configuration: str = "3d_fullres",
                       plans_name: str = NARROW_PLANS) -> dict:
    """nnU-Net's plans of a preprocessed dataset with the configuration's U-Net made narrow (3 stages
    of 4, 8 and 16 features) and a 16³ patch, saved as ``<plans_name>.json`` beside them (train with
    ``-p <plans_name>``). The data identifier is kept, so the preprocessed cases are shared.

    For the CUDA path on the CPU (docs/training.md): the CPU has no fast fp16 convolutions, and
    what the path exercises (graph capture, autocast, the GradScaler) does not depend on the width.
    """
    with open(os.path.join(preprocessed_folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    plans["plans_name"] = plans_name
    settings = plans["configurations"][configuration]
    settings["patch_size"] = [16] * len(settings["patch_size"])
    dimensions = len(settings["patch_size"])
    settings["architecture"]["arch_kwargs"].update(
        n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3] * dimensions] * 3,
        strides=[[1] * dimensions, [2] * dimensions, [2] * dimensions], n_conv_per_stage=[2, 2, 2],
        n_conv_per_stage_decoder=[2, 2])
    with open(os.path.join(preprocessed_folder, f"{plans_name}.json"), "w") as f:
        json.dump(plans, f, indent=1)
    return plans
