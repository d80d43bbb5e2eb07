"""torch.compile with inductor for every trainer on the CPU: compile time, step time against
eager, and recompilations over batches that cover all 15 modality subsets.

Each trainer runs in a fresh process on the emulated CUDA path (``nnUNet_missingmod_cuda_path=1``:
fp16 autocast, GradScaler, compiled where nnU-Net compiles on CUDA) at the narrow plans of the
tests (``write_narrow_plans``: the CPU has no fast fp16 convolutions, and graph capture does not
depend on the width), seeded, with augmentation in the process:

- compiled (inductor, with an empty cache of its own): the first step (graph capture and code
  generation), then steps until every
  subset has been drawn (at least ``--steps``), with torch._dynamo's graph and recompilation
  counters after the first step and at the end;
- eager (``nnUNet_compile=f``, the same path otherwise): the same number of steps.

    python benchmarks/benchmark_compile.py --work /tmp/bench_compile [--trainers ...] [--steps 6]

Step times here are those of a tiny network on 2 CPU cores, where compiled code saves mostly
Python overhead; docs/benchmarks.md has the GPU's at BraTS size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_smoke import TRAINERS, dynamo_counters, write_frozen_teacher  # noqa: E402
from measurement import load_trainer, nnunet_env  # noqa: E402

DATASET_ID = 976
CONFIGURATION = "3d_fullres"
NUM_SUBSETS = 15


def prepare(work: str) -> None:
    from nnunet_missingmod.planning import plan_and_preprocess, write_narrow_plans
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    raw = write_nnunet_dataset(DATASET_ID, 6, 0, "CompileBenchmark", (40, 48, 40), seed=0,
                               raw_folder=os.environ["nnUNet_raw"], overwrite=True, num_processes=2)
    plan_and_preprocess(DATASET_ID, (CONFIGURATION,), 2)
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    write_narrow_plans(preprocessed, CONFIGURATION, "nnUNetPlans")  # the benchmark's plans are the narrow ones


def subsets_in(batch: dict) -> set:
    masks = batch["modality_mask"].reshape(-1, batch["modality_mask"].shape[-1])
    return {tuple(m.tolist()) for m in masks.bool()}


def measure(name: str, steps: int, max_steps: int) -> dict:
    """Steps of ``name`` until every subset it can draw was drawn (``steps`` at least)."""
    if name == "MSTKDFrozenTeacherTrainer":
        os.environ["nnUNet_missingmod_teacher"] = write_frozen_teacher("cpu", DATASET_ID)
    trainer = load_trainer(name, DATASET_ID, CONFIGURATION, "cpu")
    trainer.initialize()
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    wanted = 1 if name.startswith("Dedicated") else NUM_SUBSETS
    times, seen, after_first = [], set(), None
    for step in range(max_steps):
        batch = next(trainer.dataloader_train)
        if trainer.mask_modalities:
            seen |= subsets_in(batch)
        start = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - start)
        if step == 0:
            after_first = dynamo_counters()
        if step + 1 >= steps and (not trainer.mask_modalities or len(seen) >= wanted):
            break
    return {"compiled": trainer.compiled, "first_step_s": times[0],
            "step_s": float(np.median(times[2:] or times[-1:])), "steps": len(times),
            "subsets_seen": len(seen) if trainer.mask_modalities else "all present",
            "dynamo_after_first_step": after_first, "dynamo": dynamo_counters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = nnunet_env(os.path.abspath(args.work), nnUNet_missingmod_cuda_path=1, nnUNet_missingmod_seed=1)
    os.environ.update(env)
    if args.child:
        name, mode = args.child.split(":")
        print(json.dumps(measure(name, args.steps, args.max_steps)))
        return
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[folder], exist_ok=True)
    if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASET_ID}_CompileBenchmark")):
        prepare(args.work)
    results = {}
    for name in args.trainers:
        results[name] = {}
        for mode, compile_flag in (("inductor", "t"), ("eager", "f")):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--work", args.work, "--child",
                                  f"{name}:{mode}", "--steps", str(args.steps), "--max_steps", str(args.max_steps)],
                                 env={**env, "nnUNet_compile": compile_flag, "nnUNet_n_proc_DA": "0",
                                      # a cache of its own: compile times are cold ones
                                      "TORCHINDUCTOR_CACHE_DIR": os.path.join(env["nnUNet_results"], "inductor", name)},
                                 capture_output=True, text=True)
            if out.returncode != 0:
                results[name][mode] = {"error": out.stderr[-3000:]}
            else:
                results[name][mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(name, mode, json.dumps(results[name][mode])[:400], flush=True)
        with open(os.path.join(args.work, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    print("| trainer | compile s (first step) | s / step compiled | s / step eager | steps | subsets | "
          "graphs | recompiles after step 1 | graph breaks |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        c, e = r.get("inductor", {}), r.get("eager", {})
        if "error" in c or "error" in e:
            print(f"| {name} | failed | | | | | | | |")
            continue
        recompiles = c["dynamo"]["recompiles"] - c["dynamo_after_first_step"]["recompiles"]
        print(f"| {name} | {c['first_step_s'] - c['step_s']:.0f} | {c['step_s']:.3f} | {e['step_s']:.3f} | "
              f"{c['steps']} | {c['subsets_seen']} | {c['dynamo']['unique_graphs']} | {recompiles} | "
              f"{c['dynamo']['graph_breaks']} |")


if __name__ == "__main__":
    main()
