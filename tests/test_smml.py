"""SMMLTrainer: the SAM prior command, training, resuming, prediction and evaluation through the real
commands; and in-process checks of the pieces (branch subsets, prior alignment under augmentation,
the consistency terms, checkpoints, training without priors, DDP)."""

import os

import numpy as np
import pytest
import torch

from conftest import (CONFIGURATION, DATASET_ID, DATASET_NAME, clean_env, load_json, make_trainer, run, training_env,
                      training_log)
from nnunet_missingmod.losses.consistency import (class_fractions, pixel_consistency, prior_consistency,
                                                  reliability_gated_kl, relation_consistency)
from nnunet_missingmod.modalities import available_modalities
from nnunet_missingmod.networks.refinement_head import RefinementHead
from nnunet_missingmod.networks.two_branch import TwoBranchNetwork
from nnunet_missingmod.priors import storage
from nnunet_missingmod.priors.compute import compute_priors
from nnunet_missingmod.priors.compute import main as priors_main
from nnunet_missingmod.training import SMMLTrainer, SMMLTrainerNoPriors

TRAINER = "SMMLTrainer"
PLANS = "nnUNetPlans"
NUM_TARGETS, NUM_MODALITIES = 3, 4


class SMMLConsistencyFromStart(SMMLTrainer):
    """Every term from the first step (the DDP check and the label-map check use it)."""

    consistency_start_fraction = 0.0


class SMMLAlwaysAugmented(SMMLTrainer):
    """Rotation and scaling on every sample, so the alignment check always exercises them."""

    def get_training_transforms(self, *args, **kwargs):
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        pipeline = super().get_training_transforms(*args, **kwargs)
        spatial = [t for t in pipeline.transforms if isinstance(t, SpatialTransform)]
        assert len(spatial) == 1
        spatial[0].p_rotation = spatial[0].p_scaling = 1.0
        return pipeline


def smml_trainer(cls, preprocessed, dataset_json=None, priors_folder=None):
    """conftest's trainer factory, on fold 0 (the priors cover it), with a priors folder of the test's."""
    trainer = make_trainer(cls, preprocessed, fold=0, dataset_json=dataset_json)
    if priors_folder is not None:
        trainer.priors_folder = str(priors_folder)
    return trainer


def data_folder(preprocessed):
    return os.path.join(preprocessed, f"{PLANS}_{CONFIGURATION}")


# --- the real commands -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sam_priors(nnunet_folders, preprocessed):
    """``nnUNetv2_smml_priors`` with a tiny randomly initialised SAM, as a user would run it."""
    result = run(["nnUNetv2_smml_priors", "-d", DATASET_ID, "-c", CONFIGURATION, "--sam-type", "tiny_random",
                  "-device", "cpu"], clean_env(nnunet_folders))
    return {"folder": os.path.join(preprocessed, f"{PLANS}_{CONFIGURATION}{storage.FOLDER_SUFFIX}"),
            "result": result}


def short_training(folders, epochs: int) -> dict:
    """conftest's training_env with one iteration per epoch: an SMML iteration costs two networks."""
    return training_env(folders, epochs, nnUNet_missingmod_iterations_per_epoch=1)


@pytest.fixture(scope="module")
def smml_model(nnunet_folders, sam_priors):
    """One epoch, resumed with --c to a second; consistency is on from epoch 1 (ceil(0.1 * 2))."""
    command = ["nnUNetv2_train", DATASET_ID, CONFIGURATION, "0", "-tr", TRAINER, "-device", "cpu"]
    first = run(command, short_training(nnunet_folders, epochs=1))
    resumed = run(command + ["--c"], short_training(nnunet_folders, epochs=2))
    folder = os.path.join(nnunet_folders["nnUNet_results"], DATASET_NAME, f"{TRAINER}__{PLANS}__{CONFIGURATION}")
    return {"folder": folder, "first": first, "resumed": resumed}


