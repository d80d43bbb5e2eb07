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
optimiser and schedule), as MST-KDNet's code does;
``MSTKDFrozenTeacherTrainer`` loads a trained full-modality model named by the environment variable
``nnUNet_missingmod_teacher`` and keeps it fixed (one forward per step).
``self.network`` is the student: nnU-Net saves it as ``network_weights`` and ``nnUNetv2_predict``
runs it. See docs/mstkd.md.

Loss weights under nnU-Net's SGD. MST-KDNet trains with Adam, which is blind to a constant factor
on a loss; under SGD a factor is a learning-rate change. The code's 0.4 on the teacher's
segmentation (the only term that trains a detached teacher) would train it at 0.4 times nnU-Net's
rate, and its 0.6 on the student's at 0.6 times. So both segmentation weights are 1 and every
distillation weight is the code's divided by 0.6, which keeps the code's ratio of each
distillation term to the student's segmentation. ``MSTKDTrainerOfficialWeights`` keeps the code's
numbers (and its schedule: only the probability MSE ramped up) for comparison.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from nnunet_missingmod.losses.attention_distillation import extreme_value_attention_loss, multiscale_feature_loss
from nnunet_missingmod.losses.logit_distillation import logit_kl, probability_mse, sigmoid_rampup
from nnunet_missingmod.losses.style import cross_layer_gram_loss, discriminator_loss, style_adversarial_loss
from nnunet_missingmod.networks.style_discriminator import StyleDiscriminator
from nnunet_missingmod.networks.transformer_unet import TransformerBottleneckUNet
from nnunet_missingmod.training.base import MissingModalityTrainer, unwrap
from nnunet_missingmod.training.mstkd_teacher import (TEACHER_VARIABLE, FrozenTeacher, load_teacher_checkpoint,
                                                      recipe_from_student_checkpoint, recipe_mismatches,
                                                      resolve_teacher_checkpoint)

__all__ = ["MSTKDTrainer", "MSTKDFrozenTeacherTrainer", "MSTKDTeacherTrainer", "MSTKDTrainerOfficialWeights",
           "MSTKDTrainerNoTransformerKD", "MSTKDTrainerNoLogitKD", "MSTKDTrainerNoStyleMatching"]

# MST-KDNet's code: L = 0.4 seg(teacher) + 0.6 seg(student) + distillation terms, under Adam.
OFFICIAL_STUDENT_SEGMENTATION_WEIGHT = 0.6
OFFICIAL_TEACHER_SEGMENTATION_WEIGHT = 0.4
OFFICIAL_DISTILLATION_WEIGHTS = {"kl": 1.0, "probability_mse": 10.0, "attention": 1e8 / 120 ** 4,
                                 "multiscale_features": 0.2, "gram": 1.0, "adversarial": 2e-4}
DISTILLATION_TERMS = tuple(OFFICIAL_DISTILLATION_WEIGHTS)


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


def _calibrated(term: str) -> float:
    """The code's weight of a distillation term relative to the student's segmentation weight."""
    return OFFICIAL_DISTILLATION_WEIGHTS[term] / OFFICIAL_STUDENT_SEGMENTATION_WEIGHT


