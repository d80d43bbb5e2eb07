"""MAGMSTrainer and its network: the real nnU-Net commands, the fusion network's properties on
hand-made inputs, each loss term, and the train step (regions and labels, DDP)."""

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import save_json
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, clean_env, load_json, make_trainer, run, training_log
from nnunet_missingmod.losses.self_distillation import distillation_kl, feature_mse
from nnunet_missingmod.modalities import available_modalities
from nnunet_missingmod.networks.modality_fusion_unet import FusionTrainingOutput, ModalityFusionUNet
from nnunet_missingmod.training import MAGMSTrainer, MAGMSTrainerMasked, MAGMSTrainerNoDistillation

TRAINER = "MAGMSTrainer"
PLANS = "MAGMSTestPlans"
# Cheap in-process networks and batches: fewer features, a smaller patch (the plans' is 40x48x40).
SMALL_FEATURES = [4, 8, 16, 32]
SMALL_PATCH = [24, 32, 24]
# Augmentation in the main process, one export worker: fewer process start-ups in the commands.
SERIAL = {"nnUNet_n_proc_DA": 0, "nnUNet_def_n_proc": 1}
LABELS = {"background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3}


# --- helpers -------------------------------------------------------------------------------------

def plans_of(preprocessed, features=None, patch_size=None, configuration=CONFIGURATION):
    plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
    plans["continue_training"] = False
    return shrink(plans, configuration, features, patch_size)


def shrink(plans, configuration, features=None, patch_size=None):
    if features is not None:
        plans["configurations"][configuration]["architecture"]["arch_kwargs"]["features_per_stage"] = list(features)
    if patch_size is not None:
        plans["configurations"][configuration]["patch_size"] = list(patch_size)
    return plans


def architecture(plans, configuration=CONFIGURATION):
    a = plans["configurations"][configuration]["architecture"]
    return a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"]


def network_from(plans, num_modalities=4, num_classes=3, deep_supervision=True, configuration=CONFIGURATION):
    torch.manual_seed(0)
    return ModalityFusionUNet.from_plans(*architecture(plans, configuration), num_modalities, num_classes,
                                         deep_supervision)


def image(shape, absent=(), batch=2, num_modalities=4, seed=0):
    """Random patches; ``absent`` holds (sample, modality) pairs set to zero."""
    x = torch.randn(batch, num_modalities, *shape, generator=torch.Generator().manual_seed(seed))
    for b, m in absent:
        x[b, m] = 0
    return x


def small_trainer_of(cls, preprocessed, dataset_json=None):
    """conftest's trainer factory on the shrunk plans: the same code at a fraction of the CPU time."""
    return make_trainer(cls, preprocessed, dataset_json=dataset_json,
                        plans=plans_of(preprocessed, SMALL_FEATURES, SMALL_PATCH))


def label_dataset_json(preprocessed):
    dataset_json = load_json(os.path.join(preprocessed, "dataset.json"))
    dataset_json["labels"] = dict(LABELS)
    dataset_json.pop("regions_class_order")
    return dataset_json


class BatchDiceMAGMSTrainerMasked(MAGMSTrainerMasked):
    """The masked variant for the DDP check, with batch Dice, which nnU-Net all-gathers across ranks
    (the synthetic plans turn it off)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        plans["configurations"][configuration]["batch_dice"] = True
        super().__init__(plans, configuration, fold, dataset_json, device)


# --- the real commands ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def magms_model(nnunet_folders, preprocessed):
    """``nnUNetv2_train -tr MAGMSTrainer`` for one epoch, then resumed with --c to a second.

    On a copy of the plans with fewer features per stage (``-p PLANS``, the data preprocessed for
    nnUNetPlans): the same commands and code paths at a fraction of the CPU time.
    """
    plans = plans_of(preprocessed, SMALL_FEATURES)
    plans.pop("continue_training")
    plans["plans_name"] = PLANS
    save_json(plans, os.path.join(preprocessed, f"{PLANS}.json"), sort_keys=False)
    command = ["nnUNetv2_train", DATASET_ID, CONFIGURATION, "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]
    settings = {"nnUNet_missingmod_iterations_per_epoch": 1, "nnUNet_missingmod_val_iterations_per_epoch": 1,
                **SERIAL}
    # The first run's final validation mirrors (nnU-Net's test-time augmentation through MAG-MS's
    # own network, the suite's one mirrored prediction); the resumed run's predicts each case once.
    run(command, clean_env(nnunet_folders, nnUNet_missingmod_num_epochs=1, **settings))
    run(command + ["--c"], clean_env(nnunet_folders, nnUNet_missingmod_num_epochs=2, nnUNet_missingmod_disable_tta=1,
                                     **settings))
    return os.path.join(nnunet_folders["nnUNet_results"], DATASET_NAME, f"{TRAINER}__{PLANS}__{CONFIGURATION}")


def test_train_resume_predict_and_evaluate_with_nnunet_commands(magms_model, nnunet_folders, raw_dataset, tmp_path):
    fold = os.path.join(magms_model, "fold_0")
    log = training_log(fold)
    assert "MAG-MS: lambda (self_distillation_weight) 1.0, gamma (feature_distillation_weight) 1.0, T 1.0" in log
    assert "masking: off" in log
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 2
    history = checkpoint["loss_terms"]["history"]  # one record per epoch, both runs
    assert [epoch["epoch"] for epoch in history] == [0, 1]
    assert set(history[-1]["values"]) == {"segmentation_fused", "segmentation_single", "self_distillation",
                                          "feature_distillation"}
    weights = checkpoint["network_weights"]
    assert any(k.startswith("encoders.3.") for k in weights) and any(k.startswith("projections.3.") for k in weights)
    assert not any(k.startswith("decoder.encoder") for k in weights)
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))  # nnU-Net's final validation ran

    # nnUNetv2_predict on cases whose T2 is an all-zero image, then the all-subset evaluation with
    # that subset among others: the same segmentation both ways.
    images = os.path.join(raw_dataset, "imagesTs")
    inputs = tmp_path / "without_T2"
    inputs.mkdir()
    for name in sorted(os.listdir(images)):
        if name.endswith("_0002.nii.gz"):
            t2 = sitk.ReadImage(os.path.join(images, name))
            zeros = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(t2)))
            zeros.CopyInformation(t2)
            sitk.WriteImage(zeros, str(inputs / name))
        else:
            shutil.copy(os.path.join(images, name), inputs)
    model = ["-d", DATASET_ID, "-c", CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", "0", "-device", "cpu",
             "--disable_tta"]
    env = clean_env(nnunet_folders, **SERIAL)
    run(["nnUNetv2_predict", "-i", inputs, "-o", tmp_path / "predicted", *model], env)
    subsets = ["FLAIR", "T1+T1ce+FLAIR", "T1+T1ce+T2+FLAIR"]
    run(["nnUNetv2_evaluate_missing", "-i", images, "-o", tmp_path / "evaluation", "--subsets", *subsets,
         "--save_predictions", *model], env)
    summary = load_json(tmp_path / "evaluation" / "summary.json")
    assert summary["subsets"] == subsets
    cases = sorted(f for f in os.listdir(os.path.join(raw_dataset, "labelsTs")))
    for case in cases:
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "predicted" / case)))
        evaluated = sitk.GetArrayFromImage(sitk.ReadImage(
            str(tmp_path / "evaluation" / "predictions" / "T1+T1ce+FLAIR" / case)))
        reference = sitk.ReadImage(os.path.join(images, f"{case[:-len('.nii.gz')]}_0000.nii.gz"))
        assert predicted.shape == sitk.GetArrayFromImage(reference).shape
        assert set(np.unique(predicted)) <= {0, 1, 2, 3}
        assert np.array_equal(predicted, evaluated), case


# --- the network ---------------------------------------------------------------------------------

def test_network_is_built_from_the_plans(preprocessed):
    plans = plans_of(preprocessed)
    kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    network = network_from(plans)
    assert len(network.encoders) == 4
    for encoder, projections in zip(network.encoders, network.projections, strict=True):
        assert type(encoder) is PlainConvEncoder
        assert encoder.stages[0][0].convs[0].conv.in_channels == 1
        assert list(encoder.output_channels) == kwargs["features_per_stage"]
        assert [list(s) for s in encoder.strides] == kwargs["strides"]
        assert [list(k) for k in encoder.kernel_sizes] == kwargs["kernel_sizes"]
        assert isinstance(encoder.stages[0][0].convs[0].norm, torch.nn.InstanceNorm3d)
        for projection, channels in zip(projections, kwargs["features_per_stage"], strict=True):
            assert isinstance(projection, torch.nn.Conv3d) and projection.kernel_size == (1, 1, 1)
            assert projection.in_channels == projection.out_channels == channels and projection.bias is None
    # the plans' own decoder, shared, holding no encoder
    plain = get_network_from_plans(*architecture(plans), 4, 3, deep_supervision=True)
    assert type(network.decoder) is UNetDecoder and not isinstance(network.decoder.encoder, torch.nn.Module)
    assert [p.shape for p in network.decoder.parameters()] == [
        p.shape for name, p in plain.decoder.named_parameters() if not name.startswith("encoder.")]
    # what nnUNetv2_predict builds (no deep supervision) loads the trained weights strictly
    deployed = MAGMSTrainer.build_network_architecture(
        *_managers(plans), num_input_channels=4, num_output_channels=3, enable_deep_supervision=False)
    deployed.load_state_dict(network.state_dict())
    assert not any(k.startswith("decoder.encoder") for k in network.state_dict())


def _managers(plans):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    manager = PlansManager(plans)
    return manager, manager.get_configuration(CONFIGURATION)


def test_eval_output_is_nnunets_and_training_output_has_every_path(preprocessed):
    plans = plans_of(preprocessed, SMALL_FEATURES)
    network = network_from(plans)
    plain = get_network_from_plans(*architecture(plans), 4, 3, deep_supervision=True)
    x = image(SMALL_PATCH)
    expected = [o.shape for o in plain(x)]
    network.eval()
    with torch.no_grad():
        assert [o.shape for o in network(x)] == expected
        network.decoder.deep_supervision = False
        assert network(x).shape == expected[0]
        network.decoder.deep_supervision = True
    network.train()
    out = network(x)
    assert isinstance(out, FusionTrainingOutput)
    assert [o.shape for o in out.fused] == expected
    assert [o.shape for o in out.single] == [(4, *s) for s in expected]
    assert [f.shape[1] for f in out.fused_features] == SMALL_FEATURES
    assert [f.shape[:3] for f in out.single_features] == [(4, 2, c) for c in SMALL_FEATURES]
    assert out.present.all()


def test_fused_features_are_the_mean_over_the_present_modalities(preprocessed):
    network = network_from(plans_of(preprocessed, SMALL_FEATURES))
    subsets = [(1, 3), (0, 1, 2)]  # per sample
    x = image(SMALL_PATCH, absent=[(b, m) for b, s in enumerate(subsets) for m in range(4) if m not in s])
    network.train()
    with torch.no_grad():
        out = network(x)
        own = [network.encode(m, x) for m in range(4)]
    assert out.present.tolist() == [[m in s for m in range(4)] for s in subsets]
    for level in range(len(SMALL_FEATURES)):
        for b, subset in enumerate(subsets):
            mean = torch.stack([own[m][level][b] for m in subset]).mean(0)
            torch.testing.assert_close(out.fused_features[level][b], mean, rtol=1e-5, atol=1e-6)
        for m in range(4):
            torch.testing.assert_close(out.single_features[level][m], own[m][level])


def test_a_zeroed_modality_gives_the_output_of_the_other_encoders_alone(preprocessed):
    network = network_from(plans_of(preprocessed, SMALL_FEATURES))
    x = image(SMALL_PATCH, absent=[(0, 2), (1, 2)])  # T2 missing in both samples
    calls = [0] * 4
    for m, encoder in enumerate(network.encoders):
        encoder.register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    network.eval()
    with torch.no_grad():
        output = network(x)
        assert calls == [1, 1, 0, 1]  # the absent modality's encoder never ran
        others = [network.encode(m, x) for m in (0, 1, 3)]
        fused = [torch.stack(levels).mean(0) for levels in zip(*others, strict=True)]
        for got, want in zip(output, network.decoder(fused), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # training runs every encoder but weights the absent one by zero: the same fused output
        network.train()
        for got, want in zip(network(x).fused, output, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_modalities", [2, 3])
def test_any_number_of_modalities(preprocessed, num_modalities):
    network = network_from(plans_of(preprocessed, SMALL_FEATURES), num_modalities=num_modalities)
    assert len(network.encoders) == len(network.projections) == num_modalities
    x = image(SMALL_PATCH, absent=[(1, 0)], num_modalities=num_modalities)
    out = network(x)
    assert out.single[0].shape[:2] == (num_modalities, 2)
    sum(o.sum() for o in out.fused + out.single).backward()
    assert all(p.grad is not None for p in network.parameters())
    network.eval()
    with torch.no_grad():
        assert network(x)[0].shape == out.fused[0].shape
    with pytest.raises(ValueError, match=f"input has 4 channels, the network has {num_modalities}"):
        network(image(SMALL_PATCH))


def test_2d_configuration(preprocessed):
    plans = plans_of(preprocessed)
    network = network_from(plans, configuration="2d")
    patch = plans["configurations"]["2d"]["patch_size"]
    assert isinstance(network.projections[0][0], torch.nn.Conv2d) and network.projections[0][0].kernel_size == (1, 1)
    x = image(patch, absent=[(0, 3)])
    out = network(x)
    assert out.fused[0].shape == (2, 3, *patch) and out.single[0].shape == (4, 2, 3, *patch)
    network.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(x)[0], out.fused[0], rtol=1e-4, atol=1e-4)


def test_residual_encoder_plans(preprocessed):
    """nnU-Net's ResEnc presets (nnUNetPlannerResEncM/L/XL) write ResidualEncoderUNet plans."""
    plans = plans_of(preprocessed)
    _, kwargs, imports = architecture(plans)
    kwargs = dict(kwargs, features_per_stage=SMALL_FEATURES, n_blocks_per_stage=[1, 2, 2, 2])
    kwargs.pop("n_conv_per_stage")
    kwargs["n_conv_per_stage_decoder"] = [1, 1, 1]
    network = ModalityFusionUNet.from_plans("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                                            kwargs, imports, 4, 3, True)
    assert all(type(e) is ResidualEncoder and e.stem.convs[0].conv.in_channels == 1 for e in network.encoders)
    out = network(image(SMALL_PATCH, absent=[(0, 1)]))
    assert out.fused[0].shape == (2, 3, *SMALL_PATCH)
    with pytest.raises(ValueError, match="cannot build per-modality encoders for architecture .*ResidualUNet"):
        ModalityFusionUNet.from_plans("dynamic_network_architectures.architectures.unet.ResidualUNet", kwargs,
                                      imports, 4, 3, True)


# --- the loss terms ------------------------------------------------------------------------------

def test_softmax_kl_with_temperature():
    teacher, student = torch.randn(2, 4, 5, 6, 7), torch.randn(3, 2, 4, 5, 6, 7)
    got = distillation_kl(teacher.unsqueeze(0), student, False, temperature=2.0, channel_dim=2)
    assert got.shape == (3, 2)
    for m in range(3):
        want = F.kl_div(F.log_softmax(student[m] / 2, 1), F.softmax(teacher / 2, 1), reduction="none")
        torch.testing.assert_close(got[m], 4 * want.sum(1).flatten(1).mean(1))
    same = distillation_kl(teacher, teacher.clone(), False)
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)


def test_bernoulli_kl_for_regions():
    teacher, student = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    p, q = torch.sigmoid(teacher / 3).double(), torch.sigmoid(student / 3).double()
    # averaged over the regions (as nnU-Net's BCE) and the voxels
    want = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).flatten(1).mean(1) * 9
    got = distillation_kl(teacher, student, True, temperature=3.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, distillation_kl(teacher, student, False, temperature=3.0))  # not the softmax KL
    # large logits stay finite
    assert torch.isfinite(distillation_kl(teacher * 1e3, student * 1e3, True)).all()