def test_prior_command_writes_every_case_and_resumes(sam_priors, preprocessed):
    folder = sam_priors["folder"]
    assert "SAM priors: 100%" in sam_priors["result"].stderr  # the progress bar
    identifiers = sorted(f[:-len(".pkl")] for f in os.listdir(data_folder(preprocessed)) if f.endswith(".pkl"))
    assert storage.completed_cases(folder) == set(identifiers)
    metadata = storage.PriorsMetadata.load(folder)
    assert [name for name, _ in metadata.targets] == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    assert metadata.modalities == ["T1", "T1ce", "T2", "FLAIR"] and metadata.model == "tiny_random"

    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    image, seg, _, _ = nnUNetDatasetBlosc2(data_folder(preprocessed), identifiers[:1]).load_case(identifiers[0])
    priors = storage.open_case(folder, identifiers[0])[:]
    assert priors.dtype == np.uint8 and priors.shape == (NUM_TARGETS * NUM_MODALITIES, *image.shape[1:])
    per_target = priors.reshape(NUM_TARGETS, NUM_MODALITIES, *image.shape[1:])
    for k, (_, labels) in enumerate(metadata.targets):
        has_target = np.isin(seg[0][:], labels).any(axis=(1, 2))  # slices along the first axis
        assert has_target.any() and per_target[k][:, has_target].any()
        assert not per_target[k][:, ~has_target].any(), "maps outside the slices that hold the region"

    # A rerun computes nothing; a lost case (and a stale partial file) is computed again, identically.
    mtimes = {i: os.path.getmtime(storage.case_path(folder, i)) for i in identifiers}
    assert compute_priors(DATASET_ID, CONFIGURATION, sam_type="tiny_random", device="cpu",
                          show_progress=False)["computed"] == 0
    assert mtimes == {i: os.path.getmtime(storage.case_path(folder, i)) for i in identifiers}
    os.remove(storage.case_path(folder, identifiers[0]))
    open(storage.case_path(folder, identifiers[0]) + storage.PARTIAL_SUFFIX, "w").close()
    summary = compute_priors(DATASET_ID, CONFIGURATION, sam_type="tiny_random", device="cpu", show_progress=False)
    assert (summary["computed"], summary["already_done"]) == (1, len(identifiers) - 1)
    assert np.array_equal(storage.open_case(folder, identifiers[0])[:], priors)
    assert not [f for f in os.listdir(folder) if f.endswith(storage.PARTIAL_SUFFIX)]

    # Other settings are refused rather than mixed in; a SAM checkpoint is required for vit_*.
    for argv, message in ((["--box-margin", "5"], "made with other settings"),
                          (["--sam-type", "vit_b"], "needs --sam-checkpoint")):
        with pytest.raises(SystemExit, match=message):
            priors_main(["-d", str(DATASET_ID), "-c", CONFIGURATION, "-device", "cpu", *argv])


def test_default_litemedsam_segments_what_its_box_shows():
    """The default model with its bundled weights, through our preprocessing: a bright square in a
    darker head is segmented from its box (wrong scaling or box coordinates would not be)."""
    from nnunet_missingmod.priors.compute import box_of, unit_range
    from nnunet_missingmod.priors.sam_models import load_sam
    rng = np.random.default_rng(0)
    image = np.zeros((60, 50), np.float32)
    image[10:50, 5:45] = 0.3 + 0.01 * rng.random((40, 40))
    image[20:35, 15:30] = 2.0
    square = np.zeros(image.shape, bool)
    square[20:35, 15:30] = True
    sam = load_sam("litemedsam")
    maps = sam.decode(sam.embed(unit_range(image)[None]), box_of(square, 2)[None], image.shape)
    assert maps.shape == (1, 60, 50)
    assert maps[0][square].mean() > 0.5 and maps[0][~square].mean() < 0.1


