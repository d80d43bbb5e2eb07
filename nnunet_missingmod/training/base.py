"""What every missing-modality trainer shares, on top of nnU-Net's own trainer.

- the modality vocabulary of the dataset, and a clear refusal of one-channel datasets;
- the masking transform in the training pipeline, after every intensity augmentation, and a data
  loader that hands ``modality_mask`` (and, on request, ``data_unmasked``) to ``train_step``;
- auxiliary modules (a teacher, a second branch, a discriminator) with their own optimisers:
  moved to the device, wrapped for DDP, switched between train and eval with the network,
  stepped by the LR schedule, saved in and restored from nnU-Net's checkpoints;
- atomic checkpoint writes (a crash while saving never leaves a truncated checkpoint);
- a training length that tests and demos can shorten through environment variables.

``self.network`` is always the network that ``nnUNetv2_predict`` deploys: nnU-Net writes it to
``network_weights``. nnU-Net's train loop is kept; only its hooks are overridden.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_missingmod.masking import ModalityMaskingTransform
from nnunet_missingmod.modalities import Modalities
from nnunet_missingmod.training.data_loader import ModalityMaskDataLoader, loaders_of_class

# Environment variables that shorten training without a trainer variant per length. Meant for
# tests, demos and benchmarks; every override is written to the training log.
LENGTH_OVERRIDES = {
    "nnUNet_missingmod_num_epochs": "num_epochs",
    "nnUNet_missingmod_iterations_per_epoch": "num_iterations_per_epoch",
    "nnUNet_missingmod_val_iterations_per_epoch": "num_val_iterations_per_epoch",
}


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers (whose state dict we save)."""
    if isinstance(module, DDP):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


@dataclass
class Auxiliary:
    """A module trained (or used) beside ``self.network``."""

    module: nn.Module
    optimizer: Optional[torch.optim.Optimizer] = None
    lr_scheduler: Optional[object] = None
    trainable: bool = True


