"""MSTKDTrainer: real nnU-Net commands on the synthetic dataset, both teacher modes, every loss term
on hand-made tensors, the network built from plans (3D and 2D, plain and residual encoders), the
direction of every gradient, and DDP."""

import copy
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from conftest import (CONFIGURATION, DATASET_ID, DATASET_NAME, clean_env, load_json, make_trainer, run, training_env,
                      training_log)
from nnunet_missingmod.losses.attention_distillation import extreme_value_attention_loss, multiscale_feature_loss
from nnunet_missingmod.losses.logit_distillation import logit_kl, probability_mse, sigmoid_rampup, standardize_logits
from nnunet_missingmod.losses.style import (cross_layer_gram, cross_layer_gram_loss, discriminator_loss,
                                            style_adversarial_loss)
from nnunet_missingmod.networks.style_discriminator import StyleDiscriminator
from nnunet_missingmod.networks.transformer_unet import TransformerBottleneckUNet
from nnunet_missingmod.training import MSTKDFrozenTeacherTrainer, MSTKDTeacherTrainer, MSTKDTrainer
from nnunet_missingmod.training.base import unwrap
from nnunet_missingmod.training.mstkd_teacher import TEACHER_VARIABLE

TERMS = ["segmentation_student", "segmentation_teacher", "kl", "probability_mse", "attention", "multiscale_features",
         "gram", "adversarial", "discriminator"]


def short_training(folders, epochs, **extra):
    """conftest's training_env with one iteration per epoch: an MST-KD iteration trains two networks."""
    return training_env(folders, epochs, nnUNet_missingmod_iterations_per_epoch=1, **extra)


def model_folder(nnunet_folders, trainer):
    return os.path.join(nnunet_folders["nnUNet_results"], DATASET_NAME, f"{trainer}__nnUNetPlans__{CONFIGURATION}")


def fold_0_log(folder):
    return training_log(os.path.join(folder, "fold_0"))


def checkpoint(folder):
    return torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)


# --- fixtures: models trained by nnU-Net's commands ------------------------------------------------

@pytest.fixture(scope="module")
def joint_model(nnunet_folders, preprocessed):
    """nnUNetv2_train -tr MSTKDTrainer: one epoch, then resumed with --c to a second (one iteration each)."""
    command = ["nnUNetv2_train", DATASET_ID, CONFIGURATION, "0", "-tr", "MSTKDTrainer", "-device", "cpu"]
    run(command, short_training(nnunet_folders, epochs=1))
    run(command + ["--c"], short_training(nnunet_folders, epochs=2))
    return model_folder(nnunet_folders, "MSTKDTrainer")


@pytest.fixture(scope="module")
def teacher_folder(preprocessed, tmp_path_factory):
    """A full-modality teacher model folder as nnU-Net writes it, with MSTKDTeacherTrainer's network.
    Its weights are the initial ones: what is tested is loading and freezing, not its accuracy."""
    folder = tmp_path_factory.mktemp("teacher") / f"MSTKDTeacherTrainer__nnUNetPlans__{CONFIGURATION}"
    os.makedirs(folder / "fold_0")
    torch.manual_seed(1)
    trainer = make_trainer(MSTKDTeacherTrainer, preprocessed)
    trainer.initialize()
    trainer.save_checkpoint(str(folder / "fold_0" / "checkpoint_final.pth"))
    return folder


@pytest.fixture(scope="module")
def frozen_model(nnunet_folders, preprocessed, teacher_folder):
    """nnUNetv2_train -tr MSTKDFrozenTeacherTrainer, the teacher named by its model folder."""
    run(["nnUNetv2_train", DATASET_ID, CONFIGURATION, "0", "-tr", "MSTKDFrozenTeacherTrainer", "-device", "cpu"],
        short_training(nnunet_folders, epochs=1, **{TEACHER_VARIABLE: teacher_folder}))
    return model_folder(nnunet_folders, "MSTKDFrozenTeacherTrainer")


def loss_terms_of(step_output: dict) -> set:
    """The loss terms a train_step reported (without the clip statistics)."""
    return {k for k in step_output if not k.startswith(("gradient_norm/", "clipped/"))}


