"""Dedicated models (one nnU-Net per subset of modalities): found by nnU-Net's commands, trained on
their subset only, and deploying a network that ignores the other channels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, make_trainer, run, training_env
from nnunet_missingmod.training.dedicated import DedicatedSubsetTrainer, SubsetInput

TRAINER = "DedicatedTrainer__T1ce_FLAIR"


def test_train_and_predict_with_nnunet_commands(nnunet_folders, preprocessed, raw_dataset, tmp_path):
    run(["nnUNetv2_train", DATASET_ID, CONFIGURATION, "0", "-tr", TRAINER, "-device", "cpu"],
        training_env(nnunet_folders, epochs=1))
    folder = os.path.join(nnunet_folders["nnUNet_results"], DATASET_NAME, f"{TRAINER}__nnUNetPlans__{CONFIGURATION}")
    checkpoint = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), weights_only=False)
    assert checkpoint["network_weights"]["kept"].tolist() == [False, True, False, True]
    run(["nnUNetv2_predict", "-i", os.path.join(raw_dataset, "imagesTs"), "-o", tmp_path / "predictions", "-d",
         DATASET_ID, "-c", CONFIGURATION, "-tr", TRAINER, "-f", "0", "-device", "cpu", "--disable_tta"],
        training_env(nnunet_folders, epochs=1))
    assert len([f for f in os.listdir(tmp_path / "predictions") if f.endswith(".nii.gz")]) == 2


def test_training_masks_to_the_subset_and_the_network_ignores_other_channels(preprocessed):
    import nnunet_missingmod.training as training
    trainer = make_trainer(getattr(training, TRAINER), preprocessed)
    assert trainer.subset_channels == (1, 3)
    transform = trainer.build_masking_transform()
    np.random.seed(0)
    for _ in range(5):
        assert transform.get_parameters()["masks"].tolist() == [[False, True, False, True]]
    trainer.initialize()
    network = trainer.network.eval()
    assert isinstance(network, SubsetInput)
    torch.manual_seed(0)
    x = torch.randn(1, 4, 40, 48, 40)
    only = x.clone()
    only[:, [0, 2]] = 0
    with torch.no_grad():
        torch.testing.assert_close(network(x)[0], network(only)[0])
        assert not torch.allclose(network(x)[0], network(x * torch.tensor([1, 0, 1, 1.]).view(1, 4, 1, 1, 1))[0])


def test_a_subset_the_dataset_lacks_is_refused(preprocessed):
    class PDOnly(DedicatedSubsetTrainer):
        subset = ("PD",)

    with pytest.raises(ValueError, match="trains on PD, which dataset .* does not have"):
        make_trainer(PDOnly, preprocessed)
    with pytest.raises(ValueError, match="names no subset"):
        make_trainer(DedicatedSubsetTrainer, preprocessed)


def test_one_trainer_per_brats_subset():
    import nnunet_missingmod.training as training
    names = [n for n in training.__all__ if n.startswith("DedicatedTrainer__")]
    assert len(names) == 15 and "DedicatedTrainer__T1_T1ce_T2_FLAIR" in names
