"""A trained nnU-Net model as MST-KDNet's frozen teacher.

The teacher is named by the environment variable :data:`TEACHER_VARIABLE` (nnU-Net trainers take
no extra command-line arguments): a checkpoint file, a fold folder, or a model folder
(``.../<Trainer>__<Plans>__<configuration>``, whose ``fold_<f>`` matching the student's fold is
used, so that the teacher never trained on the student's validation cases).

Any nnU-Net checkpoint works: the network is rebuilt the way ``nnUNetv2_predict`` rebuilds it
(the checkpoint's trainer class, plans and dataset.json) and loaded strictly. It must have been
trained on the same data as the student (channels, labels, patch size, spacing, normalisation),
which is checked. A network with MST-KDNet's transformer bottleneck (``MSTKDTeacherTrainer``, or
any MST-KD trainer) also provides attention maps and features; any other (``nnUNetTrainer``)
provides logits only.

:class:`FrozenTeacher` keeps that recipe in its state dict, so the student's checkpoints hold the
teacher's weights *and* how to rebuild it: ``--c`` and ``--val`` need no environment variable.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_missingmod.networks.transformer_unet import TransformerBottleneckUNet

TEACHER_VARIABLE = "nnUNet_missingmod_teacher"
CHECKPOINT_NAME = "checkpoint_final.pth"


def find_trainer_class(name: str) -> type:
    """The trainer class ``nnUNetv2_predict`` would use; this package's own without nnU-Net's slow
    import-everything search (which finds the same classes through ``nnUNet_extTrainer``)."""
    import nnunet_missingmod.training as ours
    if name in ours.__all__:
        return getattr(ours, name)
    return recursive_find_trainer_class_by_name(name)


def resolve_teacher_checkpoint(value: str, fold) -> str:
    """The checkpoint file that ``value`` (file, fold folder or model folder) names for ``fold``."""
    path = os.path.abspath(os.path.expanduser(value))
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for candidate in (os.path.join(path, CHECKPOINT_NAME), os.path.join(path, f"fold_{fold}", CHECKPOINT_NAME)):
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"{TEACHER_VARIABLE}={value}: found neither {CHECKPOINT_NAME} nor "
                                f"fold_{fold}/{CHECKPOINT_NAME} in {path}; name a checkpoint file, a fold folder or "
                                f"a trained model folder")
    raise FileNotFoundError(f"{TEACHER_VARIABLE}={value}: {path} does not exist")


@dataclass(frozen=True)
class TeacherRecipe:
    """How to rebuild a teacher network: what nnU-Net's predictor reads from a checkpoint."""

    trainer_name: str
    plans: dict
    configuration: str
    dataset_json: dict
    source: str

    @property
    def configuration_manager(self) -> ConfigurationManager:
        return PlansManager(self.plans).get_configuration(self.configuration)

    def build_network(self) -> nn.Module:
        plans_manager = PlansManager(self.plans)
        configuration_manager = plans_manager.get_configuration(self.configuration)
        trainer_class = find_trainer_class(self.trainer_name)
        return trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, self.dataset_json),
            plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads,
            enable_deep_supervision=False)


def load_teacher_checkpoint(path: str) -> tuple[TeacherRecipe, dict]:
    """The recipe and the network weights of an nnU-Net checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    try:
        init_args = checkpoint["init_args"]
        recipe = TeacherRecipe(checkpoint["trainer_name"], init_args["plans"], init_args["configuration"],
                               init_args["dataset_json"], path)
        return recipe, checkpoint["network_weights"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{TEACHER_VARIABLE}: {path} is not an nnU-Net training checkpoint (lacks {error})") from None


def recipe_mismatches(recipe: TeacherRecipe, configuration_manager: ConfigurationManager,
                      dataset_json: dict) -> list[str]:
    """What differs between the teacher's training data and the student's (empty if nothing)."""
    teacher = recipe.configuration_manager

    def channels(d: dict) -> dict:
        return {str(k): v for k, v in d["channel_names"].items()}

    checks = [
        ("channel_names", channels(recipe.dataset_json), channels(dataset_json)),
        ("labels", recipe.dataset_json["labels"], dataset_json["labels"]),
        ("regions_class_order", recipe.dataset_json.get("regions_class_order"),
         dataset_json.get("regions_class_order")),
    ] + [(name, list(getattr(teacher, name)), list(getattr(configuration_manager, name)))
         for name in ("patch_size", "normalization_schemes", "use_mask_for_norm")]
    problems = [f"{name} {t} (teacher) vs {s} (student)" for name, t, s in checks if t != s]
    if not np.allclose(teacher.spacing, configuration_manager.spacing):
        problems.append(f"spacing {list(teacher.spacing)} (teacher) vs {list(configuration_manager.spacing)} (student)")
    return problems


class FrozenTeacher(nn.Module):
    """A trained network used as a fixed teacher; its state dict also holds its :class:`TeacherRecipe`."""

    def __init__(self, network: nn.Module, recipe: TeacherRecipe):
        super().__init__()
        self.network = network
        self.recipe = recipe

    @property
    def provides_features(self) -> bool:
        """Attention maps and transformer features, besides logits."""
        return isinstance(self.network, TransformerBottleneckUNet)

    def forward(self, x: torch.Tensor):
        """``(logits, DistillationFeatures or None)``."""
        if self.provides_features:
            return self.network(x, return_features=True)
        return self.network(x), None

    def get_extra_state(self) -> dict:
        return asdict(self.recipe)

    def set_extra_state(self, state: dict) -> None:
        self.recipe = TeacherRecipe(**state)


def recipe_from_student_checkpoint(path: str) -> Optional[TeacherRecipe]:
    """The recipe of the frozen teacher saved in an MST-KD student checkpoint, if it holds one."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("auxiliaries", {}).get("teacher", {}).get("weights", {}).get("_extra_state")
    return TeacherRecipe(**state) if state else None
