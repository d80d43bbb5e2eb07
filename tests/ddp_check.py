"""Checks a trainer's train step under DDP without a GPU: two CPU processes over gloo.

nnU-Net only starts DDP on CUDA (``run_training`` asserts it and ``nnUNetTrainer.__init__`` moves a
DDP trainer to ``cuda:rank``), so this harness builds the trainer itself in each process, keeps it
on the CPU and lets nnU-Net's ``initialize`` wrap the network in a DDP without ``device_ids`` (the
only test-time substitution: the name ``DDP`` in nnU-Net's trainer module, in the child processes).
Everything else is the trainer's own: its ``initialize``, its auxiliaries, its data loader, its
``train_step``, nnU-Net's DDP loss (all-gathered Dice).

Each rank draws different batches (different numpy seeds). After a few steps every parameter of
the network and of every trainable auxiliary must be the same on both ranks and differ from where
it started: gradients were averaged across processes, and every optimiser stepped.
"""

from __future__ import annotations

import importlib
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ddp(module, device_ids=None, **kwargs):
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids=None, **kwargs)


def _parameters(module) -> torch.Tensor:
    from nnunet_missingmod.training.base import unwrap
    return torch.cat([p.detach().flatten().cpu() for p in unwrap(module).parameters() if p.requires_grad]
                     or [torch.zeros(0)])


def _worker(rank: int, world_size: int, port: int, trainer_name: str, preprocessed: str, plans_name: str,
            configuration: str, steps: int, env: dict, result_folder: str):
    os.environ.update(env)
    torch.set_num_threads(1)  # two ranks on the suite's two cores
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_compile"] = "f"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        import numpy as np
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
        from batchgenerators.utilities.file_and_folder_operations import join, load_json
        nnunet_trainer_module.DDP = _cpu_ddp
        torch.manual_seed(0)
        np.random.seed(1234 + rank)  # different batches per rank

        plans = load_json(join(preprocessed, f"{plans_name}.json"))
        plans["continue_training"] = False
        module_name, _, class_name = trainer_name.rpartition(":")
        trainer_class = getattr(importlib.import_module(module_name or "nnunet_missingmod.training"), class_name)
        trainer = trainer_class(plans, configuration, 0, load_json(join(preprocessed, "dataset.json")),
                                torch.device("cpu"))
        trainer.device = torch.device("cpu")  # nnU-Net moved a DDP trainer to cuda:rank
        trainer.grad_scaler = None
        trainer.initialize()
        assert trainer.is_ddp and trainer.batch_size >= 1
        loader, _ = trainer.get_dataloaders()
        trainer.on_train_epoch_start()  # train mode, LR step, and the loss monitor's sampled first step
        trainable = {"network": trainer.network}
        trainable.update({name: aux.module for name, aux in getattr(trainer, "auxiliaries", {}).items()
                          if aux.trainable})
        before = {name: _parameters(m) for name, m in trainable.items()}
        for _ in range(steps):
            trainer.train_step(next(loader))
        after = {name: _parameters(m) for name, m in trainable.items()}
        sampled = getattr(getattr(trainer, "loss_monitor", None), "_sampled", None)
        torch.save({"before": before, "after": after, "sampled": sampled},
                   os.path.join(result_folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def check_ddp_train_steps(trainer_name: str, preprocessed: str, configuration: str, steps: int = 2,
                          env: dict | None = None, plans_name: str = "nnUNetPlans") -> dict:
    """Runs ``steps`` train steps of ``trainer_name`` in two gloo processes; asserts the ranks agree.

    ``trainer_name``: a class of ``nnunet_missingmod.training`` or ``"module:Class"``. ``plans_name``:
    the suite passes the narrow plans (conftest's ``narrow_plans``): what DDP synchronises does not
    depend on the width, and at the full plans one check cost up to 3.5 minutes on two cores.

    Returns ``{module name: max parameter change}`` so a test can also see what moved.
    """
    with tempfile.TemporaryDirectory() as results:
        mp.spawn(_worker, args=(2, _free_port(), trainer_name, preprocessed, plans_name, configuration, steps,
                                env or {}, results), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(results, f"rank{r}.pt")) for r in range(2)]
    moved = {}
    for name in ranks[0]["after"]:
        a, b = ranks[0]["after"][name], ranks[1]["after"][name]
        assert a.numel() > 0, f"{name} has no trainable parameters"
        assert torch.allclose(a, b, atol=1e-6), \
            f"{name}: parameters differ between ranks after DDP steps (max {(a - b).abs().max():.3g})"
        moved[name] = float((a - ranks[0]["before"][name]).abs().max())
        assert moved[name] > 0, f"{name}: no parameter changed; its optimiser never stepped"
    # every rank measured the loss terms' gradients on the same (first) step
    assert all(r["sampled"] is not None for r in ranks), "the loss monitor did not sample under DDP"
    return moved
