"""What the benchmark scripts share: nnU-Net folders, and a trainer's iteration time and peak
memory measured in a fresh process (so peak RSS belongs to that trainer alone)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def nnunet_env(work: str, **extra) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = os.path.join(work, name)
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_compile", "f")  # the same for every trainer; compiling costs minutes per process
    env.update({k: str(v) for k, v in extra.items()})
    return env


def load_trainer(trainer_name: str, dataset_id: int, configuration: str, device: str, fold: int = 0):
    """The trainer as ``nnUNetv2_train`` builds it (through nnU-Net's own lookup), not initialised."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_missingmod.trainer_registration as registration
    registration.register()
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset_id))
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise RuntimeError(f"trainer {trainer_name} not found")
    return trainer_class(plans, configuration, fold, load_json(join(folder, "dataset.json")), torch.device(device))


def measure_train_steps(trainer_name: str, dataset_id: int, configuration: str, device: str, steps: int,
                        warmup: int) -> dict:
    """Median iteration (``next(loader)`` with augmentation in this process + ``train_step``)."""
    import torch
    os.environ["nnUNet_n_proc_DA"] = "0"
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = load_trainer(trainer_name, dataset_id, configuration, device)
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    trainer.on_train_epoch_start()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_times, step_times = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        batch = next(loader)
        loaded = time.perf_counter()
        trainer.train_step(batch)
        sync()
        if i >= warmup:
            load_times.append(loaded - start)
            step_times.append(time.perf_counter() - loaded)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"load_s": float(np.median(load_times)), "step_s": float(np.median(step_times)),
            "iteration_s": float(np.median(np.add(load_times, step_times))), "peak_memory_bytes": int(peak),
            "train_step_flops": train_step_flops(trainer, next(loader)),
            "patch_size": list(trainer.configuration_manager.patch_size), "batch_size": trainer.batch_size}


def train_step_flops(trainer, batch: dict) -> int:
    """Floating-point operations of one ``train_step`` (forward and backward; convolutions, matrix
    products and attention, as ``torch.utils.flop_counter`` counts them): the arithmetic a method
    adds, which its time ratio approaches on compute-bound hardware, whatever the machine's load."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    return int(counter.get_total_flops())


def in_fresh_processes(script: str, names: list[str], rounds: int, arguments: list[str], env: dict,
                       what: str) -> dict[str, list[dict]]:
    """Runs ``script ... --<what> NAME`` for every name in ``rounds`` alternating orders.

    Each call must print one JSON object on its last stdout line. Alternating the order spreads a
    drift of the machine's speed (another job starting, thermal limits) over all names alike.
    """
    runs = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out = subprocess.run([sys.executable, script, f"--{what}", name, *arguments], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{what} benchmark of {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def median_of_rounds(runs: dict[str, list[dict]], keys: tuple) -> dict:
    results = {}
    for name, measured in runs.items():
        results[name] = {key: float(np.median([m[key] for m in measured])) for key in keys}
        results[name].update({k: v for k, v in measured[0].items() if k not in keys}, rounds=measured)
    return results