def test_train_resume_predict_and_evaluate_with_nnunet_commands(smml_model, nnunet_folders, raw_dataset, tmp_path):
    fold = os.path.join(smml_model["folder"], "fold_0")
    log = training_log(fold)
    assert "SMML: two branches; priors: tiny_random maps of 3 targets x 4 modalities" in log
    assert "consistency terms from epoch 1" in log and "Epoch 1" in log
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 2
    first, second = (epoch["values"] for epoch in checkpoint["loss_terms"]["history"])  # one per epoch, both runs
    assert set(first) == {"branch_segmentation", "refinement", "prior_consistency", "pixel_consistency",
                          "feature_consistency"}
    assert first["pixel_consistency"] == first["feature_consistency"] == first["prior_consistency"] == 0
    assert second["pixel_consistency"] > 0 and second["prior_consistency"] > 0 and second["feature_consistency"] > 0
    assert set(checkpoint["loss_terms"]["history"][0]["clipped_fraction"]) == {"branch_0", "branch_1",
                                                                              "refinement_heads"}
    weights = checkpoint["network_weights"]
    assert any(k.startswith("branches.0.") for k in weights) and any(k.startswith("branches.1.") for k in weights)
    assert [g["branch"] for g in checkpoint["optimizer_state"]["param_groups"]] == [0, 1]
    heads = checkpoint["auxiliaries"]["refinement_heads"]
    assert any(k.startswith("heads.1.") for k in heads["weights"]) and heads["optimizer_state"]["state"]

    env = clean_env(nnunet_folders)
    model = ["-d", DATASET_ID, "-c", CONFIGURATION, "-tr", TRAINER, "-f", "0", "-device", "cpu", "--disable_tta"]
    images = os.path.join(raw_dataset, "imagesTs")
    run(["nnUNetv2_predict", "-i", images, "-o", tmp_path / "predictions", *model], env)
    predicted = sorted(f for f in os.listdir(tmp_path / "predictions") if f.endswith(".nii.gz"))
    assert predicted == sorted(os.listdir(os.path.join(raw_dataset, "labelsTs")))
    run(["nnUNetv2_evaluate_missing", "-i", images, "-o", tmp_path / "evaluation", "--subsets", "FLAIR",
         "T1ce+FLAIR", *model], env)
    summary = load_json(tmp_path / "evaluation" / "summary.json")
    assert summary["subsets"] == ["FLAIR", "T1ce+FLAIR"]
    for subset in summary["subsets"]:
        assert set(summary["per_subset"][subset]) == {"whole_tumor", "tumor_core", "enhancing_tumor",
                                                     "enhancing_tumor_postprocessed"}


# --- data ----------------------------------------------------------------------------------------

def test_the_two_branches_never_get_the_same_subset(preprocessed, single_process_augmentation):
    np.random.seed(0)
    trainer = smml_trainer(SMMLTrainerNoPriors, preprocessed)
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    pairs = set()
    for _ in range(6):
        batch = next(loader)
        (x0, x1), masks = trainer.branch_inputs(batch)
        assert masks.shape == (trainer.batch_size, 2, NUM_MODALITIES)
        assert masks.any(2).all() and not (masks[:, 0] == masks[:, 1]).all(1).any()
        assert torch.equal(x0, batch["data"])  # the image's own masking is branch 0's
        assert torch.equal(available_modalities(x0), masks[:, 0])
        assert torch.equal(available_modalities(x1), masks[:, 1])
        pairs.update((tuple(a), tuple(b)) for a, b in masks.tolist())
    assert len(pairs) > 3