def one_sample_batch(trainer):
    """A batch as the data loader hands it to ``train_step`` (region targets at every deep-supervision
    scale, T1ce and T2 masked), one sample: cheaper than loading and augmenting two."""
    torch.manual_seed(0)
    patch = np.array(trainer.configuration_manager.patch_size)
    full = torch.randn(1, 4, *patch)
    masked = full * torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 4, 1, 1, 1)
    regions = len(trainer.label_manager.foreground_regions)
    target = [(torch.rand(1, regions, *np.round(patch * scale).astype(int)) > 0.9).float()
              for scale in trainer._get_deep_supervision_scales()]
    return {"data": masked, "data_unmasked": full, "target": target,
            "modality_mask": torch.tensor([[[True, False, False, True]]])}


# --- the real commands ------------------------------------------------------------------------------

def test_joint_training_resumes_with_every_state(joint_model, preprocessed):
    log = fold_0_log(joint_model)
    assert "MST-KD teacher: trained jointly from scratch" in log
    saved = checkpoint(joint_model)
    assert saved["trainer_name"] == "MSTKDTrainer" and saved["current_epoch"] == 2
    history = saved["loss_terms"]["history"]  # one record per epoch, kept through --c
    assert [epoch["epoch"] for epoch in history] == [0, 1] and set(history[-1]["values"]) == set(TERMS)
    assert set(history[-1]["clipped_fraction"]) == {"network", "teacher"}  # the discriminator is not clipped
    assert set(history[0]["gradient_shares"]) == set(TERMS)
    assert set(saved["auxiliaries"]) == {"teacher", "discriminator"}
    # One discriminator step per iteration, one iteration per epoch: its Adam state lived through
    # both steps and through --c (a fresh optimiser on resume would count 1).
    adam = saved["auxiliaries"]["discriminator"]["optimizer_state"]["state"]
    assert adam and all(int(s["step"]) == 2 for s in adam.values())
    teacher_sgd = saved["auxiliaries"]["teacher"]["optimizer_state"]["state"]
    assert teacher_sgd and all("momentum_buffer" in s for s in teacher_sgd.values())

    # network_weights is the student alone, loadable by the predictor's rebuild; the teacher differs
    trainer = make_trainer(MSTKDTrainer, preprocessed)
    student = MSTKDTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 4,
                                                      trainer.label_manager.num_segmentation_heads, False)
    student.load_state_dict(saved["network_weights"])
    teacher = saved["auxiliaries"]["teacher"]["weights"]
    assert teacher.keys() == saved["network_weights"].keys()
    assert any(not torch.equal(teacher[k], saved["network_weights"][k]) for k in teacher)


def test_predict_and_evaluate_with_nnunet_commands(joint_model, nnunet_folders, raw_dataset, tmp_path):
    env = clean_env(nnunet_folders)
    model = ["-d", DATASET_ID, "-c", CONFIGURATION, "-tr", "MSTKDTrainer", "-f", "0", "-device", "cpu",
             "--disable_tta"]
    images, labels = os.path.join(raw_dataset, "imagesTs"), os.path.join(raw_dataset, "labelsTs")
    run(["nnUNetv2_predict", "-i", images, "-o", tmp_path / "predictions", *model], env)
    for name in sorted(os.listdir(labels)):
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "predictions" / name)))
        assert predicted.shape == sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(labels, name))).shape
        assert set(np.unique(predicted)) <= {0, 1, 2, 3}

    run(["nnUNetv2_evaluate_missing", "-i", images, "-o", tmp_path / "evaluation", "--subsets", "FLAIR",
         "T1ce+T2", *model], env)
    summary = load_json(tmp_path / "evaluation" / "summary.json")
    assert summary["subsets"] == ["FLAIR", "T1ce+T2"]
    for subset in summary["subsets"]:
        assert set(summary["per_subset"][subset]) == {"whole_tumor", "tumor_core", "enhancing_tumor",
                                                     "enhancing_tumor_postprocessed"}


def test_frozen_teacher_trains_from_a_checkpoint(frozen_model, teacher_folder):
    log = fold_0_log(frozen_model)
    source = str(teacher_folder / "fold_0" / "checkpoint_final.pth")
    assert f"MST-KD teacher: frozen, MSTKDTeacherTrainer from {source}" in log
    saved = checkpoint(frozen_model)
    assert set(saved["loss_terms"]["history"][-1]["values"]) == set(TERMS) - {"segmentation_teacher"}
    teacher = saved["auxiliaries"]["teacher"]
    assert teacher["optimizer_state"] is None
    assert teacher["weights"]["_extra_state"]["source"] == source  # how to rebuild it travels with it
    original = torch.load(source, map_location="cpu", weights_only=False)["network_weights"]
    for key, value in original.items():  # unchanged by training
        assert torch.equal(teacher["weights"][f"network.{key}"], value), key


