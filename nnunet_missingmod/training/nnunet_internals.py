"""Every place where the trainers rely on nnU-Net 2.8's behaviour beyond its documented interface.

nnU-Net's trainer is meant to be subclassed, but some of what the trainers need has no hook: it
depends on how ``nnUNetTrainer`` is written inside. All of that is here, one function each, and
``tests/test_nnunet_internals.py`` checks each against the installed nnU-Net, so that an upgrade
that changes one of them fails there, loudly, rather than somewhere in a training run.

- :data:`TRAINER_INIT_PARAMETERS`: ``nnUNetTrainer.__init__`` reads its arguments back from
  ``locals()`` (to save them in checkpoints), so a subclass must keep exactly this signature.
- :func:`dataloading_built_by`: ``get_dataloaders`` constructs ``nnUNetDataLoader`` and
  ``NonDetMultiThreadedAugmenter`` by their module-level names, with no factory to override; the
  names are swapped for the duration of that one call.
- :func:`limit_augmentation_worker_threads`: what nnU-Net's augmentation workers do for torch's
  thread pools, which the seeded trainers' workers (batchgenerators' ``MultiThreadedAugmenter``)
  must then do themselves.
- :func:`masking_position`: where in nnU-Net's training pipeline the image transforms end.
- :func:`sgd_with_poly_lr`: nnU-Net's optimiser recipe, hard-coded in ``configure_optimizers``.
- :func:`segmentation_loss`: nnU-Net's loss, as ``_build_loss`` builds it, for a chosen DDP setting.
- :data:`CHECKPOINT_KEYS`: what ``save_checkpoint`` writes and ``load_checkpoint`` reads, which
  the project's checkpoints extend; ``load_checkpoint`` accepts only a path in 2.8.1.
- :func:`modules_compiled_by_nnunet`: what ``initialize`` compiles when ``_do_i_compile()`` is true,
  and where it keeps it; ``_do_i_compile`` itself, which the base trainer extends to the emulated
  CUDA path, is private too.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

TRAINER_INIT_PARAMETERS = ("self", "plans", "configuration", "fold", "dataset_json", "device")

CHECKPOINT_KEYS = frozenset({"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                             "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"})

# nnU-Net's SGD: configure_optimizers passes these to torch.optim.SGD beside its lr and weight decay.
SGD_MOMENTUM = 0.99
SGD_NESTEROV = True


@contextlib.contextmanager
def dataloading_built_by(loader_class: type, loader_kwargs: dict | None = None, in_turn: bool = False):
    """Inside this block, ``nnUNetTrainer.get_dataloaders`` builds ``loader_class`` loaders (with
    ``loader_kwargs`` besides nnU-Net's arguments) and, with ``in_turn``, batchgenerators'
    ``MultiThreadedAugmenter`` (workers taken in turn: a fixed batch order) instead of its
    ``NonDetMultiThreadedAugmenter`` (batches in whichever order the workers finish)."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    if not issubclass(loader_class, nnUNetDataLoader):
        raise TypeError(f"{loader_class} is not an nnUNetDataLoader")
    names = {"nnUNetDataLoader": functools.partial(loader_class, **(loader_kwargs or {}))}
    if in_turn:
        names["NonDetMultiThreadedAugmenter"] = _augmenter_taking_workers_in_turn
    originals = {name: getattr(trainer_module, name) for name in names}
    for name, replacement in names.items():
        setattr(trainer_module, name, replacement)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(trainer_module, name, original)


def _augmenter_taking_workers_in_turn(data_loader, transform, num_processes, num_cached, seeds, pin_memory,
                                      wait_time):
    """``MultiThreadedAugmenter`` built from ``NonDetMultiThreadedAugmenter``'s arguments as nnU-Net
    passes them (its cache is per worker queue). The loader learns the number of workers, which
    batchgenerators' loaders keep for this purpose and nnU-Net leaves unset."""
    data_loader.number_of_threads_in_multithreaded = num_processes
    return MultiThreadedAugmenter(data_loader, transform, num_processes,
                                  num_cached_per_queue=max(1, -(-num_cached // num_processes)), seeds=seeds,
                                  pin_memory=pin_memory, wait_time=wait_time)


_worker_thread_limits = None  # kept alive: the limits last as long as the worker


def limit_augmentation_worker_threads() -> None:
    """One thread for torch and every thread pool in this augmentation worker, as nnU-Net's
    ``NonDetMultiThreadedAugmenter`` sets in its workers and batchgenerators' ``MultiThreadedAugmenter``,
    which seeded training uses instead, does not. A worker is forked from the trainer, whose torch
    has run OpenMP teams; GNU OpenMP is not fork-safe, and the worker's first torch operation large
    enough to go parallel waits forever for threads the fork did not copy (a seeded MSTKDTrainer
    hung so before its first batch). One thread also keeps the workers from competing with the
    trainer for its cores."""
    global _worker_thread_limits
    torch.set_num_threads(1)
    _worker_thread_limits = threadpool_limits(1)


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


def modules_compiled_by_nnunet(trainer) -> list[tuple[object, str]]:
    """``(holder, attribute)`` of every module ``nnUNetTrainer.initialize`` compiled: the network
    (compiled, then wrapped in DDP) and the Dice term of its loss (inside the deep-supervision
    wrapper). Empty when nothing was compiled."""
    places = [(trainer.network, "module") if isinstance(trainer.network, DistributedDataParallel)
              else (trainer, "network")]
    loss = trainer.loss.loss if isinstance(trainer.loss, DeepSupervisionWrapper) else trainer.loss
    places.append((loss, "dc"))
    return [(holder, name) for holder, name in places if isinstance(getattr(holder, name, None), OptimizedModule)]
