"""MSTKDTrainer: MST-KDNet (multi-scale transformer knowledge distillation) on nnU-Net.

A teacher sees every modality, a student the masked image of the same augmented batch; both are
the plans' U-Net with a transformer stack on the bottleneck tokens. The student learns nnU-Net's
segmentation loss plus, from the teacher:

- multi-scale transformer KD: extreme-value attention distillation and an MSE on the transformer
  features decoded to several U-Net scales;
- dual-mode logit distillation: a temperature KL on standardised logits and an MSE between
  probabilities whose weight ramps up over the epochs;
- global style matching: cross-layer Gram matrices of the bottleneck features, and an adversarial
  style discriminator trained beside the networks.

Teacher modes: ``MSTKDTrainer`` trains the teacher jointly from scratch (its own nnU-Net
optimiser and schedule, segmentation weight 0.4), as MST-KDNet's code does;
``MSTKDFrozenTeacherTrainer`` loads a trained full-modality model named by the environment variable
``nnUNet_missingmod_teacher`` and keeps it fixed (one forward per step).
``self.network`` is the student: nnU-Net saves it as ``network_weights`` and ``nnUNetv2_predict``
runs it. See docs/mstkd.md.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from nnunet_missingmod.losses.attention_distillation import extreme_value_attention_loss, multiscale_feature_loss
from nnunet_missingmod.losses.logit_distillation import logit_kl, probability_mse, sigmoid_rampup
from nnunet_missingmod.losses.style import cross_layer_gram_loss, discriminator_loss, style_adversarial_loss
from nnunet_missingmod.networks.style_discriminator import StyleDiscriminator
from nnunet_missingmod.networks.transformer_unet import TransformerBottleneckUNet
from nnunet_missingmod.training.base import MissingModalityTrainer, unwrap
from nnunet_missingmod.training.mstkd_teacher import (TEACHER_VARIABLE, FrozenTeacher, load_teacher_checkpoint,
                                                      recipe_from_student_checkpoint, recipe_mismatches,
                                                      resolve_teacher_checkpoint)

__all__ = ["MSTKDTrainer", "MSTKDFrozenTeacherTrainer", "MSTKDTeacherTrainer", "MSTKDTrainerNoTransformerKD",
           "MSTKDTrainerNoLogitKD", "MSTKDTrainerNoStyleMatching"]

GRADIENT_CLIP = 12  # nnU-Net's


def highest_resolution(output):
    """The full-resolution logits of a network output (a list under deep supervision)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def detached(value):
    """``value`` with every tensor in it (lists, tuples, named tuples) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(detached(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    return value


class TransformerBottleneckArchitecture:
    """The plans' U-Net with MST-KDNet's transformer bottleneck as a trainer's network.

    ``build_network_architecture`` is a class method so that a variant with other transformer
    settings also predicts with them (nnU-Net's predictor calls it on the checkpoint's trainer).
    """

    transformer_depth: int = 12
    transformer_heads: int = 8  # the width is the bottleneck's channel count (320 in nnU-Net's 3D plans)
    transformer_mlp_ratio: float = 8 / 3  # MST-KDNet's 2048 / 768
    distilled_depths: tuple = (3, 6, 9, 12)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return TransformerBottleneckUNet.from_plans(
            configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision,
            depth=cls.transformer_depth, heads=cls.transformer_heads, mlp_ratio=cls.transformer_mlp_ratio,
            distilled_depths=cls.distilled_depths)


class MSTKDTrainer(TransformerBottleneckArchitecture, MissingModalityTrainer):
    """MST-KDNet with a jointly trained teacher. Loss weights are class attributes; 0 switches a term off.

    Attributes:
        teacher_mode: ``"joint"`` (teacher trained alongside, from scratch) or ``"frozen"``
            (a trained model from ``nnUNet_missingmod_teacher``, fixed).
        detach_teacher: distillation terms move the student only (the paper's teacher -> student
            direction). False lets them pull the joint teacher too, as MST-KDNet's code does.
        teacher_segmentation_weight, student_segmentation_weight: nnU-Net's deep-supervised loss.
        attention_weight: extreme-value attention distillation (in token-count-free units;
            1e8 / 120**4 is the paper's 1e8 at its 120 tokens).
        multiscale_feature_weight: MSE on the multi-scale transformer features.
        kl_weight, kl_temperature: logit KL (standardised for >= 3 softmax classes).
        probability_mse_weight, probability_mse_rampup: MSE between probabilities, its weight ramped
            up (sigmoid) over this fraction of the epochs (the paper: 20 of 100 epochs).
        gram_weight: cross-layer Gram matching of the bottleneck features.
        adversarial_weight: the student's adversarial style term; 0 also removes the discriminator.
        discriminator_lr, discriminator_betas: the discriminator's Adam, kept for the whole run.
    """

    keep_unmasked_image = True

    teacher_mode: str = "joint"
    detach_teacher: bool = True
    teacher_segmentation_weight: float = 0.4
    student_segmentation_weight: float = 0.6
    attention_weight: float = 1e8 / 120 ** 4
    multiscale_feature_weight: float = 0.2
    kl_weight: float = 1.0
    kl_temperature: float = 7.0
    probability_mse_weight: float = 10.0
    probability_mse_rampup: float = 0.2
    gram_weight: float = 1.0
    adversarial_weight: float = 2e-4
    discriminator_lr: float = 1e-4
    discriminator_betas: tuple = (0.9, 0.99)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.teacher_mode not in ("joint", "frozen"):
            raise ValueError(f"{type(self).__name__}.teacher_mode must be 'joint' or 'frozen', "
                             f"got {self.teacher_mode!r}")
        if self.teacher_mode == "joint" and self.teacher_segmentation_weight <= 0:
            raise ValueError(f"{type(self).__name__}: a jointly trained teacher learns from its segmentation loss; "
                             f"teacher_segmentation_weight must be > 0")
        self.teacher: Optional[nn.Module] = None
        self.teacher_optimizer: Optional[torch.optim.Optimizer] = None
        self.discriminator: Optional[nn.Module] = None
        self.discriminator_optimizer: Optional[torch.optim.Optimizer] = None
        self.teacher_provides_features = False
        self._checkpoint_being_loaded: Optional[str] = None

    # --- set-up ----------------------------------------------------------------------------------

    def initialize(self):
        super().initialize()
        if self.teacher_mode == "joint":
            self._initialize_joint_teacher()
        else:
            self._initialize_frozen_teacher()
        if self.adversarial_weight > 0 and self.teacher_provides_features:
            student = unwrap(self.network)
            critic = StyleDiscriminator(student.encoder.output_channels[-1], student.encoder.conv_op)
            self.discriminator_optimizer = torch.optim.Adam(critic.parameters(), self.discriminator_lr,
                                                            betas=self.discriminator_betas)
            self.discriminator = self.register_auxiliary("discriminator", critic, self.discriminator_optimizer)

    def _initialize_joint_teacher(self) -> None:
        teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        if self._do_i_compile():
            teacher.compile()  # compiles forward in place; parameter names (and checkpoints) are unchanged
        # the teacher gets nnU-Net's own optimiser and schedule, like the student
        self.teacher_optimizer = torch.optim.SGD(teacher.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                                 momentum=0.99, nesterov=True)
        schedule = PolyLRScheduler(self.teacher_optimizer, self.initial_lr, self.num_epochs)
        self.teacher = self.register_auxiliary("teacher", teacher, self.teacher_optimizer, schedule)
        self.teacher_provides_features = True

    def _initialize_frozen_teacher(self) -> None:
        weights, recipe = None, None
        if self._checkpoint_being_loaded is not None:  # resuming: the teacher saved with the student
            recipe = recipe_from_student_checkpoint(self._checkpoint_being_loaded)
        if recipe is None:
            value = os.environ.get(TEACHER_VARIABLE)
            if not value:
                raise RuntimeError(
                    f"{type(self).__name__} distils from a trained full-modality model: set {TEACHER_VARIABLE} to its "
                    f"checkpoint file, fold folder or model folder (e.g. $nnUNet_results/<dataset>/"
                    f"MSTKDTeacherTrainer__nnUNetPlans__{self.configuration_name})")
            recipe, weights = load_teacher_checkpoint(resolve_teacher_checkpoint(value, self.fold))
        problems = recipe_mismatches(recipe, self.configuration_manager, self.dataset_json)
        if problems:
            raise ValueError(f"{TEACHER_VARIABLE}: the teacher {recipe.source} was not trained on this data: "
                             + "; ".join(problems))
        network = recipe.build_network()
        if weights is not None:
            network.load_state_dict(weights)
        teacher = FrozenTeacher(network, recipe)
        self.teacher_provides_features = teacher.provides_features
        if self.teacher_provides_features and network.geometry != unwrap(self.network).geometry:
            raise ValueError(f"{TEACHER_VARIABLE}: the teacher {recipe.source} ({recipe.trainer_name}) has a "
                             f"transformer bottleneck unlike the student's: {network.geometry} vs "
                             f"{unwrap(self.network).geometry}")
        if self._do_i_compile():
            network.compile()
        self.teacher = self.register_auxiliary("teacher", teacher, trainable=False)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # initialize() runs inside nnU-Net's load_checkpoint: let a frozen teacher be rebuilt from the
        # checkpoint being resumed rather than from the environment
        self._checkpoint_being_loaded = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else None
        try:
            super().load_checkpoint(filename_or_checkpoint)
        finally:
            self._checkpoint_being_loaded = None

    def on_train_start(self):
        super().on_train_start()
        if self.teacher_mode == "joint":
            teacher = "trained jointly from scratch"
        else:
            recipe = unwrap(self.teacher).recipe
            teacher = f"frozen, {recipe.trainer_name} from {recipe.source}"
            if not self.teacher_provides_features:
                teacher += ("; it has no transformer bottleneck, so only the segmentation and logit terms apply "
                            "(train the teacher with MSTKDTeacherTrainer for all of MST-KD)")
        weights = ", ".join(f"{name} {weight:g}" for name, weight in self.loss_weights().items() if weight)
        self.print_to_log_file(f"MST-KD teacher: {teacher}")
        self.print_to_log_file(f"MST-KD loss weights (epoch {self.current_epoch}): {weights}")

    # --- losses ----------------------------------------------------------------------------------

    def loss_weights(self) -> dict[str, float]:
        """The weight of every loss term at the current epoch."""
        ramp = sigmoid_rampup(self.current_epoch, self.probability_mse_rampup * self.num_epochs)
        weights = {"segmentation_student": self.student_segmentation_weight,
                   "segmentation_teacher": self.teacher_segmentation_weight if self.teacher_mode == "joint" else 0.0,
                   "kl": self.kl_weight, "probability_mse": self.probability_mse_weight * ramp}
        features = self.teacher_provides_features
        weights.update({"attention": self.attention_weight if features else 0.0,
                        "multiscale_features": self.multiscale_feature_weight if features else 0.0,
                        "gram": self.gram_weight if features else 0.0,
                        "adversarial": self.adversarial_weight if self.discriminator is not None else 0.0})
        return weights

    def distillation_terms(self, student_output, student_features, teacher_output, teacher_features) -> dict:
        """Unweighted distillation terms (those switched on) from the two networks' outputs."""
        if self.detach_teacher or self.teacher_mode == "frozen":
            teacher_output, teacher_features = detached(teacher_output), detached(teacher_features)
        regions = self.label_manager.has_regions
        student_logits, teacher_logits = highest_resolution(student_output), highest_resolution(teacher_output)
        terms = {}
        if self.kl_weight:
            terms["kl"] = logit_kl(student_logits, teacher_logits, regions, self.kl_temperature)
        if self.probability_mse_weight:
            terms["probability_mse"] = probability_mse(student_logits, teacher_logits, regions)
        if teacher_features is None:
            return terms
        if self.attention_weight:
            terms["attention"] = extreme_value_attention_loss(student_features.attention, teacher_features.attention)
        if self.multiscale_feature_weight:
            terms["multiscale_features"] = multiscale_feature_loss(student_features.multiscale,
                                                                   teacher_features.multiscale)
        if self.gram_weight:
            terms["gram"] = cross_layer_gram_loss(student_features.style, teacher_features.style)
        if self.discriminator is not None:
            terms["adversarial"] = style_adversarial_loss(self._criticise_without_update(student_features.style[1]))
        return terms

    def _criticise_without_update(self, features: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits with its parameters held constant: the gradient reaches the
        student's features only (and no DDP hook of the discriminator fires)."""
        critic = unwrap(self.discriminator)
        constant = {name: p.detach() for name, p in critic.named_parameters()}
        return torch.func.functional_call(critic, constant, (features,))

    # --- training step ---------------------------------------------------------------------------

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _teacher_forward(self, image: torch.Tensor):
        if self.teacher_mode == "joint":
            return self.teacher(image, return_features=True)
        with torch.no_grad():
            return self.teacher(image)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        full = batch["data_unmasked"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)

        optimizers, modules = [self.optimizer], [self.network]
        if self.teacher_optimizer is not None:
            optimizers.append(self.teacher_optimizer)
            modules.append(self.teacher)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

        with self._autocast():
            student_output, student_features = self.network(data, return_features=True)
            teacher_output, teacher_features = self._teacher_forward(full)
            terms = {"segmentation_student": self.loss(student_output, target)}
            if self.teacher_mode == "joint":
                terms["segmentation_teacher"] = self.loss(teacher_output, target)
            terms.update(self.distillation_terms(student_output, student_features, teacher_output, teacher_features))
            weights = self.loss_weights()
            loss = sum(weights[name] * value for name, value in terms.items())

        scaler = self.grad_scaler  # one scaler for every optimiser, updated once per step
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
        for module in modules:
            torch.nn.utils.clip_grad_norm_(module.parameters(), GRADIENT_CLIP)
        for optimizer in optimizers:
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)

        if self.discriminator is not None:
            terms["discriminator"] = self._discriminator_step(teacher_features.style[1], student_features.style[1])
        if scaler is not None:
            scaler.update()

        names = list(terms)
        values = torch.stack([terms[n].detach().float() for n in names]).cpu().tolist()
        return {"loss": loss.detach().cpu().numpy(), **dict(zip(names, values))}

    def _discriminator_step(self, teacher_style: torch.Tensor, student_style: torch.Tensor) -> torch.Tensor:
        """One update of the style discriminator on detached features (one forward: one DDP reduction)."""
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.discriminator(torch.cat([teacher_style.detach(), student_style.detach()]))
            loss = discriminator_loss(*logits.split(teacher_style.shape[0]))
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.discriminator_optimizer)
        else:
            loss.backward()
            self.discriminator_optimizer.step()
        return loss.detach()


class MSTKDFrozenTeacherTrainer(MSTKDTrainer):
    """MST-KDNet distilling from a trained, fixed teacher named by ``nnUNet_missingmod_teacher``."""

    teacher_mode = "frozen"


class MSTKDTeacherTrainer(TransformerBottleneckArchitecture, MissingModalityTrainer):
    """nnU-Net training of MST-KDNet's network on every modality: a teacher for MSTKDFrozenTeacherTrainer."""

    mask_modalities = False


class MSTKDTrainerNoTransformerKD(MSTKDTrainer):
    """The paper's "w/o MS-TKD" ablation: no attention or transformer-feature distillation."""

    attention_weight = 0.0
    multiscale_feature_weight = 0.0


class MSTKDTrainerNoLogitKD(MSTKDTrainer):
    """The paper's "w/o SLKD" ablation: no logit KL or probability MSE."""

    kl_weight = 0.0
    probability_mse_weight = 0.0


class MSTKDTrainerNoStyleMatching(MSTKDTrainer):
    """The paper's "w/o GSME" ablation (what MST-KDNet's released script trains): no Gram or adversarial term."""

    gram_weight = 0.0
    adversarial_weight = 0.0
