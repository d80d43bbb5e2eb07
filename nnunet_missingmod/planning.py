"""nnU-Net's planning and preprocessing through its Python API, with a lighter fingerprint.

nnU-Net's fingerprint samples 1e8 foreground voxels across the dataset for its intensity
statistics (~45 s and ~5 GB on a tiny dataset on 2 CPU cores). Its ``-fpe`` option only looks for
extractors inside nnunetv2, so the demo and the benchmarks call the API with this subclass
instead; plans and preprocessed data are otherwise exactly what ``nnUNetv2_plan_and_preprocess``
writes. Users with real data should run nnU-Net's own command.
"""

from __future__ import annotations

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
