"""Where SMML's Segment Anything priors live and how they are stored.

Beside nnU-Net's preprocessed data of a configuration, in a sibling folder (a ``.b2nd`` file inside
nnU-Net's own folder would be taken for a case)::

    nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>_smml_priors/
        priors.json          what the maps are: targets, modalities, model, prompts
        <case>.b2nd          uint8 (K * M, *spatial): map of target k on modality m in channel k * M + m,
                             probability * 255, at the preprocessed geometry of the case

``<data_identifier>`` is the configuration's (``nnUNetPlans_3d_fullres``), so every plans and
configuration has its own priors. Files are blosc2 arrays like nnU-Net's own, chunked for the
configuration's patch size so that the data loader reads only the patch it crops. A case file
appears only once complete (written under another name, then renamed), so an interrupted run
leaves no partial case behind and a rerun computes exactly the cases still missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

FOLDER_SUFFIX = "_smml_priors"
METADATA_FILE = "priors.json"
CASE_SUFFIX = ".b2nd"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1
SCALE = 255  # stored value = round(probability * SCALE)


class PriorsError(RuntimeError):
    """Priors missing, incomplete or made for something else."""


def prior_targets(label_manager) -> list[tuple[str, tuple[int, ...]]]:
    """What gets a map, in the order of the network's foreground outputs: ``(name, labels)``.

    Region datasets: one map per region (the labels it unites). Label datasets: one map per
    foreground label (background and the ignore label get none).
    """
    names = {}
    for name, value in label_manager.label_dict.items():
        key = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        names.setdefault(tuple(sorted(int(v) for v in key)), name)
    if label_manager.has_regions:
        regions = [tuple(sorted(int(v) for v in (r if isinstance(r, (list, tuple)) else (r,))))
                   for r in label_manager.foreground_regions]
        return [(names.get(r, "+".join(map(str, r))), r) for r in regions]
    return [(names.get((int(label),), str(label)), (int(label),)) for label in label_manager.foreground_labels]


def priors_folder(preprocessed_dataset_folder_base: str, data_identifier: str) -> str:
    return os.path.join(preprocessed_dataset_folder_base, data_identifier + FOLDER_SUFFIX)


@dataclass
class PriorsMetadata:
    """Contents of ``priors.json``."""

    targets: list  # [[name, [labels...]], ...]
    modalities: list  # channel names in dataset order
    model: str  # "litemedsam", "vit_b", ...
    checkpoint: Optional[str]
    slice_axis: int = 0
    box_margin: int = 0
    format_version: int = FORMAT_VERSION
    layout: str = ("(target, modality, *spatial) flattened to target * num_modalities + modality; "
                   "uint8 probability * 255")
    extra: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.targets) * len(self.modalities)

    def describes_same_maps(self, other: "PriorsMetadata") -> bool:
        keys = ("targets", "modalities", "model", "checkpoint", "slice_axis", "box_margin", "format_version")
        return all(_plain(getattr(self, k)) == _plain(getattr(other, k)) for k in keys)

    def save(self, folder: str) -> None:
        path = os.path.join(folder, METADATA_FILE)
        with open(path + PARTIAL_SUFFIX, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(path + PARTIAL_SUFFIX, path)

    @classmethod
    def load(cls, folder: str) -> "PriorsMetadata":
        path = os.path.join(folder, METADATA_FILE)
        try:
            with open(path) as f:
                content = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise PriorsError(f"cannot read {path}: {e}") from e
        if content.get("format_version") != FORMAT_VERSION:
            raise PriorsError(f"{path} has format version {content.get('format_version')}, this version of "
                              f"nnunet_missingmod reads {FORMAT_VERSION}; recompute with "
                              f"nnUNetv2_smml_priors --overwrite")
        return cls(**content)


def _plain(value):
    return json.loads(json.dumps(value))


def case_path(folder: str, identifier: str) -> str:
    return os.path.join(folder, identifier + CASE_SUFFIX)


def completed_cases(folder: str) -> set[str]:
    if not os.path.isdir(folder):
        return set()
    return {f[:-len(CASE_SUFFIX)] for f in os.listdir(folder) if f.endswith(CASE_SUFFIX)}


def write_case(folder: str, identifier: str, priors: np.ndarray, patch_size: Sequence[int]) -> str:
    """Writes one case atomically; ``priors`` uint8 (K * M, *spatial)."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    if priors.dtype != np.uint8 or priors.ndim != 4:
        raise ValueError(f"priors must be uint8 (channels, x, y, z), got {priors.dtype} {priors.shape}")
    blocks, chunks = comp_blosc2_params(priors.shape, patch_size, bytes_per_pixel=1)
    final = case_path(folder, identifier)
    partial = final + PARTIAL_SUFFIX
    if os.path.exists(partial):
        os.remove(partial)
    blosc2.asarray(np.ascontiguousarray(priors), urlpath=partial, chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 8, "nthreads": 2})
    os.replace(partial, final)
    return final


def open_case(folder: str, identifier: str):
    """The stored array of a case, memory-mapped: slicing it reads only what is asked for."""
    import blosc2

    kwargs = {} if os.name == "nt" else {"mmap_mode": "r"}
    return blosc2.open(urlpath=case_path(folder, identifier), mode="r", dparams={"nthreads": 1}, **kwargs)


def check_priors(folder: str, targets: Sequence, modalities: Sequence[str],
                 identifiers: Sequence[str]) -> PriorsMetadata:
    """The metadata of ``folder``, after checking it covers ``identifiers`` with these targets and
    modalities. Raises :class:`PriorsError` with what to do otherwise."""
    metadata = PriorsMetadata.load(folder)
    expected = _plain([[name, list(labels)] for name, labels in targets])
    if _plain(metadata.targets) != expected:
        raise PriorsError(f"the priors in {folder} are for targets {metadata.targets}, but this dataset and "
                          f"plans predict {expected}; recompute them with nnUNetv2_smml_priors --overwrite")
    if list(metadata.modalities) != list(modalities):
        raise PriorsError(f"the priors in {folder} are for modalities {metadata.modalities}, but the dataset has "
                          f"{list(modalities)}; recompute them with nnUNetv2_smml_priors --overwrite")
    missing = sorted(set(identifiers) - completed_cases(folder))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise PriorsError(f"{len(missing)} of {len(identifiers)} training cases have no priors in {folder} "
                          f"({shown}); run nnUNetv2_smml_priors again (it computes only the missing cases) "
                          f"or remove the folder to train without priors")
    return metadata
