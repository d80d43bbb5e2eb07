"""Every place where the trainers rely on nnU-Net 2.8's behaviour beyond its documented interface.

nnU-Net's trainer is meant to be subclassed, but some of what the trainers need has no hook: it
depends on how ``nnUNetTrainer`` is written inside. All of that is here, one function each, and
``tests/test_nnunet_internals.py`` checks each against the installed nnU-Net, so that an upgrade
that changes one of them fails there, loudly, rather than somewhere in a training run.

- :data:`TRAINER_INIT_PARAMETERS`: ``nnUNetTrainer.__init__`` reads its arguments back from
  ``locals()`` (to save them in checkpoints), so a subclass must keep exactly this signature.
- :func:`loaders_of_class`: ``get_dataloaders`` constructs ``nnUNetDataLoader`` by its module-level
  name, with no factory to override; the name is swapped for the duration of that one call.
- :func:`masking_position`: where in nnU-Net's training pipeline the image transforms end.
- :func:`sgd_with_poly_lr`: nnU-Net's optimiser recipe, hard-coded in ``configure_optimizers``.
- :func:`segmentation_loss`: nnU-Net's loss, as ``_build_loss`` builds it, for a chosen DDP setting.
- :data:`CHECKPOINT_KEYS`: what ``save_checkpoint`` writes and ``load_checkpoint`` reads, which
  the project's checkpoints extend; ``load_checkpoint`` accepts only a path in 2.8.1.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

TRAINER_INIT_PARAMETERS = ("self", "plans", "configuration", "fold", "dataset_json", "device")

CHECKPOINT_KEYS = frozenset({"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                             "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"})

# nnU-Net's SGD: configure_optimizers passes these to torch.optim.SGD beside its lr and weight decay.
SGD_MOMENTUM = 0.99
SGD_NESTEROV = True


@contextlib.contextmanager
def loaders_of_class(loader_class: type):
    """Make ``nnUNetTrainer.get_dataloaders`` build ``loader_class`` loaders inside this block."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    if not issubclass(loader_class, nnUNetDataLoader):
        raise TypeError(f"{loader_class} is not an nnUNetDataLoader")
    original = trainer_module.nnUNetDataLoader
    trainer_module.nnUNetDataLoader = loader_class
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = original


def masking_position(pipeline: ComposeTransforms) -> int:
    """The index right after nnU-Net's last image transform (intensity augmentations, mirroring, the
    brain mask) and before its label transforms and the cascade's extra channels."""
    position = next((i for i, t in enumerate(pipeline.transforms) if isinstance(t, RemoveLabelTransform)), None)
    if position is None:
        raise RuntimeError("nnU-Net's training pipeline has no RemoveLabelTransform; "
                           "nnunet_missingmod does not know where to insert modality masking")
    return position


def sgd_with_poly_lr(parameters, initial_lr: float, weight_decay: float, num_epochs: int):
    """nnU-Net's optimiser and schedule (``nnUNetTrainer.configure_optimizers``) for any parameters
    or parameter groups: SGD with Nesterov momentum 0.99, poly learning-rate decay per epoch."""
    optimizer = torch.optim.SGD(parameters, initial_lr, weight_decay=weight_decay, momentum=SGD_MOMENTUM,
                                nesterov=SGD_NESTEROV)
    return optimizer, PolyLRScheduler(optimizer, initial_lr, num_epochs)


def segmentation_loss(trainer, ddp: bool) -> nn.Module:
    """nnU-Net's loss for ``trainer`` as ``_build_loss`` builds it, with its batch Dice pooled over
    DDP ranks (``ddp=True``, nnU-Net's choice under DDP) or over this process's samples only.

    Pooling over ranks all-gathers per-sample statistics and so needs the same batch size on every
    rank: a loss over a sub-batch that differs between ranks must not pool. Deep supervision
    weights are those of ``trainer.loss`` (nnU-Net sets them from the DDP and compile settings).
    """
    labels, configuration = trainer.label_manager, trainer.configuration_manager
    if labels.has_regions:
        loss = DC_and_BCE_loss({}, {"batch_dice": configuration.batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": ddp},
                               use_ignore_label=labels.ignore_label is not None,
                               dice_class=MemoryEfficientSoftDiceLoss)
    else:
        loss = DC_and_CE_loss({"batch_dice": configuration.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp},
                              {}, weight_ce=1, weight_dice=1, ignore_label=labels.ignore_label,
                              dice_class=MemoryEfficientSoftDiceLoss)
    if isinstance(trainer.loss, DeepSupervisionWrapper):
        loss = DeepSupervisionWrapper(loss, np.array(trainer.loss.weight_factors))
    return loss