def test_feature_mse_is_over_all_levels_concatenated():
    teacher = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    students = [torch.randn(3, 2, 4, 8, 8), torch.randn(3, 2, 8, 4, 4)]
    got = feature_mse([t.unsqueeze(0) for t in teacher], students, channel_dim=2)
    flat_teacher = torch.cat([t.flatten(1) for t in teacher], 1)
    for m in range(3):
        flat_student = torch.cat([s[m].flatten(1) for s in students], 1)
        torch.testing.assert_close(got[m], (flat_student - flat_teacher).square().mean(1))


def test_feature_term_does_not_move_the_fused_mean():
    """With the fused features the mean of the singles, sum_m MSE(f_m, mean) has no gradient through
    the mean: detaching the fused side changes nothing in the feature term."""
    singles = torch.randn(4, 2, 3, 5, requires_grad=True)
    attached = feature_mse([singles.mean(0, keepdim=True)], [singles], channel_dim=2).sum()
    detached = feature_mse([singles.mean(0, keepdim=True).detach()], [singles], channel_dim=2).sum()
    grad_attached, = torch.autograd.grad(attached, singles)
    grad_detached, = torch.autograd.grad(detached, singles)
    torch.testing.assert_close(grad_attached, grad_detached)


# --- the trainer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_trainer(preprocessed):
    trainer = small_trainer_of(MAGMSTrainer, preprocessed)
    trainer.initialize()
    return trainer


