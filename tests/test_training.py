import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CONFIGURATION, DATASET_NAME, load_json, make_trainer, training_log
from nnunet_missingmod.modalities import available_modalities
from nnunet_missingmod.training import FullModalityTrainer, MissingModalityTrainer, ModalityDropoutTrainer
from nnunet_missingmod.training.base import DISABLE_TTA_VARIABLE, SKIP_FINAL_VALIDATION_VARIABLE


class UnmaskedImageTrainer(ModalityDropoutTrainer):
    keep_unmasked_image = True
    num_mask_views = 2


class AuxiliaryTrainer(MissingModalityTrainer):
    """A stand-in for a method trainer: a second module with its own optimiser."""

    def initialize(self):
        super().initialize()
        module = nn.Conv3d(4, 2, 1)
        self.aux_optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        self.aux = self.register_auxiliary("teacher", module, self.aux_optimizer)


# --- the real command ----------------------------------------------------------------------------

def test_train_then_resume_with_nnunet_commands(trained_model):
    fold = os.path.join(trained_model["folder"], "fold_0")
    log = training_log(fold)
    assert "modalities: T1, T1ce, T2, FLAIR; masking: uniform" in log
    assert "nnUNet_missingmod_num_epochs=1 shortens training" in log
    assert "nnUNet_missingmod_num_epochs=2 shortens training" in log
    assert "Epoch 1" in log  # the resumed run trained the second epoch
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "ModalityDropoutTrainer"
    assert checkpoint["current_epoch"] == 2
    assert not [f for f in os.listdir(fold) if f.endswith(".partial")]
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))  # nnU-Net's final validation ran
    # ... after the resumed run only: the first skipped it (conftest's training_env)
    assert log.count(f"{SKIP_FINAL_VALIDATION_VARIABLE}=1: final validation skipped") == 1
    assert f"{DISABLE_TTA_VARIABLE}=1: no test-time mirroring" in log  # conftest's training_env sets it
    assert checkpoint["inference_allowed_mirroring_axes"] is None


# --- in-process checks of the pieces -----------------------------------------------------------

def test_batches_carry_the_mask_and_the_unmasked_image(preprocessed, single_process_augmentation):
    np.random.seed(0)
    trainer = make_trainer(UnmaskedImageTrainer, preprocessed)
    trainer.initialize()
    train_loader, val_loader = trainer.get_dataloaders()
    seen = set()
    for _ in range(4):
        batch = next(train_loader)
        masks, data, full = batch["modality_mask"], batch["data"], batch["data_unmasked"]
        assert masks.shape == (trainer.batch_size, 2, 4) and masks.dtype == torch.bool
        assert masks[:, 0].any(1).all() and not (masks[:, 0] == masks[:, 1]).all(1).any()
        assert torch.equal(available_modalities(data), masks[:, 0])  # training mask == what the network sees
        assert torch.equal(data, full * masks[:, 0, :, None, None, None])
        seen.update(map(tuple, masks[:, 0].tolist()))
    assert len(seen) > 1
    assert "modality_mask" not in next(val_loader)  # validation sees every modality, as nnU-Net's


def test_masking_sits_after_every_intensity_transform(preprocessed):
    trainer = make_trainer(ModalityDropoutTrainer, preprocessed)
    trainer.initialize()
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    pipeline = trainer.get_training_transforms(trainer.configuration_manager.patch_size, rotation, None, mirror_axes,
                                               dummy_2d, use_mask_for_norm=[True] * 4)
    names = [type(getattr(t, "transform", t)).__name__ for t in pipeline.transforms]  # unwrap RandomTransform
    position = names.index("ModalityMaskingTransform")
    for intensity in ("GaussianNoiseTransform", "GammaTransform", "ContrastTransform", "MirrorTransform",
                      "MaskImageTransform"):
        assert names.index(intensity) < position, names
    assert names[position + 1] == "RemoveLabelTransform"