def test_frozen_teacher_is_restored_from_the_checkpoint_without_the_variable(frozen_model, preprocessed,
                                                                             monkeypatch):
    """--c and --val rebuild the teacher from the student's checkpoint, whatever the environment says."""
    monkeypatch.delenv(TEACHER_VARIABLE, raising=False)
    trainer = make_trainer(MSTKDFrozenTeacherTrainer, preprocessed)
    path = os.path.join(frozen_model, "fold_0", "checkpoint_final.pth")
    trainer.load_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)["auxiliaries"]
    for key, value in unwrap(trainer.teacher).state_dict().items():
        if key != "_extra_state":
            assert torch.equal(value, saved["teacher"]["weights"][key]), key
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    assert int(next(iter(trainer.discriminator_optimizer.state_dict()["state"].values()))["step"]) == 1


# --- frozen teacher: choice, checks and gradients (in process) ----------------------------------------

def test_frozen_teacher_variable_is_validated(preprocessed, teacher_folder, tmp_path, monkeypatch):
    monkeypatch.delenv(TEACHER_VARIABLE, raising=False)
    with pytest.raises(RuntimeError, match=f"set {TEACHER_VARIABLE}"):
        make_trainer(MSTKDFrozenTeacherTrainer, preprocessed).initialize()

    missing = tmp_path / "nowhere"
    monkeypatch.setenv(TEACHER_VARIABLE, str(missing))
    with pytest.raises(FileNotFoundError, match=f"{TEACHER_VARIABLE}={missing}: .* does not exist"):
        make_trainer(MSTKDFrozenTeacherTrainer, preprocessed).initialize()

    monkeypatch.setenv(TEACHER_VARIABLE, str(teacher_folder))  # a model folder: fold_1 is what fold 1 needs
    with pytest.raises(FileNotFoundError, match="fold_1/checkpoint_final.pth"):
        make_trainer(MSTKDFrozenTeacherTrainer, preprocessed, fold=1).initialize()

    other = torch.load(teacher_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    other["init_args"]["dataset_json"]["channel_names"] = {"0": "T1", "1": "T1ce", "2": "T2", "3": "PD"}
    other["init_args"]["plans"]["configurations"][CONFIGURATION]["patch_size"] = [32, 48, 40]
    torch.save(other, tmp_path / "other.pth")
    monkeypatch.setenv(TEACHER_VARIABLE, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match=r"not trained on this data: channel_names .*PD.*; patch_size \[32, 48, 40\]"):
        make_trainer(MSTKDFrozenTeacherTrainer, preprocessed).initialize()


def test_gradients_reach_the_student_and_not_the_frozen_teacher(preprocessed, teacher_folder, monkeypatch):
    monkeypatch.setenv(TEACHER_VARIABLE, str(teacher_folder / "fold_0" / "checkpoint_final.pth"))
    trainer = make_trainer(MSTKDFrozenTeacherTrainer, preprocessed)
    trainer.initialize()
    trainer.on_train_epoch_start()
    teacher_before = copy.deepcopy(unwrap(trainer.teacher).state_dict())
    student_before = [p.detach().clone() for p in trainer.network.parameters()]
    terms = trainer.train_step(one_sample_batch(trainer))

    assert loss_terms_of(terms) == {"loss", *TERMS} - {"segmentation_teacher"}
    # every student parameter has a gradient, but the coarsest deep-supervision head, which nnU-Net weights 0
    assert {n for n, p in trainer.network.named_parameters() if p.grad is None} == {
        "decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}
    assert any(not torch.equal(a, p) for a, p in zip(student_before, trainer.network.parameters()))
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    for key, value in unwrap(trainer.teacher).state_dict().items():
        if key != "_extra_state":
            assert torch.equal(value, teacher_before[key]), key


def test_a_plain_nnunet_teacher_gives_the_logit_terms(preprocessed, tmp_path, monkeypatch):
    """nnUNetTrainer's network has no transformer: the feature terms and the discriminator are off."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    plain = make_trainer(nnUNetTrainer, preprocessed)
    plain.initialize()
    plain.save_checkpoint(str(tmp_path / "plain.pth"))
    monkeypatch.setenv(TEACHER_VARIABLE, str(tmp_path / "plain.pth"))
    trainer = make_trainer(MSTKDFrozenTeacherTrainer, preprocessed)
    trainer.initialize()
    assert not trainer.teacher_provides_features and trainer.discriminator is None
    assert set(trainer.auxiliaries) == {"teacher"}
    terms = trainer.train_step(one_sample_batch(trainer))
    assert loss_terms_of(terms) == {"loss", "segmentation_student", "kl", "probability_mse"}
    assert all(p.grad is None for p in trainer.teacher.parameters())


# --- joint mode: where each distillation term's gradient goes -------------------------------------

@pytest.fixture(scope="module")
def joint_trainer(preprocessed):
    torch.manual_seed(0)
    trainer = make_trainer(MSTKDTrainer, preprocessed)
    trainer.initialize()
    return trainer


def test_distillation_moves_the_student_only(joint_trainer, monkeypatch):
    """Which parameters each distillation term reaches: the student's, never the discriminator's, and
    the teacher's only with ``detach_teacher = False`` (MST-KDNet's code)."""
    trainer = joint_trainer
    torch.manual_seed(0)
    full = torch.randn(1, 4, *trainer.configuration_manager.patch_size)
    masked = full.clone()
    masked[:, 1:3] = 0
    outputs = (*trainer.network(masked, return_features=True), *trainer.teacher(full, return_features=True))
    groups = {"student": list(unwrap(trainer.network).transformer.parameters()),
              "teacher": list(unwrap(trainer.teacher).transformer.parameters()),
              "discriminator": list(trainer.discriminator.parameters())}

    def reached_by(terms):
        reached = {}
        for name, term in terms.items():
            reached[name] = set()
            for group, parameters in groups.items():
                grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
                if any(g is not None and g.abs().sum() > 0 for g in grads):
                    reached[name].add(group)
        return reached

    terms = trainer.distillation_terms(*outputs)
    assert set(terms) == {"kl", "probability_mse", "attention", "multiscale_features", "gram", "adversarial"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    assert reached_by(terms) == {name: {"student"} for name in terms}

    monkeypatch.setattr(trainer, "detach_teacher", False)
    reached = reached_by(trainer.distillation_terms(*outputs))
    assert {name: reached[name] for name in ("kl", "attention", "gram")} == {
        name: {"student", "teacher"} for name in ("kl", "attention", "gram")}
    assert reached["adversarial"] == {"student"}  # the generator term never moves the discriminator


def test_loss_weights_are_calibrated_for_sgd_and_ramped_up(joint_trainer, monkeypatch):
    """Both networks learn at nnU-Net's rate; every distillation term keeps the code's ratio to the
    student's segmentation (its weight / 0.6) and ramps up over the first 20 % of the epochs."""
    weights = joint_trainer.loss_weights()
    assert weights["segmentation_teacher"] == weights["segmentation_student"] == 1.0
    monkeypatch.setattr(joint_trainer, "num_epochs", 100)
    code = {"kl": 1, "probability_mse": 10, "attention": 1e8 / 120 ** 4, "multiscale_features": 0.2, "gram": 1,
            "adversarial": 2e-4}
    for epoch, factor in ((0, math.exp(-5)), (10, math.exp(-1.25)), (20, 1.0), (99, 1.0)):
        monkeypatch.setattr(joint_trainer, "current_epoch", epoch)
        weights = joint_trainer.loss_weights()
        assert {k: weights[k] for k in code} == pytest.approx({k: v / 0.6 * factor for k, v in code.items()})
    assert joint_trainer.kl_temperature == 7


def test_train_step_is_synchronised_under_ddp(preprocessed, narrow_plans):
    """Two gloo processes: network, teacher and discriminator identical across ranks after a step."""
    from ddp_check import check_ddp_train_steps
    moved = check_ddp_train_steps("MSTKDTrainer", preprocessed, CONFIGURATION, steps=1,
                                  plans_name=narrow_plans["plans_name"])
    assert set(moved) == {"network", "teacher", "discriminator"}


# --- the network built from plans -------------------------------------------------------------------

def test_network_from_the_3d_plans(joint_trainer):
    trainer = joint_trainer
    network = MSTKDTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 4, 3,
                                                      enable_deep_supervision=False)
    patch = trainer.configuration_manager.patch_size  # 40 x 48 x 40, total stride 8
    assert network.geometry["token_grid"] == [5, 6, 5] and network.transformer.num_tokens == 150
    x = torch.randn(1, 4, *patch)
    with torch.no_grad():
        logits, features = network(x, return_features=True)
        assert torch.equal(logits, network(x))  # what nnUNetv2_predict sees
    assert logits.shape == (1, 3, *patch)
    assert [tuple(a.shape) for a in features.attention] == [(1, 8, 150, 150)] * 4
    assert all(torch.allclose(a.sum(-1), torch.ones(())) for a in features.attention)
    # multi-scale features: bottleneck, then 2x and 4x finer (never the full-resolution stage)
    assert [tuple(f.shape[1:]) for f in features.multiscale] == [(256, 5, 6, 5), (128, 10, 12, 10), (64, 20, 24, 20),
                                                                 (64, 20, 24, 20)]
    assert all(tuple(s.shape) == (1, 256, 5, 6, 5) for s in features.style)
    with pytest.raises(ValueError, match="built for a 5x6x5 token grid"):
        network(torch.randn(1, 4, 48, 48, 48))


