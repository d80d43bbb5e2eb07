"""Seeded training: the same seed gives the same checkpoint, another seed another one, with nnU-Net's
own command and its augmentation workers; and the batch stream does not depend on the number of
workers."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, clean_env, run, run_together, training_env
from nnunet_missingmod.training.seeding import SEED_VARIABLE, derived_seed, seed_from_environment

FOLD = 2  # away from the folds other tests train


def _train_together(nnunet_folders, tmp_path, seeds: dict[str, int]) -> dict[str, dict]:
    """``{name: final checkpoint}`` of one short training per seed, started together, each with its
    own nnUNet_results."""
    command = ["nnUNetv2_train", DATASET_ID, CONFIGURATION, FOLD, "-tr", "ModalityDropoutTrainer", "-device", "cpu"]
    run_together([(command, training_env({**nnunet_folders, "nnUNet_results": str(tmp_path / name)}, epochs=1,
                                         nnUNet_n_proc_DA=2, **{SEED_VARIABLE: seed}))
                  for name, seed in seeds.items()])
    return {name: torch.load(tmp_path / name / DATASET_NAME / f"ModalityDropoutTrainer__nnUNetPlans__{CONFIGURATION}"
                             / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
            for name in seeds}


def test_the_same_seed_gives_the_same_checkpoint(nnunet_folders, preprocessed, tmp_path):
    checkpoints = _train_together(nnunet_folders, tmp_path, {"first": 7, "again": 7, "other": 8})
    first, again, other = (checkpoints[k] for k in ("first", "again", "other"))
    weights = first["network_weights"]
    assert all(torch.equal(weights[k], again["network_weights"][k]) for k in weights)
    def logged(checkpoint):  # losses and pseudo Dice too (validation batches are seeded); not the clock
        return {k: v for k, v in checkpoint["logging"].items() if not k.endswith("timestamps")}
    assert logged(first) == logged(again)
    assert any(not torch.equal(weights[k], other["network_weights"][k]) for k in weights)


BATCH_SUMS = """
import json, os, sys
sys.path.insert(0, {tests!r})
from conftest import make_trainer
from nnunet_missingmod.training import ModalityDropoutTrainer
trainer = make_trainer(ModalityDropoutTrainer, {preprocessed!r}, fold={fold})
trainer.initialize()
train, validation = trainer.get_dataloaders()
sums = [float(next(train)["data"].double().sum()) for _ in range(3)]
for loader in (train, validation):
    getattr(loader, "_finish", lambda: None)()
print(json.dumps(sums))
"""


def test_the_batch_stream_does_not_depend_on_the_number_of_workers(nnunet_folders, preprocessed):
    """In a fresh interpreter per worker count, as nnUNetv2_train runs: forking augmentation workers
    from a test process that already holds torch's threads can deadlock."""
    code = BATCH_SUMS.format(tests=os.path.dirname(os.path.abspath(__file__)), preprocessed=preprocessed, fold=FOLD)
    sums = [json.loads(run([sys.executable, "-c", code],
                           clean_env(nnunet_folders, nnUNet_n_proc_DA=workers, **{SEED_VARIABLE: 3})).stdout
                       .strip().splitlines()[-1])
            for workers in (0, 2)]
    assert sums[0] == sums[1]


def test_seed_variable_is_validated(monkeypatch):
    monkeypatch.setenv(SEED_VARIABLE, "")
    assert seed_from_environment() is None
    monkeypatch.setenv(SEED_VARIABLE, "12")
    assert seed_from_environment() == 12
    for bad in ("x", "-1", "1.5"):
        monkeypatch.setenv(SEED_VARIABLE, bad)
        with pytest.raises(ValueError, match=SEED_VARIABLE):
            seed_from_environment()
    assert derived_seed(1, 0, 5) != derived_seed(1, 0, 6) != derived_seed(2, 0, 5)