def test_absent_modalities_do_not_count_in_the_loss(small_trainer):
    trainer = small_trainer
    network = trainer.network
    x = image(SMALL_PATCH, absent=[(1, 0)])  # T1 missing in sample 1
    target = [torch.rand(2, 3, *o.shape[2:]).round() for o in network.eval()(x)]
    network.train()
    with torch.no_grad():
        out = network(x)
    terms = trainer.compute_loss(out, target)
    assert set(terms) == {"segmentation_fused", "segmentation_single", "self_distillation", "feature_distillation"}

    def perturbed(modality, sample):
        single = [s.clone() for s in out.single]
        for s in single:
            s[modality, sample] += 3 * torch.randn_like(s[modality, sample])
        features = [f.clone() for f in out.single_features]
        for f in features:
            f[modality, sample] += 1
        return trainer.compute_loss(out._replace(single=single, single_features=features), target)

    absent, present = perturbed(0, 1), perturbed(0, 0)
    for name in terms:
        if name != "segmentation_fused":
            torch.testing.assert_close(absent[name], terms[name])
            assert not torch.allclose(present[name], terms[name])
    # the single-modality segmentation of T1 is nnU-Net's loss on the sample that has it
    t1_alone = trainer.loss([s[0, :1] for s in out.single], [t[:1] for t in target])
    others = sum(trainer.loss([s[m] for s in out.single], target) for m in (1, 2, 3))
    torch.testing.assert_close(terms["segmentation_single"], (t1_alone + others) / 5)  # over the 1 + M paths


