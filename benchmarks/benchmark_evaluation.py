"""How much of an all-subset evaluation is prediction: its wall time over the pure prediction time.

On BraTS-sized synthetic cases (the generator at 155 x 240 x 240, about 1 mm), with one model:

1. pure prediction: every (case, subset) predicted with nnU-Net's predictor and nothing else
   (preprocessing once per case, as the evaluation does; no export, no scoring, no writing);
2. ``evaluate_missing`` with ``num_workers=0``: export, scoring and saving in the main process
   between predictions (the evaluation before the worker pool);
3. ``evaluate_missing`` with ``num_workers=N``: the same in N worker processes while the main
   process predicts the next subset.

Ratios 2/1 and 3/1 are printed (target for 3: <= 1.15 with 2 workers on the CPU), with the time
per case and subset and, on a GPU, the share of the wall time the device spends predicting.

    python benchmarks/benchmark_evaluation.py --work /tmp/bench_eval [--device cuda] [--num-test 2]
        [--subsets T1 T1ce+FLAIR all] [--workers 2] [--train-epochs 2 --train-iterations 5]

The model is ModalityDropoutTrainer in nnU-Net's 2d configuration, trained briefly on the same
kind of cases (a barely trained model predicts tumour where there is none, which makes scoring
costlier than for a good model: the measured CPU share is on the high side). Results go to
``results.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time

from measurement import nnunet_env

DATASET_ID = 983
DATASET_NAME = "EvaluationBenchmark"
SHAPE = (155, 240, 240)
TRAINER = "ModalityDropoutTrainer"
CONFIGURATION = "2d"


def prepare(work: str, num_train: int, num_test: int, epochs: int, iterations: int, device: str) -> str:
    """Dataset, plans and a briefly trained model (each step skipped when already there)."""
    from nnunet_missingmod.planning import plan_and_preprocess
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    env = nnunet_env(work)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    raw = os.path.join(env["nnUNet_raw"], f"Dataset{DATASET_ID}_{DATASET_NAME}")
    if not os.path.isdir(raw):
        print(f"writing {num_train} + {num_test} cases of {SHAPE}", flush=True)
        write_nnunet_dataset(DATASET_ID, num_train, num_test, name=DATASET_NAME, shape=SHAPE, seed=0,
                             raw_folder=env["nnUNet_raw"], num_processes=2)
    if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASET_ID}_{DATASET_NAME}",
                                      f"nnUNetPlans_{CONFIGURATION}")):
        print("planning and preprocessing", flush=True)
        plan_and_preprocess(DATASET_ID, (CONFIGURATION,), num_processes=2)
    model = os.path.join(env["nnUNet_results"], f"Dataset{DATASET_ID}_{DATASET_NAME}",
                         f"{TRAINER}__nnUNetPlans__{CONFIGURATION}")
    if not os.path.isfile(os.path.join(model, "fold_all", "checkpoint_final.pth")):
        print(f"training {TRAINER} {epochs} x {iterations} iterations", flush=True)
        subprocess.run(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "all", "-tr", TRAINER, "-device", device],
                       env={**env, "nnUNet_missingmod_num_epochs": str(epochs),
                            "nnUNet_missingmod_iterations_per_epoch": str(iterations),
                            "nnUNet_missingmod_val_iterations_per_epoch": "1"},
                       check=True, stdout=subprocess.DEVNULL)
    return raw, model


class TimedPredictor:
    """Counts the seconds the predictor spends predicting (device synchronised)."""

    def __init__(self, predictor):
        self.predictor, self.seconds, self.calls = predictor, 0.0, 0
        self._predict = predictor.predict_logits_from_preprocessed_data
        predictor.predict_logits_from_preprocessed_data = self

    def __call__(self, data):
        import torch
        start = time.perf_counter()
        logits = self._predict(data).cpu()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return logits


def pure_prediction(predictor, images: str, subsets) -> float:
    """Seconds to predict every case under every subset and do nothing else."""
    import copy

    import torch

    from nnunet_missingmod.inference.cases import find_cases, read_case
    from nnunet_missingmod.modalities import Modalities
    modalities = Modalities.from_dataset_json(predictor.dataset_json)
    reader = predictor.plans_manager.image_reader_writer_class()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    indices = [modalities.parse_subset(s) for s in subsets] if subsets else modalities.subsets()
    start = time.perf_counter()
    for case in find_cases(images, predictor.dataset_json["file_ending"], modalities).values():
        raw, properties, _ = read_case(case, modalities, reader)
        data, _, _ = preprocessor.run_case_npy(raw, None, copy.deepcopy(properties), predictor.plans_manager,
                                               predictor.configuration_manager, predictor.dataset_json)
        full = torch.from_numpy(data)
        for subset in indices:
            masked = full.clone()
            masked[[c for c in range(len(modalities)) if c not in subset]] = 0
            predictor.predict_logits_from_preprocessed_data(masked).cpu()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--num-train", type=int, default=4)
    parser.add_argument("--num-test", type=int, default=2)
    parser.add_argument("--subsets", nargs="+", default=["T1ce", "T1ce+FLAIR", "all"],
                        help="subsets to evaluate (default: three; 'every' for all 15)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--train-iterations", type=int, default=5)
    args = parser.parse_args()
    subsets = None if args.subsets == ["every"] else args.subsets

    import torch

    from nnunet_missingmod.inference.evaluate_missing import evaluate_missing
    from nnunet_missingmod.inference.model import device_from_name, load_predictor
    raw, model = prepare(args.work, args.num_train, args.num_test, args.train_epochs, args.train_iterations,
                         args.device)
    device = device_from_name(args.device)
    predictor = load_predictor(model, ["all"], device=device, use_mirroring=False)
    images, labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    pure_prediction(predictor, images, subsets[:1] if subsets else ["all"])  # warm-up (allocations, kernels)

    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "shape": SHAPE, "num_cases": args.num_test,
               "subsets": subsets or "every", "configuration": CONFIGURATION}
    results["pure_prediction_s"] = pure_prediction(predictor, images, subsets)
    print(f"pure prediction: {results['pure_prediction_s']:.1f} s", flush=True)
    for workers in (0, args.workers):
        timer = TimedPredictor(predictor)
        out = os.path.join(args.work, f"evaluation_np{workers}")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        evaluate_missing(predictor, images, labels, out, subsets=subsets, num_workers=workers, show_progress=False)
        wall = time.perf_counter() - start
        predictor.predict_logits_from_preprocessed_data = timer._predict
        results[f"np{workers}"] = {"wall_s": wall, "predicting_s": timer.seconds, "predictions": timer.calls,
                                   "per_prediction_s": wall / timer.calls,
                                   "wall_over_pure_prediction": wall / results["pure_prediction_s"],
                                   "predicting_share": timer.seconds / wall}
        print(f"-np {workers}: {wall:.1f} s wall, {wall / timer.calls:.2f} s per case and subset, "
              f"{wall / results['pure_prediction_s']:.2f}x the pure prediction time, predicting "
              f"{timer.seconds / wall:.0%} of it", flush=True)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
