"""``nnUNetv2_missingmod_demo``: the whole chain on built-in synthetic data, on a CPU, in minutes.

synthetic BraTS-like dataset -> nnU-Net plans and preprocessing -> ``nnUNetv2_train ... -tr
ModalityDropoutTrainer`` -> ``nnUNetv2_evaluate_missing`` over all 15 subsets -> the table.
Everything lives in its own work folder (nnUNet_raw/preprocessed/results are pointed there), so a
user's nnU-Net folders are never touched. The training and evaluation steps run the real
commands, printed as they run, so the demo doubles as a recipe.

It trains nnU-Net's ``2d`` configuration by default: on 2 CPU cores it runs about four times as
many iterations per minute as ``3d_fullres`` (1.3 vs 0.33, measured on the demo data) and learns
all three regions within the demo's budget, where 96 iterations of 3d_fullres learn the whole
tumour only.
``-c 3d_fullres`` runs the same chain in 3D.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

from nnunet_missingmod.training.base import LENGTH_OVERRIDES


def _run(command: list[str], env: dict) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        sys.exit(f"nnUNetv2_missingmod_demo: '{command[0]}' failed with exit code {result.returncode}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_missingmod_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", dest="work_folder", default="nnunet_missingmod_demo",
                        help="work folder for raw, preprocessed and results (default: ./nnunet_missingmod_demo)")
    parser.add_argument("-d", dest="dataset_id", type=int, default=990, help="dataset id (default 990)")
    parser.add_argument("--num-train", type=int, default=16, help="training cases (default 16)")
    parser.add_argument("--num-test", type=int, default=4, help="held-out test cases (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 48, 40), metavar=("Z", "Y", "X"),
                        help="image shape in voxels (default 40 48 40)")
    parser.add_argument("-c", dest="configuration", default="2d", choices=("2d", "3d_fullres"),
                        help="nnU-Net configuration (default 2d, see above)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per epoch (default 40)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"), help="device (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="start again in an existing work folder")
    args = parser.parse_args(argv)

    work = os.path.abspath(args.work_folder)
    if os.path.exists(work) and os.listdir(work):
        if not args.overwrite:
            sys.exit(f"nnUNetv2_missingmod_demo: {work} exists and is not empty; pass --overwrite to start again")
        shutil.rmtree(work)
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = os.path.join(work, name)
        os.makedirs(env[name], exist_ok=True)
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "2")
    lengths = dict(zip(LENGTH_OVERRIDES, (args.epochs, args.iterations, 2)))
    env.update({k: str(v) for k, v in lengths.items()})
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc")})
    start = time.time()

    print(f"[1/4] synthetic BraTS-like dataset: {args.num_train} training + {args.num_test} test cases, "
          f"shape {tuple(args.shape)}", flush=True)
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    dataset_folder = write_nnunet_dataset(args.dataset_id, args.num_train, args.num_test, shape=tuple(args.shape),
                                          seed=0, raw_folder=env["nnUNet_raw"], num_processes=2)

    print(f"\n[2/4] nnU-Net fingerprint, plans and preprocessing ({args.configuration}) "
          f"[= nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c {args.configuration}, lighter fingerprint]",
          flush=True)
    from nnunet_missingmod.planning import plan_and_preprocess
    plan_and_preprocess(args.dataset_id, (args.configuration,), num_processes=2)

    print(f"\n[3/4] training ModalityDropoutTrainer for {args.epochs} epochs x {args.iterations} iterations "
          f"({' '.join(f'{k}={v}' for k, v in lengths.items())})", flush=True)
    _run(["nnUNetv2_train", str(args.dataset_id), args.configuration, "0", "-tr", "ModalityDropoutTrainer",
          "-device", args.device], env)

    print("\n[4/4] evaluation under all 15 modality subsets on the held-out cases", flush=True)
    evaluation = os.path.join(work, "evaluation")
    _run(["nnUNetv2_evaluate_missing", "-d", str(args.dataset_id), "-c", args.configuration, "-tr",
          "ModalityDropoutTrainer", "-f", "0", "-i", os.path.join(dataset_folder, "imagesTs"), "-o", evaluation,
          "-device", args.device, "--disable_tta"], env)
    print(f"demo finished in {(time.time() - start) / 60:.1f} min; reports and heat map in {evaluation}")


if __name__ == "__main__":
    main()