def test_each_term_is_switched_by_its_attribute(small_trainer, preprocessed, monkeypatch):
    fused = [torch.randn(2, 3, 8, 8, 8, requires_grad=True), torch.randn(2, 3, 4, 4, 4, requires_grad=True)]
    out = FusionTrainingOutput(
        fused, [torch.randn(4, *f.shape, requires_grad=True) for f in fused],
        [torch.randn(2, 4, 8, 8, 8, requires_grad=True)], [torch.randn(4, 2, 4, 8, 8, 8, requires_grad=True)],
        torch.ones(2, 4, dtype=torch.bool))
    target = [torch.rand(f.shape).round() for f in fused]

    def fused_gradient(term):
        loss = small_trainer.compute_loss(out, target)[term]
        return torch.autograd.grad(loss, [fused[0], out.fused_features[0]], allow_unused=True)

    assert fused_gradient("self_distillation")[0].abs().sum() > 0  # the reference code's default
    monkeypatch.setattr(small_trainer, "detach_fused_target", True)
    assert fused_gradient("self_distillation")[0] is None
    assert fused_gradient("feature_distillation")[1] is None
    monkeypatch.setattr(small_trainer, "temperature", 2.0)
    monkeypatch.setattr(small_trainer, "self_distillation_weight", 0.5)
    kl = distillation_kl(fused[0].unsqueeze(0), out.single[0], True, 2.0, channel_dim=2)
    torch.testing.assert_close(small_trainer.compute_loss(out, target)["self_distillation"],
                               0.5 * kl.sum(0).mean() / 5)  # divided by the 1 + M paths

    ablation = small_trainer_of(MAGMSTrainerNoDistillation, preprocessed)
    ablation.initialize()
    assert set(ablation.compute_loss(out, target)) == {"segmentation_fused", "segmentation_single"}