def test_the_no_masking_reference_has_nnunets_own_pipeline(preprocessed):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    trainer = make_trainer(FullModalityTrainer, preprocessed)
    reference = make_trainer(nnUNetTrainer, preprocessed)
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    pipelines = [t.get_training_transforms(trainer.configuration_manager.patch_size, rotation, None, mirror_axes,
                                           dummy_2d, use_mask_for_norm=[True] * 4) for t in (trainer, reference)]
    names = [[type(getattr(t, "transform", t)).__name__ for t in p.transforms] for p in pipelines]
    assert names[0] == names[1] and "ModalityMaskingTransform" not in names[0]


def test_auxiliary_modules_survive_a_checkpoint_round_trip(preprocessed, tmp_path):
    trainer = make_trainer(AuxiliaryTrainer, preprocessed)
    trainer.initialize()
    loss = trainer.aux(torch.randn(1, 4, 4, 4, 4)).square().mean()
    loss.backward()
    trainer.aux_optimizer.step()
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # written atomically, no partial file left

    restored = make_trainer(AuxiliaryTrainer, preprocessed)
    restored.load_checkpoint(path)
    for a, b in zip(trainer.aux.state_dict().values(), restored.aux.state_dict().values()):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in trainer.aux_optimizer.state_dict()["state"].values()]
    restored_momentum = [s["momentum_buffer"] for s in restored.aux_optimizer.state_dict()["state"].values()]
    assert momentum and all(torch.equal(a, b) for a, b in zip(momentum, restored_momentum))
    # network_weights is the deployable network alone, loadable by the predictor's rebuild
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    network = AuxiliaryTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 4, trainer.label_manager.num_segmentation_heads, False)
    network.load_state_dict(checkpoint["network_weights"])


def test_resume_refuses_a_checkpoint_without_the_auxiliary(preprocessed, tmp_path):
    plain = make_trainer(ModalityDropoutTrainer, preprocessed)
    plain.initialize()
    path = str(tmp_path / "plain.pth")
    plain.save_checkpoint(path)
    with pytest.raises(KeyError, match="no auxiliary module 'teacher'"):
        make_trainer(AuxiliaryTrainer, preprocessed).load_checkpoint(path)


def test_one_channel_dataset_is_refused(preprocessed):
    dataset_json = load_json(os.path.join(preprocessed, "dataset.json"))
    dataset_json["channel_names"] = {"0": "FLAIR"}
    with pytest.raises(ValueError, match=rf"needs at least two channels.*{DATASET_NAME}.*\['FLAIR'\]"):
        make_trainer(ModalityDropoutTrainer, preprocessed, dataset_json=dataset_json)


def test_bad_length_override_is_refused(preprocessed, monkeypatch):
    monkeypatch.setenv("nnUNet_missingmod_num_epochs", "ten")
    with pytest.raises(ValueError, match="nnUNet_missingmod_num_epochs must be a positive integer"):
        make_trainer(ModalityDropoutTrainer, preprocessed)


def test_test_time_mirroring_is_dropped_from_the_model_on_request(preprocessed, monkeypatch):
    """nnUNet_missingmod_disable_tta: the checkpoint's inference mirroring axes (what nnU-Net's final
    validation and predictor use) are None; the training augmentation still mirrors."""
    default = make_trainer(ModalityDropoutTrainer, preprocessed)
    _, _, _, training_axes = default.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert default.inference_allowed_mirroring_axes == training_axes == (0, 1, 2)
    monkeypatch.setenv(DISABLE_TTA_VARIABLE, "1")
    trainer = make_trainer(ModalityDropoutTrainer, preprocessed)
    _, _, _, training_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert trainer.inference_allowed_mirroring_axes is None and training_axes == (0, 1, 2)
    monkeypatch.setenv(DISABLE_TTA_VARIABLE, "maybe")
    with pytest.raises(ValueError, match=f"{DISABLE_TTA_VARIABLE} must be 1 or 0"):
        make_trainer(ModalityDropoutTrainer, preprocessed)


def test_train_step_is_synchronised_under_ddp(preprocessed, narrow_plans):
    """Two gloo processes on the CPU: after two steps on different batches the ranks agree."""
    from ddp_check import check_ddp_train_steps
    moved = check_ddp_train_steps("ModalityDropoutTrainer", preprocessed, CONFIGURATION, steps=2,
                                  plans_name=narrow_plans["plans_name"])
    assert set(moved) == {"network"}
