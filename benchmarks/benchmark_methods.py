"""Costs of the method trainers, as ratios against plain nnUNetTrainer measured in the same run on
the same data, patch, batch and device.

1. Train iteration (data loading with augmentation in the main process + ``train_step``) and peak
   memory (GPU: max allocated; CPU: peak RSS of a fresh process per trainer), and the floating-point
   operations of one ``train_step``: their ratio is what the method computes more than nnU-Net,
   which its time ratio approaches on compute-bound hardware, whatever its implementation. Every
   trainer runs in ``--rounds`` fresh processes in alternating order; the median round counts.
2. Inference time per case: ``nnUNetPredictor.predict_from_files`` over the test cases with all
   modalities present (model loading excluded), in a fresh process per trainer. The weights are
   the trainer's initial ones: prediction time does not depend on them.
3. SMML's prior step (``nnUNetv2_smml_priors``), seconds per training case, when SMMLTrainer runs.

    python benchmarks/benchmark_methods.py --work /tmp/bench_methods [--device cuda] [--shape 64 72 64]
        [--trainers MAGMSTrainer MSTKDTrainer ...] [--rounds 3]

Prints a table with the issues' targets and writes ``results.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from measurement import in_fresh_processes, load_trainer, measure_train_steps, median_of_rounds, nnunet_env

DATASET_ID = 981
CONFIGURATION = "3d_fullres"
BASELINE = "nnUNetTrainer"
DEFAULT_TRAINERS = ["ModalityDropoutTrainer", "MAGMSTrainer", "MAGMSTrainerSampledPath", "MSTKDTrainer",
                    "MSTKDFrozenTeacherTrainer", "SMMLTrainer"]
# Targets from the method issues: (iteration time, peak memory, inference per case); None = no target.
# MAG-MS's own iteration target is relative to its FLOPs (below): 5 decoder passes put 2.5x out of reach.
TARGETS = {
    "ModalityDropoutTrainer": (1.02, 1.02, None),
    "MAGMSTrainer": (None, None, 1.6),
    "MAGMSTrainerSampledPath": (2.7, 2.2, 1.6),
    "MSTKDTrainer": (2.3, 2.2, 1.15),
    "MSTKDFrozenTeacherTrainer": (1.45, 2.2, 1.15),
    "SMMLTrainer": (2.3, 2.2, 2.1),
}
# Trainers whose iteration-time ratio should be within this factor of their FLOPs ratio.
TIME_WITHIN_FLOPS = {"MAGMSTrainer": 1.10}
FROZEN_TEACHER_ENV = "nnUNet_missingmod_teacher"


def trainer_env(work: str, name: str) -> dict:
    """What a trainer needs in its environment (the frozen teacher's checkpoint)."""
    extra = {}
    if name == "MSTKDFrozenTeacherTrainer":
        extra[FROZEN_TEACHER_ENV] = teacher_model_folder(work)
    return nnunet_env(work, **extra)


def teacher_model_folder(work: str) -> str:
    return os.path.join(work, "nnUNet_results", "teacher_for_benchmark")


def write_model_folder(trainer, folder: str) -> str:
    """The folder ``nnUNetv2_predict`` reads (plans, dataset.json, fold_0/checkpoint_final.pth),
    written from a freshly initialised trainer instead of a trained one."""
    from batchgenerators.utilities.file_and_folder_operations import join, save_json
    os.makedirs(join(folder, "fold_0"), exist_ok=True)
    save_json(trainer.plans_manager.plans, join(folder, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, join(folder, "dataset.json"), sort_keys=False)
    trainer.output_folder = join(folder, "fold_0")
    trainer.save_checkpoint(join(folder, "fold_0", "checkpoint_final.pth"))
    return folder


def measure_inference(name: str, device: str, tta: bool) -> dict:
    """Seconds per test case of the predictor, all modalities present, model loading excluded."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_missingmod.inference.model import load_predictor
    torch.manual_seed(0)
    trainer = load_trainer(name, DATASET_ID, CONFIGURATION, device)
    trainer.initialize()
    model = write_model_folder(trainer, tempfile.mkdtemp(prefix=f"{name}_"))
    del trainer
    predictor = load_predictor(model, folds=(0,), device=torch.device(device), use_mirroring=tta)
    images = join(nnUNet_raw, maybe_convert_to_dataset_name(DATASET_ID), "imagesTs")
    num_cases = len({f[:-len("_0000.nii.gz")] for f in os.listdir(images)})
    with tempfile.TemporaryDirectory() as output:
        start = time.perf_counter()
        predictor.predict_from_files(images, output, save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        seconds = time.perf_counter() - start
    shutil.rmtree(model)
    return {"per_case_s": seconds / num_cases, "num_cases": num_cases}


def prepare_frozen_teacher(work: str, device: str) -> None:
    """A full-modality MST-KDNet model (MSTKDTeacherTrainer) for MSTKDFrozenTeacherTrainer; its
    weights do not matter for the cost."""
    folder = teacher_model_folder(work)
    if os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth")):
        return
    trainer = load_trainer("MSTKDTeacherTrainer", DATASET_ID, CONFIGURATION, device)
    trainer.initialize()
    write_model_folder(trainer, folder)


def time_smml_priors(work: str, num_train: int, sam_args: list[str]) -> dict:
    start = time.perf_counter()
    out = subprocess.run(["nnUNetv2_smml_priors", "-d", str(DATASET_ID), "-c", CONFIGURATION, "--overwrite",
                          *sam_args], env=nnunet_env(work), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"nnUNetv2_smml_priors failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    seconds = time.perf_counter() - start
    return {"total_s": seconds, "per_case_s": seconds / num_train}


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def time_per_flops(measured: dict, baseline: dict) -> float:
    """The iteration-time ratio over the FLOPs ratio: 1 when the extra time is all extra arithmetic."""
    return ratio(ratio(measured["iteration_s"], baseline["iteration_s"]),
                 ratio(measured["train_step_flops"], baseline["train_step_flops"]))


def print_table(results: dict) -> None:
    train, inference = results["train_step"], results["inference"]
    base_train, base_inference = train[BASELINE], inference[BASELINE]
    print(f"\ndevice {results['device']}, patch {base_train['patch_size']}, batch {base_train['batch_size']}; "
          f"ratios against {BASELINE}; FLOPs: of one train_step")
    print(f"{'trainer':<28}{'iter s':>8}{'ratio':>7}{'target':>7}{'FLOPs':>7}{'time/FLOPs':>11}{'peak MiB':>10}"
          f"{'ratio':>7}{'target':>7}{'infer s/case':>13}{'ratio':>7}{'target':>7}")
    for name in train:
        t, i = train[name], inference[name]
        target = TARGETS.get(name, (None, None, None))
        fmt = (lambda x: f"{x:>7}" if x is None else f"{'<=' + str(x):>7}")
        print(f"{name:<28}{t['iteration_s']:>8.2f}{ratio(t['iteration_s'], base_train['iteration_s']):>7.2f}"
              f"{fmt(target[0]) if target[0] else '':>7}"
              f"{ratio(t['train_step_flops'], base_train['train_step_flops']):>7.2f}"
              f"{time_per_flops(t, base_train):>8.2f}{'<=' + str(TIME_WITHIN_FLOPS[name]) if name in TIME_WITHIN_FLOPS else '':>3}"
              f"{t['peak_memory_bytes'] / 2**20:>10.0f}"
              f"{ratio(t['peak_memory_bytes'], base_train['peak_memory_bytes']):>7.2f}"
              f"{fmt(target[1]) if target[1] else '':>7}{i['per_case_s']:>13.2f}"
              f"{ratio(i['per_case_s'], base_inference['per_case_s']):>7.2f}{fmt(target[2]) if target[2] else '':>7}")
    if "smml_priors" in results:
        print(f"nnUNetv2_smml_priors: {results['smml_priors']['per_case_s']:.1f} s per training case "
              f"({results['smml_priors']['total_s']:.0f} s in all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work folder (created; the dataset is rewritten)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 48, 40), help="synthetic image shape")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=3)
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS)
    parser.add_argument("--steps", type=int, default=8, help="timed train iterations per trainer and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per trainer, alternating order")
    parser.add_argument("--tta", action="store_true", help="predict with mirroring (off by default: same ratio)")
    parser.add_argument("--sam-args", default="", help="extra arguments for nnUNetv2_smml_priors, one string")
    parser.add_argument("--save", default=None, metavar="PATH",
                        help="also write the results here (benchmarks/results/methods_cpu.json is what the "
                             "robustness study's report reads the costs from)")
    parser.add_argument("--train-step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inference", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.num_train < 5:
        parser.error(f"--num-train {args.num_train}: nnU-Net's 5-fold split needs at least 5 training cases")
    work = os.path.abspath(args.work)
    os.environ.update({k: v for k, v in nnunet_env(work).items() if k.startswith("nnUNet_")})

    if args.train_step:
        print(json.dumps(measure_train_steps(args.train_step, DATASET_ID, CONFIGURATION, args.device, args.steps,
                                             args.warmup)))
        return
    if args.inference:
        print(json.dumps(measure_inference(args.inference, args.device, args.tta)))
        return

    from nnunet_missingmod.planning import plan_and_preprocess
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(os.environ[name], exist_ok=True)
    write_nnunet_dataset(DATASET_ID, args.num_train, args.num_test, name="BenchmarkMethods",
                         shape=tuple(args.shape), seed=0, raw_folder=os.environ["nnUNet_raw"], overwrite=True,
                         num_processes=2)
    plan_and_preprocess(DATASET_ID, (CONFIGURATION,), num_processes=2)

    results = {"device": args.device, "shape": list(args.shape)}
    names = [BASELINE, *[t for t in args.trainers if t != BASELINE]]
    if "MSTKDFrozenTeacherTrainer" in names:
        prepare_frozen_teacher(work, args.device)
    if "SMMLTrainer" in names:
        results["smml_priors"] = time_smml_priors(work, args.num_train, args.sam_args.split())

    common = ["--work", work, "--device", args.device]
    train_runs, inference_runs = {n: [] for n in names}, {n: [] for n in names}
    for r in range(args.rounds):  # alternate the order per round; each trainer with its own environment
        for name in names if r % 2 == 0 else names[::-1]:
            env = trainer_env(work, name)
            train_runs[name] += in_fresh_processes(
                __file__, [name], 1, [*common, "--steps", str(args.steps), "--warmup", str(args.warmup)],
                env, "train-step")[name]
            inference_runs[name] += in_fresh_processes(
                __file__, [name], 1, [*common, *(["--tta"] if args.tta else [])], env, "inference")[name]
    results["train_step"] = median_of_rounds(train_runs, ("load_s", "step_s", "iteration_s", "peak_memory_bytes",
                                                          "train_step_flops"))
    results["inference"] = median_of_rounds(inference_runs, ("per_case_s",))
    results["ratios"] = {
        name: {"iteration_time": ratio(results["train_step"][name]["iteration_s"],
                                       results["train_step"][BASELINE]["iteration_s"]),
               "train_step_flops": ratio(results["train_step"][name]["train_step_flops"],
                                         results["train_step"][BASELINE]["train_step_flops"]),
               "peak_memory": ratio(results["train_step"][name]["peak_memory_bytes"],
                                    results["train_step"][BASELINE]["peak_memory_bytes"]),
               "inference_per_case": ratio(results["inference"][name]["per_case_s"],
                                           results["inference"][BASELINE]["per_case_s"])}
        for name in names}
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--save" and (i == 0 or sys.argv[i] != "--save")]
    results["command"] = "python benchmarks/benchmark_methods.py " + " ".join(shown)
    results["date"] = time.strftime("%Y-%m-%d")
    for path in [os.path.join(work, "results.json"), *([args.save] if args.save else [])]:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {path}")
    print_table(results)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