@pytest.mark.parametrize("labels", [False, True], ids=["regions", "labels"])
def test_loss_decreases_on_a_fixed_batch(preprocessed, single_process_augmentation, labels):
    np.random.seed(0)
    torch.manual_seed(0)
    dataset_json = label_dataset_json(preprocessed) if labels else None
    trainer = small_trainer_of(MAGMSTrainer, preprocessed, dataset_json=dataset_json)
    trainer.initialize()
    assert trainer.label_manager.has_regions is not labels
    batch = next(trainer.get_dataloaders()[0])
    target = batch["target"][0]
    assert target.shape[1] == (1 if labels else 3)

    # the KL is the one of the output's activation: softmax over labels, sigmoid per region
    trainer.network.train()
    with torch.no_grad():
        out = trainer.network(batch["data"])
        kl = trainer.compute_loss(out, batch["target"])["self_distillation"]
        want = distillation_kl(out.fused[0].unsqueeze(0), out.single[0], not labels, channel_dim=2)
        torch.testing.assert_close(kl, want.sum(0).mean() / 5)

    losses = [trainer.train_step(batch) for _ in range(6)]
    assert all(np.isfinite(list(step.values())).all() for step in losses)
    assert losses[-1]["loss"] < losses[0]["loss"]
    assert losses[-1]["segmentation_fused"] < losses[0]["segmentation_fused"]


