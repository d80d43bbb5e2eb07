"""What every missing-modality trainer shares, on top of nnU-Net's own trainer.

- the modality vocabulary of the dataset, and a clear refusal of one-channel datasets;
- the masking transform in the training pipeline, after every intensity augmentation, and a data
  loader that hands ``modality_mask`` (and, on request, ``data_unmasked``) to ``train_step``;
- the one training step of every trainer: a method supplies its loss terms (``loss_terms``), the
  base does the device transfer, autocast, the backward pass through nnU-Net's GradScaler,
  gradient clipping per parameter group, the optimiser steps and the logging of every term,
  with each term's share of the step (:mod:`nnunet_missingmod.training.loss_monitor`);
- auxiliary modules (a teacher, a refinement head, a discriminator) with their own optimisers:
  moved to the device, wrapped for DDP, switched between train and eval with the network,
  stepped by the LR schedule, saved in and restored from nnU-Net's checkpoints;
- atomic checkpoint writes (a crash while saving never leaves a truncated checkpoint);
- seeded, repeatable training on request (``nnUNet_missingmod_seed`` or a ``seed`` attribute;
  :mod:`nnunet_missingmod.training.seeding`);
- a training length that tests and demos can shorten through environment variables, a model
  without test-time mirroring on request (``nnUNet_missingmod_disable_tta``) and a training that
  leaves nnU-Net's final validation to a later ``nnUNetv2_train --val``
  (``nnUNet_missingmod_skip_final_validation``);
- nnU-Net's CUDA path (compile, fp16 autocast, GradScaler) on the CPU on request, and the compile
  backend of every compiled module (:mod:`nnunet_missingmod.training.cuda_path`).

``self.network`` is always the network that ``nnUNetv2_predict`` deploys: nnU-Net writes it to
``network_weights``. nnU-Net's train loop is kept; only its hooks and ``train_step`` are
overridden. What this relies on inside nnU-Net is in :mod:`nnunet_missingmod.training.nnunet_internals`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_missingmod.masking import ModalityMaskingTransform
from nnunet_missingmod.modalities import Modalities
from nnunet_missingmod.training import cuda_path
from nnunet_missingmod.training.data_loader import ModalityMaskDataLoader
from nnunet_missingmod.training.loss_monitor import CLIPPED_PREFIX, GRADIENT_NORM_PREFIX, LossTermMonitor
from nnunet_missingmod.training.nnunet_internals import (dataloading_built_by, masking_position,
                                                         modules_compiled_by_nnunet, sgd_with_poly_lr)
from nnunet_missingmod.training.seeding import SEED_VARIABLE, derived_seed, seed_everything, seed_from_environment

# Environment variables that shorten training without a trainer variant per length. Meant for
# tests, demos and benchmarks; every override is written to the training log.
LENGTH_OVERRIDES = {
    "nnUNet_missingmod_num_epochs": "num_epochs",
    "nnUNet_missingmod_iterations_per_epoch": "num_iterations_per_epoch",
    "nnUNet_missingmod_val_iterations_per_epoch": "num_val_iterations_per_epoch",
}
# Set to 1: the model has no test-time mirroring (nnU-Net's ``--disable_tta``, made the model's
# default). nnU-Net's final validation then predicts each case once instead of 4-8 times, and so
# does every later prediction that takes its mirroring axes from the checkpoint. Training and its
# augmentation are unchanged. For tests, demos and studies that evaluate without mirroring anyway.
DISABLE_TTA_VARIABLE = "nnUNet_missingmod_disable_tta"
# Set to 1: nnUNetv2_train ends after its last epoch's checkpoint, without predicting the fold's
# validation cases (``nnUNetv2_train ... --val`` does that later, and is not skipped). For
# tests and studies that evaluate the model themselves: on 2 CPU cores the final validation's
# export pool and predictions were 7-10 s of a 17-s test training.
SKIP_FINAL_VALIDATION_VARIABLE = "nnUNet_missingmod_skip_final_validation"


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
    clip_gradients: bool = True  # clipped at the trainer's gradient_clip, as nnU-Net clips its network


class MissingModalityTrainer(nnUNetTrainer):
    """Base of the project's trainers; on its own it is nnUNetTrainer plus modality masking.

    Class attributes (override in a subclass):
        mask_modalities: insert the masking transform at all.
        subset_sampling: ``"uniform"`` over the 2^M - 1 subsets, or ``"independent"`` drops.
        modality_drop_probability: per-modality drop probability in ``"independent"`` mode.
        num_mask_views: masks drawn per sample (pairwise different); the image gets the first.
        keep_unmasked_image: also hand the unmasked image to ``train_step`` (``data_unmasked``).
        gradient_clip: the norm each parameter group's gradient is clipped to (nnU-Net's 12).
        seed: seed the training (weights, batches, augmentation, its workers); the environment
            variable ``nnUNet_missingmod_seed`` overrides it. None: unseeded, as nnU-Net.
        loss_monitor_budget: the share of training time spent measuring each loss term's gradient.

    A method trainer defines ``loss_terms(batch)`` (its weighted loss terms; the step minimises
    their sum) and registers its auxiliary modules in ``initialize``; the step is this class's.
    """

    mask_modalities: bool = True
    subset_sampling: str = "uniform"
    modality_drop_probability: float = 0.5
    num_mask_views: int = 1
    keep_unmasked_image: bool = False
    gradient_clip: float = 12.0
    loss_monitor_budget: float = 0.02
    seed: Optional[int] = None

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
        # decided once, as nnU-Net decides its own path: train_step reads these every step
        self.emulates_cuda_path = cuda_path.emulated(self.device)
        self.takes_cuda_path = self.device.type == "cuda" or self.emulates_cuda_path
        self.compiled = False  # set by initialize
        if self.emulates_cuda_path:
            self.grad_scaler = torch.amp.GradScaler(self.device.type)
        environment_seed = seed_from_environment()
        self.seed = environment_seed if environment_seed is not None else type(self).seed
        self.loss_monitor = LossTermMonitor(self.loss_monitor_budget)
        self.checkpoint_being_loaded: Optional[str] = None
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
        self.disables_tta = cuda_path.flag(DISABLE_TTA_VARIABLE)
        self.skips_final_validation = cuda_path.flag(SKIP_FINAL_VALIDATION_VARIABLE)
        self._trained_in_this_process = False

    def on_train_start(self):
        for variable, value in self._length_overrides.items():
            self.print_to_log_file(f"{variable}={value} shortens training ({LENGTH_OVERRIDES[variable]})")
        if self.disables_tta:
            self.print_to_log_file(f"{DISABLE_TTA_VARIABLE}=1: no test-time mirroring in the final validation "
                                   f"and in predictions from this model's checkpoints")
        self.print_to_log_file(f"modalities: {', '.join(self.modalities.names)}; masking: "
                               f"{self.subset_sampling if self.mask_modalities else 'off'}")
        self.print_to_log_file(f"seed: {self.seed} ({SEED_VARIABLE} or the trainer's seed attribute)"
                               if self.seed is not None else f"not seeded (set {SEED_VARIABLE} to repeat a run)")
        if self.emulates_cuda_path:
            self.print_to_log_file(f"{cuda_path.CUDA_PATH_VARIABLE}: nnU-Net's CUDA path on the CPU (fp16 autocast, "
                                   f"GradScaler, compile: {self.compiled})")
        if self.compiled:
            self.print_to_log_file(f"torch.compile backend: {cuda_path.compile_backend()}")
        super().on_train_start()

    def on_train_end(self):
        super().on_train_end()
        self._trained_in_this_process = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation, unless asked to skip the one that follows a training."""
        if self.skips_final_validation and self._trained_in_this_process:
            self.print_to_log_file(f"{SKIP_FINAL_VALIDATION_VARIABLE}=1: final validation skipped "
                                   f"(nnUNetv2_train ... --val runs it)")
            return
        super().perform_actual_validation(save_probabilities)

    # --- data ----------------------------------------------------------------------------------

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's choice; only the inference mirroring axes (saved in checkpoints) are dropped on request."""
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.disables_tta:
            self.inference_allowed_mirroring_axes = None
        return configured

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
        if self.mask_modalities:
            pipeline.transforms.insert(masking_position(pipeline), self.build_masking_transform())
        return pipeline

    def data_loader_class(self) -> type:
        """The loader nnU-Net's ``get_dataloaders`` builds; a subclass that carries more returns its own."""
        return ModalityMaskDataLoader

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.is_ddp else 0

    def initialize(self):
        if self.seed is not None and not self.was_initialized:  # before any network is built
            seed_everything(derived_seed(self.seed, self.rank))
        super().initialize()
        self.compiled = self._do_i_compile()
        if self.compiled:
            self._compile_with_chosen_backend()

    # --- the CUDA path -------------------------------------------------------------------------

    def _do_i_compile(self) -> bool:
        """nnU-Net's rule, and on the emulated CUDA path nnU-Net's rule for CUDA."""
        if self.emulates_cuda_path:
            return cuda_path.compile_requested()
        return super()._do_i_compile()

    def compile_module(self, module: nn.Module) -> nn.Module:
        """Compile ``module``'s forward in place with the chosen backend (parameter names, and so
        checkpoints, unchanged); for modules the trainer compiles itself, such as a teacher."""
        module.compile(backend=cuda_path.compile_backend())
        return module

    def _compile_with_chosen_backend(self) -> None:
        """nnU-Net compiled the network and its Dice loss with the default backend (inductor); the
        compilation is lazy, so wrapping the same modules again with another backend costs nothing."""
        backend = cuda_path.compile_backend()
        if backend == cuda_path.DEFAULT_BACKEND:
            return
        for holder, name in modules_compiled_by_nnunet(self):
            setattr(holder, name, torch.compile(getattr(holder, name)._orig_mod, backend=backend))

    def get_dataloaders(self):
        """nnU-Net's loaders, of ``data_loader_class()``; seeded ones draw their own stream per rank
        and start epoch, and come through workers taken in turn (a fixed batch order)."""
        seeded = self.seed is not None
        arguments = {"seed": self.seed, "stream": (self.rank, self.current_epoch)} if seeded else {}
        with dataloading_built_by(self.data_loader_class(), arguments, in_turn=seeded):
            return super().get_dataloaders()

    # --- optimisation ----------------------------------------------------------------------------

    def sgd(self, parameters):
        """nnU-Net's optimiser and LR schedule (SGD, Nesterov momentum 0.99, poly decay) for any
        parameters or parameter groups: the one recipe every network here is trained with."""
        return sgd_with_poly_lr(parameters, self.initial_lr, self.weight_decay, self.num_epochs)

    def configure_optimizers(self):
        return self.sgd(self.network.parameters())

    # --- auxiliary modules ---------------------------------------------------------------------

    def register_auxiliary(self, name: str, module: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                           lr_scheduler=None, trainable: bool = True, clip_gradients: bool = True) -> nn.Module:
        """Add a module that is checkpointed with the network. Call from ``initialize``.

        Build ``optimizer`` over the parameters of the module *before* it is returned wrapped in
        DDP (the wrapper shares the parameters). Its gradients are clipped at ``gradient_clip``
        unless ``clip_gradients`` is False. Returns the module to use in ``loss_terms``.
        """
        if name in self.auxiliaries:
            raise ValueError(f"auxiliary module {name!r} registered twice")
        module = module.to(self.device)
        if not trainable:
            module.requires_grad_(False).eval()
        elif self.is_ddp and any(p.requires_grad for p in module.parameters()):
            device_ids = [self.local_rank] if self.device.type == "cuda" else None  # CPU (gloo) DDP takes none
            module = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(module), device_ids=device_ids)
        self.auxiliaries[name] = Auxiliary(module, optimizer, lr_scheduler, trainable, clip_gradients)
        return module

    # --- the training step ---------------------------------------------------------------------

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one step on ``batch`` (already on the device); the step
        minimises their sum. Here nnU-Net's loss on the network's output, as nnUNetTrainer."""
        return {"segmentation": self.loss(self.network(batch["data"]), batch["target"])}

    def clip_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Parameter groups whose gradients are clipped separately: the network, as nnU-Net clips it,
        and every trainable auxiliary that asked to be."""
        groups = {"network": self.network.parameters()}
        groups.update({name: aux.module.parameters() for name, aux in self.auxiliaries.items()
                       if aux.optimizer is not None and aux.clip_gradients})
        return groups

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] + [aux.optimizer for aux in self.auxiliaries.values() if aux.optimizer is not None]

    def autocast(self):
        """nnU-Net's mixed precision: fp16 autocast on the CUDA path (real or emulated), full
        precision elsewhere."""
        if self.takes_cuda_path:
            return autocast(self.device.type, dtype=cuda_path.AUTOCAST_DTYPE, enabled=True)
        return dummy_context()

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's, under the same autocast as training (on CUDA the same as nnU-Net's own)."""
        with self.autocast():
            return super().validation_step(batch)

    def batch_to_device(self, batch: dict) -> dict:
        """Every tensor of the batch (and of its lists, such as deep-supervision targets) on the device."""
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(self.device, non_blocking=True)
            if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
                return [v.to(self.device, non_blocking=True) for v in value]
            return value
        return {key: move(value) for key, value in batch.items()}

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step for any sum of loss terms and any number of optimisers: one backward pass
        (through nnU-Net's GradScaler on CUDA), every group clipped, every optimiser stepped."""
        start = time.perf_counter()
        batch = self.batch_to_device(batch)
        optimizers = self.optimizers()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = self.loss_terms(batch)
        if "loss" in terms:
            raise ValueError(f"{type(self).__name__}.loss_terms returned a term named 'loss'; that name is the sum's")
        loss = sum(terms.values())

        scaler, sample = self.grad_scaler, self.loss_monitor.sample_due
        # a compiled graph is differentiated once: the loss monitor's sampled step recomputes it
        (loss if scaler is None else scaler.scale(loss)).backward(retain_graph=sample and not self.compiled)
        if scaler is not None:
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
        sampling = time.perf_counter()
        if sample:
            self.loss_monitor.sample(terms, self.network.parameters(), 1.0 if scaler is None else scaler.get_scale(),
                                     recompute=self._recompute_loss_terms(batch) if self.compiled else None)
        sampling = time.perf_counter() - sampling
        norms = {name: torch.nn.utils.clip_grad_norm_(parameters, self.gradient_clip)
                 for name, parameters in self.clip_groups().items()}
        for optimizer in optimizers:
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
        if scaler is not None:
            scaler.update()

        names = list(terms) + list(norms)
        values = torch.stack([v.detach().float() for v in (*terms.values(), *norms.values())]).cpu().tolist()
        result = {"loss": loss.detach().cpu().numpy(), **dict(zip(terms, values[:len(terms)]))}
        for name, norm in zip(names[len(terms):], values[len(terms):]):
            result[GRADIENT_NORM_PREFIX + name] = norm
            result[CLIPPED_PREFIX + name] = float(norm > self.gradient_clip)
        self.loss_monitor.add_training_time(time.perf_counter() - start - sampling)
        return result

    def _recompute_loss_terms(self, batch: dict):
        def recompute():
            with self.autocast():
                return self.loss_terms(batch)
        return recompute

    # --- epochs --------------------------------------------------------------------------------

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for aux in self.auxiliaries.values():
            if aux.trainable:
                aux.module.train()
            if aux.lr_scheduler is not None:
                aux.lr_scheduler.step(self.current_epoch)
        due = [self.loss_monitor.start_epoch()]
        if self.is_ddp:  # every rank samples the same step, or none does
            dist.broadcast_object_list(due, src=0)
            self.loss_monitor.sample_due = due[0]

    def on_train_epoch_end(self, train_outputs: list[dict]):
        """nnU-Net logs ``loss``; the epoch means of every term, the clip rates and the sampled
        gradient shares go to the training log and loss_terms.png, averaged over DDP ranks."""
        super().on_train_epoch_end(train_outputs)
        keys = [k for k in train_outputs[0] if k != "loss" and np.isscalar(train_outputs[0][k])]
        means = np.array([np.mean([float(o[k]) for o in train_outputs]) for k in keys])
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
            means = np.mean(gathered, axis=0)
        record = self.loss_monitor.end_epoch(self.current_epoch, dict(zip(keys, means.tolist())), self.gradient_clip)
        for line in self.loss_monitor.log_lines(record):
            self.print_to_log_file(line)
        if self.local_rank == 0:
            self.loss_monitor.plot(os.path.join(self.output_folder, "loss_terms.png"))

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
        checkpoint = torch.load(partial, map_location="cpu", weights_only=False)
        checkpoint["auxiliaries"] = {
            name: {
                "weights": unwrap(aux.module).state_dict(),
                "optimizer_state": aux.optimizer.state_dict() if aux.optimizer is not None else None,
            } for name, aux in self.auxiliaries.items()}
        checkpoint["loss_terms"] = self.loss_monitor.state_dict()
        torch.save(checkpoint, partial)
        os.replace(partial, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, then the auxiliaries and the loss-term history. ``initialize`` runs first, with
        ``self.checkpoint_being_loaded`` set, so that a trainer can build what the checkpoint holds."""
        if not isinstance(filename_or_checkpoint, str):
            # nnU-Net 2.8.1's load_checkpoint only accepts a path (a dict raises UnboundLocalError).
            raise TypeError("load_checkpoint expects the path of a checkpoint file")
        self.checkpoint_being_loaded = filename_or_checkpoint
        try:
            if not self.was_initialized:
                self.initialize()
        finally:
            self.checkpoint_being_loaded = None
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        if "loss_terms" in checkpoint:
            self.loss_monitor.load_state_dict(checkpoint["loss_terms"])
        saved = checkpoint.get("auxiliaries", {})
        for name, aux in self.auxiliaries.items():
            if name not in saved:
                raise KeyError(f"checkpoint {filename_or_checkpoint} holds no auxiliary module {name!r} "
                               f"(it has {sorted(saved) or 'none'}); was it written by {type(self).__name__}?")
            unwrap(aux.module).load_state_dict(saved[name]["weights"])
            if aux.optimizer is not None and saved[name]["optimizer_state"] is not None:
                aux.optimizer.load_state_dict(saved[name]["optimizer_state"])
