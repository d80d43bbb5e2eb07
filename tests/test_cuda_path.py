"""nnU-Net's CUDA training path on the CPU, for every trainer family: the networks compiled where
nnU-Net (and MST-KD, for its teacher) compiles them, fp16 autocast, a GradScaler
(``nnUNet_missingmod_cuda_path=1``, docs/training.md).

Graphs are captured with ``aot_eager``: the same graphs, guards and recompilations as inductor,
without code generation. The network is the plans' U-Net made narrow (4-16 features, a 16^3 patch,
``nnunet_missingmod.planning.write_narrow_plans``) on the same preprocessed data: the CPU has no
fp16 convolution kernels (a 3D convolution in fp16 takes ~130x its fp32 time here), and the
path's code does not depend on the width.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from conftest import (CONFIGURATION, DATASET_ID, DATASET_NAME, make_trainer, run, run_together, training_env,
                      training_log)
from nnunet_missingmod.planning import NARROW_PLANS

CUDA_PATH = {"nnUNet_missingmod_cuda_path": "1", "nnUNet_missingmod_compile_backend": "aot_eager"}
PLANS = NARROW_PLANS
FAMILIES = ["ModalityDropoutTrainer", "MSTKDTrainer", "MSTKDFrozenTeacherTrainer", "SMMLTrainer", "MAGMSTrainer",
            "MAGMSTrainerSampledPath", "DedicatedTrainer__T1ce_FLAIR"]
NUM_SUBSETS = 15
MAX_STEPS = 60  # seeded; unseeded, 120 draws miss one of 15 subsets with probability 15 (14/15)^120 < 1e-3


@pytest.fixture
def cuda_path(monkeypatch, tmp_path):
    for name, value in CUDA_PATH.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_missingmod_seed", "1")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def trainer_class(name: str):
    import nnunet_missingmod.training as trainers
    return getattr(trainers, name)


def write_teacher(preprocessed: str, plans: dict, folder) -> str:
    """An untrained MSTKDTeacherTrainer checkpoint: what the frozen path runs does not depend on its weights."""
    teacher = make_trainer(trainer_class("MSTKDTeacherTrainer"), preprocessed, plans=plans)
    teacher.initialize()
    os.makedirs(folder / "fold_1")
    teacher.output_folder = str(folder / "fold_1")
    teacher.save_checkpoint(str(folder / "fold_1" / "checkpoint_final.pth"))
    return str(folder)


def dynamo_counts() -> dict:
    from torch._dynamo.utils import counters
    return {"graphs": int(counters["stats"]["unique_graphs"]), "recompiles": int(sum(counters["recompiles"].values())),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def subsets_in(batch: dict) -> set:
    masks = batch["modality_mask"].reshape(-1, batch["modality_mask"].shape[-1])
    return {tuple(m.tolist()) for m in masks.bool()}


def weights_of(optimizer) -> list[torch.Tensor]:
    return [p.detach().clone() for group in optimizer.param_groups for p in group["params"] if p.ndim > 1]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_on_the_cuda_path(name, preprocessed, narrow_plans, cuda_path, monkeypatch, tmp_path):
    from torch._dynamo import OptimizedModule

    from nnunet_missingmod.training.base import unwrap

    if name.startswith("MSTKD"):  # its style discriminator as narrow as the plans' U-Net: at its own widths
        # (64-256) the CPU's fp16 convolution backward made it 70 % of a step (profiled), and the path is the same
        import functools

        import nnunet_missingmod.training.mstkd as mstkd
        monkeypatch.setattr(mstkd, "StyleDiscriminator", functools.partial(mstkd.StyleDiscriminator, widths=(4, 8, 16)))
    if name == "MSTKDFrozenTeacherTrainer":
        monkeypatch.setenv("nnUNet_missingmod_teacher", write_teacher(preprocessed, narrow_plans, tmp_path / "teacher"))
    trainer = make_trainer(trainer_class(name), preprocessed, plans=narrow_plans)
    if name == "SMMLTrainer":  # a priors folder of its own, empty: test_smml.py rewrites the dataset's meanwhile
        trainer.priors_folder = str(tmp_path / "priors")
    trainer.initialize()
    assert isinstance(trainer.network, OptimizedModule) and trainer.grad_scaler is not None
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
    if name.startswith("MSTKD"):  # the teacher is compiled too, by us (in place)
        teacher = unwrap(trainer.teacher)
        teacher = getattr(teacher, "network", teacher)  # the frozen teacher's wrapper holds it
        assert teacher._compiled_call_impl is not None
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    before = [weights_of(o) for o in trainer.optimizers()]
    frozen = {n: [p.detach().clone() for p in aux.module.parameters()]
              for n, aux in trainer.auxiliaries.items() if not aux.trainable}
    scales, seen, after_first = [trainer.grad_scaler.get_scale()], set(), None
    subsets = 1 if name.startswith("Dedicated") else NUM_SUBSETS  # a dedicated model sees its own only
    for step in range(MAX_STEPS):
        batch = next(trainer.dataloader_train)
        if trainer.mask_modalities:
            seen |= subsets_in(batch)
        output = trainer.train_step(batch)
        bad = {k: v for k, v in output.items() if not math.isfinite(float(v))}
        assert not bad, f"{name} step {step + 1}: non-finite {bad}"
        scales.append(trainer.grad_scaler.get_scale())
        if step == 0:
            after_first = dynamo_counts()
        if step >= 2 and (not trainer.mask_modalities or len(seen) == subsets):
            break
    # the scaler skipped no step after the first (it halves its scale on a non-finite gradient)
    assert all(b >= a for a, b in zip(scales[1:], scales[2:])), scales
    assert not trainer.mask_modalities or len(seen) == subsets, f"{len(seen)} subsets in {step + 1} steps"
    # graphs are captured once: a new subset (or a new loss weight) recompiles nothing
    assert dynamo_counts() == after_first, (after_first, dynamo_counts())
    for optimizer, old in zip(trainer.optimizers(), before):
        changed = [not torch.equal(a, b) for a, b in zip(old, weights_of(optimizer))]
        assert all(changed), f"{name}: {changed.count(False)} of {len(changed)} weights did not move"
    for aux_name, old in frozen.items():
        assert all(torch.equal(a, b) for a, b in zip(old, trainer.auxiliaries[aux_name].module.parameters()))

    # compiled and eager agree within fp16 (same weights, the deployed forward)
    trainer.network.eval()
    image = batch["data"][:1]
    with torch.no_grad(), trainer.autocast():
        compiled, eager = trainer.network(image), unwrap(trainer.network)(image)
    compiled, eager = (o[0] if isinstance(o, (list, tuple)) else o for o in (compiled, eager))
    assert compiled.dtype == torch.float16
    error = (compiled.float() - eager.float()).norm() / eager.float().norm()
    assert error < 1e-2, f"{name}: compiled vs eager relative error {error:.2e}"
    validation = trainer.validation_step(next(trainer.dataloader_val))
    assert np.isfinite(validation["loss"])


def test_a_compiled_scaled_run_resumes_and_predicts(nnunet_folders, preprocessed, narrow_plans, raw_dataset, tmp_path):
    """MST-KD (a compiled student, a compiled teacher, a discriminator, one GradScaler) through
    nnU-Net's own commands: trained, resumed with --c, and its checkpoint predicted by
    nnUNetv2_predict and nnUNetv2_predict_missing."""
    trainer, fold = "MSTKDTrainer", "0"
    command = ["nnUNetv2_train", DATASET_ID, CONFIGURATION, fold, "-tr", trainer, "-p", PLANS, "-device", "cpu"]
    run(command, training_env(nnunet_folders, epochs=1, **CUDA_PATH))
    run(command + ["--c"], training_env(nnunet_folders, epochs=2, **CUDA_PATH))
    model = os.path.join(nnunet_folders["nnUNet_results"], DATASET_NAME, f"{trainer}__{PLANS}__{CONFIGURATION}")
    log = training_log(os.path.join(model, f"fold_{fold}"))
    assert "nnU-Net's CUDA path on the CPU" in log and "torch.compile backend: aot_eager" in log
    assert "Epoch 1" in log
    checkpoint = torch.load(os.path.join(model, f"fold_{fold}", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["grad_scaler_state"]["scale"] > 0
    assert not any(k.startswith("_orig_mod") for k in checkpoint["network_weights"])
    assert not any("_orig_mod" in k for k in checkpoint["auxiliaries"]["teacher"]["weights"])

    images = os.path.join(raw_dataset, "imagesTs")
    env = training_env(nnunet_folders, epochs=2)  # prediction is the same with or without the CUDA path
    predictions = (("nnUNetv2_predict", [], "pred"), ("nnUNetv2_predict_missing", ["--missing", "T1ce"], "pred_noT1ce"))
    run_together([([tool, "-i", images, "-o", tmp_path / out, "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", trainer,
                    "-p", PLANS, "-f", fold, "-device", "cpu", "--disable_tta", *extra], env)
                  for tool, extra, out in predictions])
    for _, _, out in predictions:
        predicted = sorted(f for f in os.listdir(tmp_path / out) if f.endswith(".nii.gz"))
        assert predicted == sorted(f for f in os.listdir(os.path.join(raw_dataset, "labelsTs")))


def test_sums_over_positions_stay_in_float32_under_fp16_autocast():
    """MST-KD's Gram matrices and SMML's class prototypes sum over every position of a feature map:
    at nnU-Net's BraTS plan the bottleneck has 4³ = 64 positions, so features of about 32 would
    leave fp16's range (65504). Both are computed in float32 whatever the autocast."""
    from nnunet_missingmod.losses.consistency import class_prototypes
    from nnunet_missingmod.losses.style import cross_layer_gram

    features = torch.full((2, 5, 4, 4, 4), 40.0)
    fractions = torch.ones(2, 3, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        unprotected = features.flatten(2) @ features.flatten(2).transpose(1, 2)
        gram = cross_layer_gram(features, features)
        prototypes, present = class_prototypes(features, fractions)
    assert torch.isinf(unprotected).all()  # what fp16 would have given
    assert gram.dtype == torch.float32 and torch.equal(gram, torch.full((2, 5, 5), 1600.0))
    assert prototypes.dtype == torch.float32 and torch.equal(prototypes, torch.full((3, 5), 40.0)) and present.all()