class MSTKDTrainer(TransformerBottleneckArchitecture, MissingModalityTrainer):
    """MST-KDNet with a jointly trained teacher. Loss weights are class attributes; 0 switches a term off.

    Attributes:
        teacher_mode: ``"joint"`` (teacher trained alongside, from scratch) or ``"frozen"``
            (a trained model from ``nnUNet_missingmod_teacher``, fixed).
        detach_teacher: distillation terms move the student only (the paper's teacher -> student
            direction). False lets them pull the joint teacher too, as MST-KDNet's code does.
        teacher_segmentation_weight, student_segmentation_weight: nnU-Net's deep-supervised loss;
            1 trains each network at nnU-Net's learning rate.
        attention_weight: extreme-value attention distillation (in token-count-free units; the
            code's 1e8 at its 120 tokens is 1e8 / 120**4, here divided by 0.6 as every distillation weight).
        multiscale_feature_weight: MSE on the multi-scale transformer features.
        kl_weight, kl_temperature: standardised logit KL.
        kl_standardize: standardise the logits before the KL (the official code does; False gives
            the plain temperature KL this port used before, kept to measure what it did).
        probability_mse_weight: MSE between probabilities.
        gram_weight: cross-layer Gram matching of the bottleneck features.
        adversarial_weight: the student's adversarial style term; 0 also removes the discriminator.
        distillation_rampup, ramped_terms: these terms' weights ramp up (sigmoid) over this fraction
            of the epochs (the code: 20 of 100 epochs), so that the student does not copy an
            untrained joint teacher at full weight.
        discriminator_lr, discriminator_betas: the discriminator's Adam, kept for the whole run.
    """

    keep_unmasked_image = True

    teacher_mode: str = "joint"
    detach_teacher: bool = True
    teacher_segmentation_weight: float = 1.0
    student_segmentation_weight: float = 1.0
    attention_weight: float = _calibrated("attention")
    multiscale_feature_weight: float = _calibrated("multiscale_features")
    kl_weight: float = _calibrated("kl")
    kl_temperature: float = 7.0
    kl_standardize: bool = True
    probability_mse_weight: float = _calibrated("probability_mse")
    gram_weight: float = _calibrated("gram")
    adversarial_weight: float = _calibrated("adversarial")
    distillation_rampup: float = 0.2
    ramped_terms: tuple = DISTILLATION_TERMS
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
            # not clipped: MST-KDNet's discriminator is not, and its Adam step is bounded anyway
            self.discriminator = self.register_auxiliary("discriminator", critic, self.discriminator_optimizer,
                                                         clip_gradients=False)

    def _initialize_joint_teacher(self) -> None:
        teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        if self.compiled:
            self.compile_module(teacher)  # in place: parameter names (and checkpoints) are unchanged
        # the teacher gets nnU-Net's own optimiser and schedule, like the student
        self.teacher_optimizer, schedule = self.sgd(teacher.parameters())
        self.teacher = self.register_auxiliary("teacher", teacher, self.teacher_optimizer, schedule)
        self.teacher_provides_features = True

    def _initialize_frozen_teacher(self) -> None:
        weights, recipe = None, None
        if self.checkpoint_being_loaded is not None:  # resuming: the teacher saved with the student
            recipe = recipe_from_student_checkpoint(self.checkpoint_being_loaded)
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
        if self.compiled:
            self.compile_module(network)
        self.teacher = self.register_auxiliary("teacher", teacher, trainable=False)

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
        weights = ", ".join(f"{name} {weight:.4g}" for name, weight in self.loss_weights().items() if weight)
        self.print_to_log_file(f"MST-KD teacher: {teacher}")
        self.print_to_log_file(f"MST-KD loss weights (epoch {self.current_epoch}): {weights}; ramped up over "
                               f"{self.distillation_rampup:.0%} of the epochs: {', '.join(self.ramped_terms)}")

    # --- losses ----------------------------------------------------------------------------------

    def loss_weights(self) -> dict[str, float]:
        """The weight of every loss term at the current epoch."""
        ramp = sigmoid_rampup(self.current_epoch, self.distillation_rampup * self.num_epochs)
        features = self.teacher_provides_features
        weights = {"segmentation_student": self.student_segmentation_weight,
                   "segmentation_teacher": self.teacher_segmentation_weight if self.teacher_mode == "joint" else 0.0,
                   "kl": self.kl_weight, "probability_mse": self.probability_mse_weight,
                   "attention": self.attention_weight if features else 0.0,
                   "multiscale_features": self.multiscale_feature_weight if features else 0.0,
                   "gram": self.gram_weight if features else 0.0,
                   "adversarial": self.adversarial_weight if self.discriminator is not None else 0.0}
        for term in self.ramped_terms:
            weights[term] *= ramp
        return weights

    def distillation_terms(self, student_output, student_features, teacher_output, teacher_features) -> dict:
        """Unweighted distillation terms (those switched on) from the two networks' outputs."""
        if self.detach_teacher or self.teacher_mode == "frozen":
            teacher_output, teacher_features = detached(teacher_output), detached(teacher_features)
        regions = self.label_manager.has_regions
        student_logits, teacher_logits = highest_resolution(student_output), highest_resolution(teacher_output)
        terms = {}
        if self.kl_weight:
            terms["kl"] = logit_kl(teacher_logits, student_logits, regions, self.kl_temperature, self.kl_standardize)
        if self.probability_mse_weight:
            terms["probability_mse"] = probability_mse(teacher_logits, student_logits, regions)
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

    def _teacher_forward(self, image: torch.Tensor):
        if self.teacher_mode == "joint":
            return self.teacher(image, return_features=True)
        with torch.no_grad():
            return self.teacher(image)

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each network's segmentation, every distillation term (weighted as ``loss_weights``), and
        the discriminator's own loss on detached features (weight 1; only it reaches the
        discriminator, and it reaches nothing else)."""
        student_output, student_features = self.network(batch["data"], return_features=True)
        teacher_output, teacher_features = self._teacher_forward(batch["data_unmasked"])
        weights = self.loss_weights()
        terms = {"segmentation_student": self.loss(student_output, batch["target"])}
        if self.teacher_mode == "joint":
            terms["segmentation_teacher"] = self.loss(teacher_output, batch["target"])
        terms.update(self.distillation_terms(student_output, student_features, teacher_output, teacher_features))
        terms = {name: weights[name] * value for name, value in terms.items()}
        if self.discriminator is not None:
            teacher_style, student_style = teacher_features.style[1].detach(), student_features.style[1].detach()
            logits = self.discriminator(torch.cat([teacher_style, student_style]))  # one forward: one DDP reduction
            terms["discriminator"] = discriminator_loss(*logits.split(teacher_style.shape[0]))
        return terms


class MSTKDFrozenTeacherTrainer(MSTKDTrainer):
    """MST-KDNet distilling from a trained, fixed teacher named by ``nnUNet_missingmod_teacher``."""

    teacher_mode = "frozen"


class MSTKDTeacherTrainer(TransformerBottleneckArchitecture, MissingModalityTrainer):
    """nnU-Net training of MST-KDNet's network on every modality: a teacher for MSTKDFrozenTeacherTrainer."""

    mask_modalities = False


class MSTKDTrainerOfficialWeights(MSTKDTrainer):
    """MST-KDNet's loss weights and schedule as its code sets them for Adam: teacher 0.4, student 0.6,
    the distillation weights unscaled, only the probability MSE ramped up. For comparison: under
    nnU-Net's SGD this trains the teacher at 0.4 and the student's segmentation at 0.6 of nnU-Net's
    learning rate."""

    teacher_segmentation_weight = OFFICIAL_TEACHER_SEGMENTATION_WEIGHT
    student_segmentation_weight = OFFICIAL_STUDENT_SEGMENTATION_WEIGHT
    attention_weight = OFFICIAL_DISTILLATION_WEIGHTS["attention"]
    multiscale_feature_weight = OFFICIAL_DISTILLATION_WEIGHTS["multiscale_features"]
    kl_weight = OFFICIAL_DISTILLATION_WEIGHTS["kl"]
    probability_mse_weight = OFFICIAL_DISTILLATION_WEIGHTS["probability_mse"]
    gram_weight = OFFICIAL_DISTILLATION_WEIGHTS["gram"]
    adversarial_weight = OFFICIAL_DISTILLATION_WEIGHTS["adversarial"]
    ramped_terms = ("probability_mse",)


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
