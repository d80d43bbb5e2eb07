"""Loading a trained model the way ``nnUNetv2_predict`` does, for our prediction commands.

The model is named as nnU-Net names it (``-d -c -tr -p -f -chk``) or by its folder (``-m``), and
is run by nnU-Net's own ``nnUNetPredictor`` (sliding window, Gaussian weighting, mirroring,
fold ensembling). Only the arguments that apply are shared here, with nnU-Net's names.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from typing import Optional, Sequence

import torch

from nnunet_missingmod.trainer_registration import register

# Our trainers must be findable by nnU-Net's lookup even where the .pth hook did not run
# (e.g. PYTHONNOUSERSITE setups or python -S); registering twice is harmless.
register()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (as nnUNetv2_predict, or -m)")
    model.add_argument("-m", dest="model_folder", default=None,
                       help="trained model folder (the one holding fold_X). Replaces -d/-c/-tr/-p.")
    model.add_argument("-d", dest="dataset", default=None, help="dataset name or id")
    model.add_argument("-c", dest="configuration", default=None, help="configuration, e.g. 3d_fullres")
    model.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer class name")
    model.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    model.add_argument("-f", dest="folds", nargs="+", default=None,
                       help="folds to ensemble (default: every fold_X found in the model folder)")
    model.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    model.add_argument("--ensemble_with", nargs="+", default=(), metavar="MODEL_FOLDER",
                       help="more trained model folders of the same trainer, plans and configuration (e.g. other "
                            "seeds): their folds' logits are averaged with the model's, as nnU-Net ensembles folds")
    run = parser.add_argument_group("inference (as nnUNetv2_predict)")
    run.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    run.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (4-8x faster)")
    run.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="device to run on")
    run.add_argument("--verbose", action="store_true")


def model_folder_from_args(args: argparse.Namespace) -> str:
    if args.model_folder is not None:
        if args.dataset is not None or args.configuration is not None:
            raise ValueError("give either -m MODEL_FOLDER or -d/-c/-tr/-p, not both")
        folder = args.model_folder
    else:
        if args.dataset is None or args.configuration is None:
            raise ValueError("name the model with -d DATASET -c CONFIGURATION [-tr TRAINER -p PLANS], or -m FOLDER")
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        folder = get_output_folder(maybe_convert_to_dataset_name(args.dataset), args.trainer, args.plans,
                                   args.configuration)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    return folder


def device_from_name(name: str) -> torch.device:
    """The device, with nnU-Net's thread settings for it."""
    if name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif name == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    return torch.device(name)


def load_predictor(model_folder: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
                   device: torch.device = torch.device("cuda"), use_mirroring: bool = True,
                   tile_step_size: float = 0.5, verbose: bool = False, allow_tqdm: bool = False):
    """nnU-Net's predictor, initialised from a trained model folder."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if folds is not None:
        folds = [f if f == "all" else int(f) for f in folds]
    for fold in folds or []:
        path = os.path.join(model_folder, f"fold_{fold}", checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint {path}; train fold {fold} first or pick -f/-chk")
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=verbose, verbose_preprocessing=verbose, allow_tqdm=allow_tqdm)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=checkpoint)
    return predictor


def ensemble_with(predictor, model_folders: Sequence[str], folds: Optional[Sequence] = None,
                  checkpoint: str = "checkpoint_final.pth") -> None:
    """Average ``predictor``'s logits with those of more trained models of the same kind.

    nnU-Net's predictor averages the logits of every parameter set in its ``list_of_parameters``
    (one per fold); the other models' checkpoints join that list. They must share the trainer, the
    plans and the configuration, which is checked.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    for folder in model_folders:
        other = nnUNetPredictor(device=torch.device("cpu"))
        other.initialize_from_trained_model_folder(folder, None if folds is None else
                                                   [f if f == "all" else int(f) for f in folds],
                                                   checkpoint_name=checkpoint)
        mine = (predictor.trainer_name, predictor.configuration_manager.configuration, predictor.plans_manager.plans)
        theirs = (other.trainer_name, other.configuration_manager.configuration, other.plans_manager.plans)
        if mine != theirs:
            raise ValueError(f"--ensemble_with {folder}: it is a {other.trainer_name} model on other plans or "
                             f"another configuration than {predictor.trainer_name}'s; only models of the same "
                             f"trainer, plans and configuration can be averaged")
        predictor.list_of_parameters.extend(other.list_of_parameters)


def predictor_from_args(args: argparse.Namespace):
    predictor = load_predictor(model_folder_from_args(args), args.folds, args.checkpoint,
                               device_from_name(args.device), use_mirroring=not args.disable_tta,
                               tile_step_size=args.step_size, verbose=args.verbose)
    if getattr(args, "ensemble_with", ()):
        ensemble_with(predictor, args.ensemble_with, args.folds, args.checkpoint)
    return predictor
