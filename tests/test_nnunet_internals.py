"""What the trainers rely on inside nnU-Net (nnunet_missingmod/training/nnunet_internals.py), checked
against the installed nnU-Net: an upgrade that changes any of it fails here, with the reason."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_missingmod.training as training
from conftest import make_trainer
from nnunet_missingmod.training import nnunet_internals as internals


def _plain_trainer(preprocessed):
    return make_trainer(nnUNetTrainer, preprocessed)


def test_trainer_init_signature_is_what_nnunet_reads_back():
    """nnUNetTrainer.__init__ saves its arguments from locals(); every trainer keeps that signature."""
    assert tuple(inspect.signature(nnUNetTrainer.__init__).parameters) == internals.TRAINER_INIT_PARAMETERS
    source = inspect.getsource(nnUNetTrainer.__init__)
    assert "locals()" in source, "nnU-Net no longer reads its init arguments from locals()"
    for name in training.__all__:
        parameters = tuple(inspect.signature(getattr(training, name).__init__).parameters)
        assert parameters == internals.TRAINER_INIT_PARAMETERS, name


def test_get_dataloaders_builds_loader_and_augmenter_by_their_module_names():
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    source = inspect.getsource(nnUNetTrainer.get_dataloaders)
    assert "nnUNetDataLoader(" in source and "NonDetMultiThreadedAugmenter(" in source, \
        "get_dataloaders no longer constructs these by name: dataloading_built_by has no effect"
    for keyword in ("data_loader=", "transform=", "num_processes=", "num_cached=", "seeds=", "pin_memory=",
                    "wait_time="):
        assert keyword in source, f"NonDetMultiThreadedAugmenter is no longer called with {keyword}"
    assert trainer_module.nnUNetDataLoader is nnUNetDataLoader

    class Marker(nnUNetDataLoader):
        pass

    with internals.dataloading_built_by(Marker, {"x": 1}, in_turn=True):
        assert trainer_module.nnUNetDataLoader.func is Marker and trainer_module.nnUNetDataLoader.keywords == {"x": 1}
        assert trainer_module.NonDetMultiThreadedAugmenter is not NonDetMultiThreadedAugmenter
    assert trainer_module.nnUNetDataLoader is nnUNetDataLoader
    assert trainer_module.NonDetMultiThreadedAugmenter is NonDetMultiThreadedAugmenter
    assert "num_cached_per_queue" in inspect.signature(MultiThreadedAugmenter).parameters


def test_masking_goes_after_the_image_transforms(preprocessed):
    trainer = _plain_trainer(preprocessed)
    pipeline = nnUNetTrainer.get_training_transforms(
        trainer.configuration_manager.patch_size, (0, 0), None, (0, 1, 2), False,
        regions=trainer.label_manager.foreground_regions)
    position = internals.masking_position(pipeline)
    assert isinstance(pipeline.transforms[position], RemoveLabelTransform)
    # unwrap RandomTransform
    before = [type(getattr(t, "transform", t)).__name__ for t in pipeline.transforms[:position]]
    assert "MirrorTransform" in before and "GammaTransform" in before  # every image transform comes first


def test_optimiser_recipe_is_nnunets(preprocessed):
    trainer = _plain_trainer(preprocessed)
    trainer.network = torch.nn.Conv3d(1, 1, 1)
    nnunet_optimizer, nnunet_schedule = trainer.configure_optimizers()
    ours, schedule = internals.sgd_with_poly_lr(trainer.network.parameters(), trainer.initial_lr,
                                                trainer.weight_decay, trainer.num_epochs)
    assert type(ours) is type(nnunet_optimizer) and type(schedule) is type(nnunet_schedule)
    assert ours.defaults == nnunet_optimizer.defaults
    for epoch in (0, 10, 500):
        nnunet_schedule.step(epoch)
        schedule.step(epoch)
        assert ours.param_groups[0]["lr"] == nnunet_optimizer.param_groups[0]["lr"]


def test_segmentation_loss_is_nnunets_own(preprocessed):
    trainer = _plain_trainer(preprocessed)
    trainer.initialize()
    ours = internals.segmentation_loss(trainer, ddp=False)
    theirs = trainer._build_loss()
    assert type(ours) is type(theirs) is DeepSupervisionWrapper
    assert type(ours.loss) is type(theirs.loss)
    assert np.allclose(ours.weight_factors, theirs.weight_factors)
    for attribute in ("batch_dice", "do_bg", "smooth", "ddp", "apply_nonlin"):
        assert getattr(ours.loss.dc, attribute) == getattr(theirs.loss.dc, attribute), attribute
    assert ours.loss.use_ignore_label == theirs.loss.use_ignore_label
    torch.manual_seed(0)
    patch = trainer.configuration_manager.patch_size
    output = [torch.randn(2, 3, *(np.array(patch) // s)) for s in (1, 2, 4)]
    target = [(torch.rand(2, 3, *(np.array(patch) // s)) > 0.7).float() for s in (1, 2, 4)]
    torch.testing.assert_close(ours(output, target), theirs(output, target))
    assert internals.segmentation_loss(trainer, ddp=True).loss.dc.ddp


def test_checkpoint_keys_and_load_order(preprocessed, tmp_path):
    """nnU-Net writes these keys (our checkpoints add to them), and its load_checkpoint initialises
    the trainer only when it was not initialised yet (ours initialises first, knowing the file)."""
    trainer = _plain_trainer(preprocessed)
    trainer.initialize()
    trainer.save_checkpoint(str(tmp_path / "plain.pth"))
    assert set(torch.load(tmp_path / "plain.pth", weights_only=False)) == internals.CHECKPOINT_KEYS
    source = inspect.getsource(nnUNetTrainer.load_checkpoint)
    assert "if not self.was_initialized" in source and "self.initialize()" in source


def test_seeded_augmentation_workers_run_torch_on_one_thread_and_do_not_hang(preprocessed, monkeypatch):
    """nnU-Net's own workers run torch on one thread; the seeded trainers' workers (batchgenerators'
    MultiThreadedAugmenter) must too. A worker forked after the trainer's torch ran OpenMP hangs on its
    first operation large enough to go parallel (GNU OpenMP is not fork-safe): this loader does one."""
    import threading

    from nnunet_missingmod.training.data_loader import ModalityMaskDataLoader
    from nnunet_missingmod.training.modality_dropout import ModalityDropoutTrainer
    from nnunet_missingmod.training.seeding import SEED_VARIABLE

    class ThreadReportingLoader(ModalityMaskDataLoader):
        def generate_train_batch(self):
            batch = super().generate_train_batch()
            square = torch.ones(256, 256)
            batch["torch_threads"] = (square @ square, torch.get_num_threads())[1]
            return batch

    class Trainer(ModalityDropoutTrainer):
        def data_loader_class(self):
            return ThreadReportingLoader

    monkeypatch.setenv(SEED_VARIABLE, "1")
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    torch.set_num_threads(2)
    trainer = make_trainer(Trainer, preprocessed)
    trainer.initialize()
    square = torch.ones(512, 512)
    for _ in range(10):
        square @ square  # the trainer's OpenMP team, which a fork does not copy
    train, validation = trainer.get_dataloaders()
    batches = []
    reader = threading.Thread(target=lambda: batches.extend(next(train) for _ in range(2)), daemon=True)
    try:
        reader.start()
        reader.join(120)
        assert not reader.is_alive(), "the augmentation workers did not deliver two batches within 120 s (hung)"
        assert [b["torch_threads"] for b in batches] == [1, 1]
        assert torch.get_num_threads() == 2  # the trainer keeps its threads
    finally:
        for generator in (train, validation):
            generator._finish()


def test_nnunet_compiles_the_network_and_its_dice_where_we_look(preprocessed, monkeypatch):
    """On the (emulated) CUDA path nnU-Net's initialize compiles ``network`` and ``loss.loss.dc``;
    the base trainer rewraps exactly those with the chosen backend."""
    from torch._dynamo import OptimizedModule

    monkeypatch.setenv("nnUNet_missingmod_cuda_path", "1")
    monkeypatch.setenv("nnUNet_missingmod_compile_backend", "aot_eager")
    trainer = make_trainer(training.ModalityDropoutTrainer, preprocessed)
    trainer.initialize()
    places = internals.modules_compiled_by_nnunet(trainer)
    assert [name for _, name in places] == ["network", "dc"]
    assert trainer.loss.loss.dc is places[1][0].dc
    assert all(isinstance(getattr(holder, name), OptimizedModule) for holder, name in places)
    # rewrapped with aot_eager: the Dice term is captured as a graph, and inductor generates nothing
    from torch._dynamo.utils import counters
    from torch._inductor import metrics
    torch._dynamo.reset()
    metrics.reset()
    logits, target = torch.randn(2, 3, 8, 8, 8), (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    trainer.loss.loss.dc(logits, target)
    assert counters["stats"]["unique_graphs"] >= 1 and metrics.generated_kernel_count == 0
    monkeypatch.setenv("nnUNet_missingmod_cuda_path", "0")
    plain = make_trainer(training.ModalityDropoutTrainer, preprocessed)
    plain.initialize()
    assert internals.modules_compiled_by_nnunet(plain) == []