def test_masked_batches_agree_with_what_the_network_sees(preprocessed, single_process_augmentation):
    np.random.seed(0)
    trainer = small_trainer_of(MAGMSTrainerMasked, preprocessed)
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    seen = set()
    trainer.network.train()
    for _ in range(3):
        batch = next(loader)
        mask = batch["modality_mask"][:, 0]
        assert torch.equal(available_modalities(batch["data"]), mask)
        with torch.no_grad():
            assert torch.equal(trainer.network(batch["data"]).present, mask)
        seen.update(map(tuple, mask.tolist()))
    assert len(seen) > 1


def test_cascade_configuration_is_refused(preprocessed):
    plans = plans_of(preprocessed)
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": CONFIGURATION, "previous_stage": "3d_lowres"}
    with pytest.raises(ValueError, match="cannot train the cascade configuration 3d_cascade_fullres"):
        MAGMSTrainer(plans, "3d_cascade_fullres", 0, load_json(os.path.join(preprocessed, "dataset.json")),
                     torch.device("cpu"))


def test_train_step_is_synchronised_under_ddp(preprocessed, narrow_plans):
    """Two gloo processes, each with its own random subsets (so its own sub-batches per modality), at
    the narrow plans like the other DDP checks."""
    from ddp_check import check_ddp_train_steps
    moved = check_ddp_train_steps("test_magms:BatchDiceMAGMSTrainerMasked", preprocessed, CONFIGURATION, steps=2,
                                  plans_name=narrow_plans["plans_name"])
    assert set(moved) == {"network"}


def test_the_sgd_calibrations_scale_the_gradients_they_say(preprocessed):
    """'loss' divides every gradient by 1 + M; 'shared_decoder' only the decoder's; 'none' is the
    reference's sum. Same weights, same batch."""
    import copy

    from nnunet_missingmod.training import MAGMSTrainerDecoderMean

    class Reference(MAGMSTrainer):
        sgd_calibration = "none"

    trainers = {}
    for name, cls in (("none", Reference), ("loss", MAGMSTrainer), ("shared_decoder", MAGMSTrainerDecoderMean)):
        trainers[name] = small_trainer_of(cls, preprocessed)
        trainers[name].initialize()
    state = copy.deepcopy(trainers["none"].network.state_dict())
    x = image(SMALL_PATCH)
    target = [torch.rand(2, 3, *[s // f for s in SMALL_PATCH]).round() for f in (1, 2, 4)]
    gradients = {}
    for name, trainer in trainers.items():
        trainer.network.load_state_dict(state)
        trainer.network.train()
        sum(trainer.compute_loss(trainer.network(x), target).values()).backward()
        gradients[name] = {n: p.grad.clone() for n, p in trainer.network.named_parameters() if p.grad is not None}
    paths = 5
    for n, g in gradients["none"].items():
        torch.testing.assert_close(gradients["loss"][n], g / paths)
        torch.testing.assert_close(gradients["shared_decoder"][n], g / paths if n.startswith("decoder.") else g)
    with pytest.raises(ValueError, match="sgd_calibration"):
        class Wrong(MAGMSTrainer):
            sgd_calibration = "adam"
        small_trainer_of(Wrong, preprocessed)