def test_network_from_2d_residual_encoder_plans(joint_trainer):
    """Any patch nnU-Net plans: a 2D ResEnc configuration with an anisotropic stride."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    configuration = copy.deepcopy(joint_trainer.configuration_manager.configuration)
    configuration["patch_size"] = [48, 40]
    configuration["architecture"] = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {"n_stages": 4, "features_per_stage": [8, 16, 32, 64], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 4, "strides": [[1, 1], [2, 2], [2, 1], [2, 2]],
                        "n_blocks_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    network = TransformerBottleneckUNet.from_plans(ConfigurationManager(configuration), 2, 5, True, depth=4,
                                                   heads=4, distilled_depths=(2, 4))
    assert network.geometry["token_grid"] == [6, 10]  # 48 / (2*2*2), 40 / (2*1*2)
    outputs, features = network(torch.randn(2, 2, 48, 40), return_features=True)
    assert [tuple(o.shape) for o in outputs] == [(2, 5, 48, 40), (2, 5, 24, 20), (2, 5, 12, 20)]
    assert [tuple(a.shape) for a in features.attention] == [(2, 4, 60, 60)] * 2
    assert [tuple(f.shape) for f in features.multiscale] == [(2, 64, 6, 10), (2, 32, 12, 20)]
    assert StyleDiscriminator(64, torch.nn.Conv2d)(features.style[1]).shape == (2,)


def test_networks_without_an_encoder_decoder_are_refused():
    with pytest.raises(TypeError, match="not an encoder-decoder U-Net"):
        TransformerBottleneckUNet(torch.nn.Conv3d(1, 1, 1), (32, 32, 32))


# --- loss terms on hand-made tensors ----------------------------------------------------------------

def test_standardised_kl_is_zero_for_equal_and_for_rescaled_logits():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 3, 5, 6)
    for regions in (False, True):
        assert logit_kl(s, s.clone(), regions) == pytest.approx(0, abs=1e-6)
        # standardisation makes the KL blind to the teacher's logit scale and shift (Sun et al.)
        assert logit_kl(3 * s + 5, s, regions) == pytest.approx(0, abs=1e-5)
        assert logit_kl(torch.randn_like(s), s, regions) > 1e-3
        assert logit_kl(3 * s + 5, s, regions, standardize=False) > 0.1


def test_kl_values_by_hand():
    t = 7.0
    # softmax, unstandardised: teacher probabilities (1/2, 1/4, 1/4) against a uniform student, per
    # element of the (1, 3, 1) logits: the voxel's KL / 3
    teacher = torch.tensor([math.log(2), 0.0, 0.0]).view(1, 3, 1) * t
    student = torch.zeros(1, 3, 1)
    expected = t ** 2 * (0.5 * math.log(1.5) + 0.5 * math.log(0.75)) / 3
    assert logit_kl(teacher, student, False, t, standardize=False) == pytest.approx(expected, rel=1e-5)
    # two sigmoid regions, teacher 1/2 and student 3/4 in each: KL = 1/2 log(4/3) per element
    teacher, student = torch.zeros(1, 2, 4), torch.full((1, 2, 4), t * math.log(3))
    assert logit_kl(teacher, student, True, t, standardize=False) == pytest.approx(t ** 2 * 0.5 * math.log(4 / 3),
                                                                                   rel=1e-5)


def test_two_class_logits_are_not_standardised():
    """Standardised two-class logits are ±1/sqrt(2) whatever they were: only their sign would survive."""
    logits = torch.tensor([[[3.0, -0.1]], [[-2.0, 0.4]]]).permute(1, 0, 2)  # (1, 2 classes, 2 voxels)
    assert torch.allclose(standardize_logits(logits).abs(), torch.full((1, 2, 2), 2 ** -0.5), atol=1e-5)
    other = torch.tensor([[[0.5, 1.0]], [[0.0, 0.0]]]).permute(1, 0, 2)
    assert logit_kl(other, logits, regions=False) == logit_kl(other, logits, False, standardize=False) > 0


def test_probability_mse_and_rampup_by_hand():
    teacher, student = torch.zeros(2, 3, 4), torch.full((2, 3, 4), 30.0)
    assert probability_mse(teacher, student, regions=True) == pytest.approx(3 * 0.25)  # summed over regions
    assert probability_mse(teacher, teacher, regions=True) == 0
    softmax_student = torch.tensor([30.0, -30.0]).view(1, 2, 1)
    assert probability_mse(torch.zeros(1, 2, 1), softmax_student, regions=False) == pytest.approx(0.5)
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == sigmoid_rampup(30, 10) == sigmoid_rampup(3, 0) == 1.0


def test_extreme_value_attention_loss_by_hand():
    identity = torch.eye(2).view(1, 1, 2, 2)
    uniform = torch.full((1, 1, 2, 2), 0.5)
    # one depth: max = min = mean = the map; in units of N = 2: (2I)² vs 1 -> MSE 5, three times
    assert extreme_value_attention_loss([identity], [uniform]) == pytest.approx(15)
    assert extreme_value_attention_loss([uniform, identity], [uniform, identity]) == 0
    # the further the student's maps from the teacher's, the larger the loss
    torch.manual_seed(0)
    teacher = [torch.softmax(torch.randn(2, 4, 9, 9), -1) for _ in range(3)]
    other = [torch.softmax(torch.randn(2, 4, 9, 9), -1) for _ in range(3)]
    losses = [extreme_value_attention_loss([(1 - a) * t + a * o for t, o in zip(teacher, other)], teacher)
              for a in (0.0, 0.3, 0.6, 1.0)]
    assert losses[0] == 0 and losses == sorted(losses) and losses[-1] > 0


def test_multiscale_feature_loss_by_hand():
    student = [torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 4, 4)]
    teacher = [torch.ones(1, 4, 2, 2), torch.full((1, 2, 4, 4), 2.0)]
    assert multiscale_feature_loss(student, teacher) == pytest.approx(1 + 4)
    assert multiscale_feature_loss(teacher, teacher) == 0


def test_cross_layer_gram_loss_by_hand():
    ones = torch.ones(1, 1, 4)
    assert cross_layer_gram(ones, 2 * ones).item() == pytest.approx(2)
    # pairs (F0, F1) and (F1, F0): Gram 1 for the student, 2 for the teacher in both
    assert cross_layer_gram_loss([ones, ones], [2 * ones, ones]) == pytest.approx(2)
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 3, 4, 2) for _ in range(3)]
    teacher = [torch.randn(2, 5, 3, 4, 2) for _ in range(3)]
    assert cross_layer_gram_loss(student, student) == 0
    # Gram matrices ignore where features are: shuffling positions (alike in every layer) changes nothing
    order = torch.randperm(24)

    def shuffled(features):
        return [f.flatten(2)[..., order].view_as(f) for f in features]

    assert cross_layer_gram_loss(shuffled(student), shuffled(teacher)) == pytest.approx(
        cross_layer_gram_loss(student, teacher).item(), rel=1e-5)


def test_adversarial_losses_by_hand():
    large = torch.full((3,), 20.0)
    assert discriminator_loss(-large, large) == pytest.approx(0, abs=1e-7)  # teacher 0, student 1: right
    assert discriminator_loss(torch.zeros(3), torch.zeros(3)) == pytest.approx(2 * math.log(2))
    assert style_adversarial_loss(-large) == pytest.approx(0, abs=1e-7)  # student taken for the teacher
    assert style_adversarial_loss(large) == pytest.approx(20, rel=1e-6)
    assert style_adversarial_loss(torch.tensor([-1.0])) < style_adversarial_loss(torch.tensor([1.0]))
    assert F.binary_cross_entropy_with_logits(torch.zeros(1), torch.zeros(1)) == pytest.approx(math.log(2))