def _write_label_priors(preprocessed, folder, targets, modalities):
    """Priors that equal the ground truth of each target, on every modality."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    dataset = nnUNetDatasetBlosc2(data_folder(preprocessed))
    os.makedirs(folder)
    for identifier in dataset.identifiers:
        _, seg, _, _ = dataset.load_case(identifier)
        masks = np.stack([np.isin(seg[0][:], labels) for _, labels in targets]).astype(np.uint8) * storage.SCALE
        storage.write_case(folder, identifier, np.repeat(masks, len(modalities), 0), (40, 48, 40))
    storage.PriorsMetadata(targets=[[n, list(l)] for n, l in targets], modalities=list(modalities),
                           model="ground truth", checkpoint=None).save(folder)


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_priors_stay_aligned_with_the_image_through_spatial_augmentation(preprocessed, tmp_path,
                                                                         single_process_augmentation):
    np.random.seed(1)
    folder = tmp_path / "priors"
    trainer = smml_trainer(SMMLAlwaysAugmented, preprocessed, priors_folder=folder)
    _write_label_priors(preprocessed, folder, storage.prior_targets(trainer.label_manager), trainer.modalities.names)
    trainer.initialize()
    assert trainer.refinement is not None
    loader, val_loader = trainer.get_dataloaders()
    aligned, flipped = [], []
    for _ in range(3):
        batch = next(loader)
        target = batch["target"][0].bool()  # (B, K, *patch): regions after augmentation
        priors = batch["priors"].reshape(target.shape[0], NUM_TARGETS, NUM_MODALITIES, *target.shape[2:])
        assert priors.min() >= 0 and priors.max() <= 1
        for b in range(target.shape[0]):
            for k in range(NUM_TARGETS):
                if target[b, k].sum() < 20:
                    continue
                for m in range(NUM_MODALITIES):  # the image's modality masking leaves the priors alone
                    aligned.append(_dice(priors[b, k, m] > 0.5, target[b, k]))
                    flipped.append(_dice(priors[b, k, m].flip((0, 1, 2)) > 0.5, target[b, k]))
    assert len(aligned) >= 12
    assert min(aligned) > 0.9, aligned
    assert np.mean(flipped) < 0.6  # the check can tell a misplaced prior
    assert "priors" not in next(val_loader)


# --- networks and losses ---------------------------------------------------------------------------

def test_two_branch_network_averages_its_branches_and_switches_both(preprocessed):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans_manager = PlansManager(os.path.join(preprocessed, f"{PLANS}.json"))
    for configuration, shape in ((CONFIGURATION, (1, 4, 16, 16, 24)), ("2d", (2, 4, 32, 48))):
        manager = plans_manager.get_configuration(configuration)
        network = SMMLTrainer.build_network_architecture(plans_manager, manager, 4, 3, False).eval()
        assert isinstance(network, TwoBranchNetwork)
        x = torch.randn(shape)
        with torch.no_grad():
            expected = (network.branches[0](x) + network.branches[1](x)) / 2
            assert torch.allclose(network(x), expected, atol=1e-6)
            assert not torch.allclose(network.branches[0](x), network.branches[1](x))  # own weights
            out = network(x, x.flip(1))
        bottleneck_channels = manager.network_arch_init_kwargs["features_per_stage"][-1]
        assert [t.shape[1] for t in out["bottleneck"]] == [bottleneck_channels] * 2
        network.decoder.deep_supervision = True
        assert all(b.decoder.deep_supervision for b in network.branches)
        with torch.no_grad():
            assert isinstance(network(x), list)
        head = RefinementHead.from_plans(manager, NUM_TARGETS * NUM_MODALITIES, 3, (8, 16, 32))
        assert head(torch.rand(shape[0], 12, *shape[2:]), torch.rand(shape[0], 3, *shape[2:])).shape == \
            (shape[0], 3, *shape[2:])


@pytest.mark.parametrize("regions", [True, False])
def test_consistency_terms_are_zero_when_the_branches_agree(regions):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4)
    target = (torch.rand(2, 3, 6, 5, 4) > 0.5).float() if regions else torch.randint(0, 3, (2, 1, 6, 5, 4))
    features = torch.randn(2, 8, 3, 3, 2)
    fractions = class_fractions(target, regions, 3, features.shape[2:])
    other_logits, other_features = torch.randn_like(logits), torch.randn_like(features)

    assert pixel_consistency(logits, logits.clone(), target, regions) == 0
    assert prior_consistency(logits, logits.clone(), regions) == 0
    assert relation_consistency(features, features.clone(), fractions) == 0
    assert pixel_consistency(logits, other_logits, target, regions) > 0
    assert prior_consistency(logits, other_logits, regions) > 0
    assert relation_consistency(features, other_features, fractions) > 0

    # The peer teaches and is not taught; it teaches only where it is the more reliable one.
    student, peer = logits.clone().requires_grad_(), other_logits.clone().requires_grad_()
    reliability_gated_kl(student, peer, target, regions).backward()
    assert peer.grad is None and student.grad.abs().sum() > 0
    p_student = torch.sigmoid(logits) if regions else torch.softmax(logits, 1)
    p_peer = torch.sigmoid(other_logits) if regions else torch.softmax(other_logits, 1)
    if regions:
        student_better = ((target * p_student + (1 - target) * (1 - p_student))
                          >= (target * p_peer + (1 - target) * (1 - p_peer)))
        assert student_better.any() and student.grad[student_better].abs().max() == 0
    else:
        student_better = p_student.gather(1, target) >= p_peer.gather(1, target)
        assert student_better.any() and student.grad[student_better.expand_as(logits)].abs().max() == 0


def test_label_map_datasets_get_every_term(preprocessed):
    """The softmax path end to end: a label-based dataset.json (no regions) on the same data."""
    dataset_json = load_json(os.path.join(preprocessed, "dataset.json"))
    dataset_json["labels"] = {"background": 0, "edema": 1, "core": 2, "enhancing": 3}
    dataset_json.pop("regions_class_order")

    class LabelMaps(SMMLConsistencyFromStart):
        use_priors = False

    trainer = smml_trainer(LabelMaps, preprocessed, dataset_json)
    trainer.initialize()
    torch.manual_seed(0)
    image = torch.randn(2, 4, 40, 48, 40)
    target = [torch.randint(0, 4, (2, 1, 40 // s, 48 // s, 40 // s)).float() for s in (1, 2, 4)]
    masks = torch.tensor([[[1, 0, 0, 0], [0, 1, 1, 1]], [[1, 1, 1, 1], [0, 0, 1, 0]]], dtype=torch.bool)
    (x0, x1), _ = trainer.branch_inputs({"data_unmasked": image, "modality_mask": masks})
    terms = trainer.compute_losses(trainer.network(x0, x1), target, masks, None)
    assert set(terms) == {"branch_segmentation", "pixel_consistency", "feature_consistency"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())


# --- training --------------------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_branches_heads_and_optimisers(preprocessed, sam_priors, tmp_path,
                                                                      single_process_augmentation):
    np.random.seed(2)
    trainer = smml_trainer(SMMLConsistencyFromStart, preprocessed)
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    trainer.network.train()
    out = trainer.train_step(next(loader))
    assert out["pixel_consistency"] > 0 and out["refinement"] > 0
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)

    restored = smml_trainer(SMMLConsistencyFromStart, preprocessed)
    restored.load_checkpoint(path)
    for a, b in ((trainer.network, restored.network), (trainer.refinement, restored.refinement)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    for a, b in ((trainer.optimizer, restored.optimizer), (trainer.refinement_optimizer,
                                                            restored.refinement_optimizer)):
        buffers = [s["momentum_buffer"] for s in a.state_dict()["state"].values()]
        assert buffers and all(torch.equal(x, y) for x, y in
                               zip(buffers, [s["momentum_buffer"] for s in b.state_dict()["state"].values()]))


def test_training_without_priors_on_disk_works_and_says_so_once(preprocessed, tmp_path, single_process_augmentation):
    np.random.seed(3)
    trainer = smml_trainer(SMMLConsistencyFromStart, preprocessed, priors_folder=tmp_path / "nothing_here")
    trainer.initialize()
    assert trainer.refinement is None and "refinement_heads" not in trainer.auxiliaries
    loader, _ = trainer.get_dataloaders()
    trainer.network.train()
    batch = next(loader)
    assert "priors" not in batch
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and "refinement" not in out and out["pixel_consistency"] > 0
    log = open(trainer.log_file).read()
    assert log.count("no Segment Anything priors") == 1
    assert "nnUNetv2_smml_priors -d Dataset991_SyntheticBraTS -c 3d_fullres" in log


def test_incomplete_priors_are_refused_with_what_to_do(preprocessed, tmp_path):
    folder = tmp_path / "priors"
    trainer = smml_trainer(SMMLTrainer, preprocessed, priors_folder=folder)
    _write_label_priors(preprocessed, folder, storage.prior_targets(trainer.label_manager), trainer.modalities.names)
    os.remove(storage.case_path(str(folder), "case_0003"))
    with pytest.raises(storage.PriorsError, match=r"1 of 6 training cases have no priors .*case_0003.*run "
                                                  r"nnUNetv2_smml_priors again"):
        trainer.initialize()


def test_the_checkpoint_decides_whether_the_refinement_heads_exist(preprocessed, tmp_path):
    """--c continues the method a run started with, whatever priors appeared or vanished since."""
    folder = tmp_path / "priors"
    without = smml_trainer(SMMLTrainer, preprocessed, priors_folder=tmp_path / "none")
    without.initialize()
    without.save_checkpoint(str(tmp_path / "without.pth"))
    with_priors = smml_trainer(SMMLTrainer, preprocessed, priors_folder=folder)
    _write_label_priors(preprocessed, folder, storage.prior_targets(with_priors.label_manager),
                        with_priors.modalities.names)
    with_priors.initialize()
    assert with_priors.refinement is not None
    with_priors.save_checkpoint(str(tmp_path / "with.pth"))

    resumed = smml_trainer(SMMLTrainer, preprocessed, priors_folder=folder)
    resumed.load_checkpoint(str(tmp_path / "without.pth"))
    assert resumed.refinement is None and "refinement_heads" not in resumed.auxiliaries
    resumed = smml_trainer(SMMLTrainer, preprocessed, priors_folder=tmp_path / "none")
    resumed.load_checkpoint(str(tmp_path / "with.pth"))  # e.g. --val after the priors were deleted
    assert resumed.refinement is None
    assert "trained with priors, which are not available now" in open(resumed.log_file).read()


def test_train_steps_are_synchronised_under_ddp(preprocessed, narrow_plans, sam_priors):
    """Two gloo processes on the CPU, every term on: both branches and both heads agree across ranks."""
    from ddp_check import check_ddp_train_steps
    moved = check_ddp_train_steps("test_smml:SMMLConsistencyFromStart", preprocessed, CONFIGURATION, steps=2,
                                  plans_name=narrow_plans["plans_name"])
    assert set(moved) == {"network", "refinement_heads"}
