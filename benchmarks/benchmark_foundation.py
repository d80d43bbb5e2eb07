"""Costs of the foundation, as ratios measured in one run on the same data, patch and device.

1. Train step: ModalityDropoutTrainer over plain nnUNetTrainer (target <= 1.02x), time per
   iteration (data loading with augmentation + forward/backward/step, single-process loading so
   the masking transform's cost is counted) and peak memory (GPU: max allocated; CPU: peak RSS of
   a fresh process per trainer).
2. All-subset evaluation: one ``nnUNetv2_evaluate_missing`` over 15 separate ``nnUNetv2_predict``
   runs on the same cases with the same model, each on inputs with that subset's missing
   modalities as all-zero files (target <= 0.4x). Both are timed as a user runs them, command
   start-up included; writing the zero-filled files for nnUNetv2_predict is not counted.

    python benchmarks/benchmark_foundation.py --work /tmp/bench [--device cuda] [--shape 64 72 64]

Prints a table and writes ``results.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time

import numpy as np
from measurement import in_fresh_processes, measure_train_steps, median_of_rounds, nnunet_env

DATASET_ID = 980
CONFIGURATION = "3d_fullres"


def run_train_step_benchmark(work: str, device: str, steps: int, warmup: int, rounds: int) -> dict:
    """Each trainer in ``rounds`` fresh processes, in alternating order; the median round counts."""
    runs = in_fresh_processes(__file__, ["nnUNetTrainer", "ModalityDropoutTrainer"], rounds,
                              ["--work", work, "--device", device, "--steps", str(steps), "--warmup", str(warmup)],
                              nnunet_env(work), "train-step")
    return median_of_rounds(runs, ("load_s", "step_s", "iteration_s", "peak_memory_bytes"))


def write_subset_inputs(images: str, target: str, missing: list[int]) -> None:
    import SimpleITK as sitk
    os.makedirs(target)
    for name in sorted(os.listdir(images)):
        channel = int(name[-len("0000.nii.gz"):-len(".nii.gz")])
        if channel in missing:
            image = sitk.ReadImage(os.path.join(images, name))
            zeros = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
            zeros.CopyInformation(image)
            sitk.WriteImage(zeros, os.path.join(target, name))
        else:
            shutil.copy(os.path.join(images, name), target)


def run_inference_benchmark(work: str, device: str, dataset_folder: str) -> dict:
    from nnunet_missingmod.modalities import Modalities
    env = nnunet_env(work)
    model = ["-d", str(DATASET_ID), "-c", CONFIGURATION, "-tr", "ModalityDropoutTrainer", "-f", "0",
             "-device", device, "--disable_tta"]
    images = os.path.join(dataset_folder, "imagesTs")
    modalities = Modalities.from_dataset_json(os.path.join(dataset_folder, "dataset.json"))
    separate = 0.0
    for subset in modalities.subsets():
        name = modalities.subset_name(subset)
        inputs = os.path.join(work, "subset_inputs", name)
        write_subset_inputs(images, inputs, [c for c in range(len(modalities)) if c not in subset])
        start = time.perf_counter()
        subprocess.run(["nnUNetv2_predict", "-i", inputs, "-o", os.path.join(work, "subset_predictions", name),
                        *model], env=env, check=True, capture_output=True)
        separate += time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(["nnUNetv2_evaluate_missing", "-i", images, "-o", os.path.join(work, "evaluation"), "--overwrite",
                    *model], env=env, check=True, capture_output=True)
    evaluate = time.perf_counter() - start
    return {"separate_predict_s": separate, "evaluate_missing_s": evaluate,
            "num_cases": len(os.listdir(os.path.join(dataset_folder, "labelsTs")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work folder (created; reused for the dataset if present)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 48, 40), help="synthetic image shape")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed train iterations per trainer")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per trainer, alternating order")
    parser.add_argument("--train-step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    os.environ.update({k: v for k, v in nnunet_env(work).items() if k.startswith("nnUNet_")})

    if args.train_step:
        print(json.dumps(measure_train_steps(args.train_step, DATASET_ID, CONFIGURATION, args.device, args.steps,
                                             args.warmup)))
        return

    from nnunet_missingmod.planning import plan_and_preprocess
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(os.environ[name], exist_ok=True)
    for name in ("subset_inputs", "subset_predictions", "evaluation"):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    dataset_folder = write_nnunet_dataset(DATASET_ID, args.num_train, args.num_test, name="Benchmark",
                                          shape=tuple(args.shape), seed=0, raw_folder=os.environ["nnUNet_raw"],
                                          overwrite=True, num_processes=2)
    plan_and_preprocess(DATASET_ID, (CONFIGURATION,), num_processes=2)

    train = run_train_step_benchmark(work, args.device, args.steps, args.warmup, args.rounds)
    env = nnunet_env(work)
    env.update(nnUNet_missingmod_num_epochs="1", nnUNet_missingmod_iterations_per_epoch="2",
               nnUNet_missingmod_val_iterations_per_epoch="1")
    subprocess.run(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", "ModalityDropoutTrainer",
                    "-device", args.device], env=env, check=True, capture_output=True)
    inference = run_inference_benchmark(work, args.device, dataset_folder)

    base, ours = train["nnUNetTrainer"], train["ModalityDropoutTrainer"]
    results = {"device": args.device, "shape": list(args.shape), "train_step": train, "inference": inference,
               "ratios": {"iteration_time": ours["iteration_s"] / base["iteration_s"],
                          "train_step_time": ours["step_s"] / base["step_s"],
                          "data_loading_time": ours["load_s"] / base["load_s"],
                          "peak_memory": ours["peak_memory_bytes"] / base["peak_memory_bytes"],
                          "evaluate_vs_15_predicts": inference["evaluate_missing_s"] / inference["separate_predict_s"]}}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    r = results["ratios"]
    print(f"\ndevice {args.device}, patch {base['patch_size']}, batch {base['batch_size']}, "
          f"{inference['num_cases']} test cases")
    print(f"{'measure':<42}{'nnUNetTrainer':>16}{'ModalityDropout':>18}{'ratio':>9}{'target':>9}")
    print(f"{'iteration (load + step), s':<42}{base['iteration_s']:>16.3f}{ours['iteration_s']:>18.3f}"
          f"{r['iteration_time']:>9.3f}{'<= 1.02':>9}")
    print(f"{'  of which data loading, s':<42}{base['load_s']:>16.3f}{ours['load_s']:>18.3f}{r['data_loading_time']:>9.3f}")
    print(f"{'  of which train_step, s':<42}{base['step_s']:>16.3f}{ours['step_s']:>18.3f}{r['train_step_time']:>9.3f}")
    print(f"{'peak memory, MiB':<42}{base['peak_memory_bytes'] / 2**20:>16.0f}{ours['peak_memory_bytes'] / 2**20:>18.0f}"
          f"{r['peak_memory']:>9.3f}{'<= 1.02':>9}")
    print(f"{'15 x nnUNetv2_predict vs evaluate_missing, s':<42}{inference['separate_predict_s']:>16.1f}"
          f"{inference['evaluate_missing_s']:>18.1f}{r['evaluate_vs_15_predicts']:>9.3f}{'<= 0.4':>9}")


if __name__ == "__main__":
    main()