class MissingModalityTrainer(nnUNetTrainer):
    """Base of the project's trainers; on its own it is nnUNetTrainer plus modality masking.

    Class attributes (override in a subclass):
        mask_modalities: insert the masking transform at all.
        subset_sampling: ``"uniform"`` over the 2^M - 1 subsets, or ``"independent"`` drops.
        modality_drop_probability: per-modality drop probability in ``"independent"`` mode.
        num_mask_views: masks drawn per sample (pairwise different); the image gets the first.
        keep_unmasked_image: also hand the unmasked image to ``train_step`` (``data_unmasked``).
    """

    mask_modalities: bool = True
    subset_sampling: str = "uniform"
    modality_drop_probability: float = 0.5
    num_mask_views: int = 1
    keep_unmasked_image: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.modalities = Modalities.from_dataset_json(dataset_json)
        if len(self.modalities) < 2:
            raise ValueError(
                f"{type(self).__name__} trains for missing modalities and needs at least two channels, but "
                f"dataset {self.plans_manager.dataset_name} has only {list(self.modalities.names)} "
                f"(dataset.json channel_names). Train it with nnUNetTrainer instead.")
        self.auxiliaries: dict[str, Auxiliary] = {}
        self._length_overrides = {}
        for variable, attribute in LENGTH_OVERRIDES.items():
            if os.environ.get(variable):
                try:
                    value = int(os.environ[variable])
                except ValueError:
                    raise ValueError(f"environment variable {variable} must be a positive integer, "
                                     f"got {os.environ[variable]!r}") from None
                if value < 1:
                    raise ValueError(f"environment variable {variable} must be a positive integer, got {value}")
                setattr(self, attribute, value)
                self._length_overrides[variable] = value

    def on_train_start(self):
        for variable, value in self._length_overrides.items():
            self.print_to_log_file(f"{variable}={value} shortens training ({LENGTH_OVERRIDES[variable]})")
        self.print_to_log_file(f"modalities: {', '.join(self.modalities.names)}; masking: "
                               f"{self.subset_sampling if self.mask_modalities else 'off'}")
        super().on_train_start()

    # --- data ----------------------------------------------------------------------------------

    def build_masking_transform(self) -> ModalityMaskingTransform:
        return ModalityMaskingTransform(
            num_modalities=len(self.modalities), mode=self.subset_sampling,
            drop_probability=self.modality_drop_probability, num_views=self.num_mask_views,
            keep_unmasked=self.keep_unmasked_image)

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        pipeline = nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
        if not self.mask_modalities:
            return pipeline
        # Right after the last image transform (intensity augmentations, mirroring, the brain mask)
        # and before the label transforms and the cascade's extra channels.
        position = next((i for i, t in enumerate(pipeline.transforms) if isinstance(t, RemoveLabelTransform)), None)
        if position is None:
            raise RuntimeError("nnU-Net's training pipeline has no RemoveLabelTransform; "
                               "nnunet_missingmod does not know where to insert modality masking")
        pipeline.transforms.insert(position, self.build_masking_transform())
        return pipeline

    def data_loader_class(self) -> type:
        """The loader nnU-Net's ``get_dataloaders`` builds; a subclass that carries more returns its own."""
        return ModalityMaskDataLoader

    def get_dataloaders(self):
        with loaders_of_class(self.data_loader_class()):
            return super().get_dataloaders()

    # --- auxiliary modules ---------------------------------------------------------------------

    def register_auxiliary(self, name: str, module: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                           lr_scheduler=None, trainable: bool = True) -> nn.Module:
        """Add a module that is checkpointed with the network. Call from ``initialize``.

        Build ``optimizer`` over the parameters of the module *before* it is returned wrapped in
        DDP (the wrapper shares the parameters). Returns the module to use in ``train_step``.
        """
        if name in self.auxiliaries:
            raise ValueError(f"auxiliary module {name!r} registered twice")
        module = module.to(self.device)
        if not trainable:
            module.requires_grad_(False).eval()
        elif self.is_ddp and any(p.requires_grad for p in module.parameters()):
            device_ids = [self.local_rank] if self.device.type == "cuda" else None  # CPU (gloo) DDP takes none
            module = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(module), device_ids=device_ids)
        self.auxiliaries[name] = Auxiliary(module, optimizer, lr_scheduler, trainable)
        return module

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for aux in self.auxiliaries.values():
            if aux.trainable:
                aux.module.train()
            if aux.lr_scheduler is not None:
                aux.lr_scheduler.step(self.current_epoch)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        """nnU-Net logs ``loss``; the epoch means of any other scalar ``train_step`` returns (the
        terms of a composite loss) go to the training log, averaged over DDP ranks."""
        super().on_train_epoch_end(train_outputs)
        terms = [k for k in train_outputs[0] if k != "loss" and np.isscalar(train_outputs[0][k])]
        if not terms:
            return
        means = np.array([np.mean([float(o[k]) for o in train_outputs]) for k in terms])
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
            means = np.mean(gathered, axis=0)
        self.print_to_log_file("loss terms: " + ", ".join(f"{k} {v:.4f}" for k, v in zip(terms, means)))

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        for aux in self.auxiliaries.values():
            aux.module.eval()

    # --- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if self.auxiliaries:
            checkpoint = torch.load(partial, map_location="cpu", weights_only=False)
            checkpoint["auxiliaries"] = {
                name: {
                    "weights": unwrap(aux.module).state_dict(),
                    "optimizer_state": aux.optimizer.state_dict() if aux.optimizer is not None else None,
                } for name, aux in self.auxiliaries.items()}
            torch.save(checkpoint, partial)
        os.replace(partial, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            # nnU-Net 2.8.1's load_checkpoint only accepts a path (a dict raises UnboundLocalError).
            raise TypeError("load_checkpoint expects the path of a checkpoint file")
        super().load_checkpoint(filename_or_checkpoint)
        if not self.auxiliaries:
            return
        saved = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False).get("auxiliaries", {})
        for name, aux in self.auxiliaries.items():
            if name not in saved:
                raise KeyError(f"checkpoint {filename_or_checkpoint} holds no auxiliary module {name!r} "
                               f"(it has {sorted(saved) or 'none'}); was it written by {type(self).__name__}?")
            unwrap(aux.module).load_state_dict(saved[name]["weights"])
            if aux.optimizer is not None and saved[name]["optimizer_state"] is not None:
                aux.optimizer.load_state_dict(saved[name]["optimizer_state"])
