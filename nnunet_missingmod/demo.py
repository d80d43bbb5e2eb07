"""``nnUNetv2_missingmod_demo``: the whole chain on built-in synthetic data, on a CPU, in minutes.

synthetic BraTS-like dataset -> nnU-Net plans and preprocessing -> ``nnUNetv2_train ... -tr
ModalityDropoutTrainer`` -> ``nnUNetv2_evaluate_missing`` over all 15 subsets -> the table.
Everything lives in its own work folder (nnUNet_raw/preprocessed/results are pointed there), so a
user's nnU-Net folders are never touched. The training and evaluation steps run the real
commands, printed as they run, so the demo doubles as a recipe; their full output goes to log
files in the work folder, and the terminal gets one line per epoch.

It is seeded (``--seed``, ``nnUNet_missingmod_seed``): on the CPU a run repeats exactly, and the
default seed gives the table in docs/demo.md and the README. It trains nnU-Net's ``2d``
configuration: on 2 CPU cores it runs about four times as many iterations per minute as
``3d_fullres`` and learns all three regions within the demo's budget. ``-c 3d_fullres`` runs the
same chain in 3D.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

from nnunet_missingmod.training.base import DISABLE_TTA_VARIABLE, LENGTH_OVERRIDES, SKIP_FINAL_VALIDATION_VARIABLE
from nnunet_missingmod.training.seeding import SEED_VARIABLE

DEFAULT_SEED = 1
TRAINER = "ModalityDropoutTrainer"
EPOCH_LINES = {"epoch": re.compile(r"Epoch (\d+)$"), "loss": re.compile(r"train_loss (-?[\d.]+)"),
               "dice": re.compile(r"Pseudo dice \[(.*)\]"), "time": re.compile(r"Epoch time: ([\d.]+) s")}


def _fail(what: str, log: str) -> None:
    """Stop the demo naming the step (its command line, or what an in-process step does) and
    showing the end of its log."""
    with open(log) as f:
        tail = f.read()[-3000:]
    sys.exit(f"nnUNetv2_missingmod_demo: '{what}' failed; the end of its log ({log}):\n{tail}")


def _run(command: list[str], env: dict, log: str) -> None:
    print(f"  $ {shlex.join(command)}\n    (log: {log})", flush=True)
    with open(log, "w") as f:
        if subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            _fail(shlex.join(command), log)


@contextlib.contextmanager
def _output_to(log: str, what: str):
    """Everything written to stdout and stderr, by this process and the workers it starts, into
    ``log`` (nnU-Net's planning prints its plans in full); a failure shows the log's tail."""
    print(f"    (log: {log})", flush=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "w") as f:
            os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    except Exception:
        import traceback
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        _fail(what, log)
    finally:
        os.close(saved[0]), os.close(saved[1])


def epoch_summaries(log_text: str) -> list[dict]:
    """nnU-Net's training log -> one dict per finished epoch (epoch, loss, pseudo Dice, seconds)."""
    epochs, current = [], {}
    for line in log_text.splitlines():
        message = line.split(": ", 1)[-1].strip()
        for key, pattern in EPOCH_LINES.items():
            match = pattern.search(message)
            if not match:
                continue
            if key == "epoch":
                current = {"epoch": int(match[1])}
            elif key == "dice":  # "np.float32(0.88), ..." (numpy 2) or "0.88, ..."
                current["dice"] = [float(v) for v in re.sub(r"np\.float\d+\(|\)", "", match[1]).split(",")]
            else:
                current[key] = float(match[1])
            if key == "time" and "epoch" in current:
                epochs.append(current)
    return epochs


def _train(command: list[str], env: dict, log: str, fold_folder: str, epochs: int, regions: Sequence[str]) -> None:
    """nnUNetv2_train with its output in ``log``; one line per finished epoch on the terminal."""
    print(f"  $ {shlex.join(command)}\n    (log: {log}; nnU-Net's training log and progress.png: {fold_folder})",
          flush=True)
    shown = 0
    with open(log, "w") as f:
        process = subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT)
        while True:
            finished = process.poll() is not None
            logs = sorted(glob.glob(os.path.join(fold_folder, "training_log_*.txt")))
            if logs:
                with open(logs[-1]) as training_log:
                    summaries = epoch_summaries(training_log.read())
                for s in summaries[shown:]:
                    left = (epochs - s["epoch"] - 1) * s["time"]
                    dice = " ".join(f"{r} {d:.2f}" for r, d in zip(regions, s.get("dice", [])))
                    print(f"    epoch {s['epoch'] + 1}/{epochs}: loss {s.get('loss', float('nan')):+.3f}, pseudo Dice "
                          f"{dice}, {s['time']:.0f} s, about {left / 60:.1f} min left", flush=True)
                shown = len(summaries)
            if finished:
                break
            time.sleep(1)
    if process.returncode != 0:
        _fail(shlex.join(command), log)


def markdown_page(table: str, args: argparse.Namespace, minutes: float) -> str:
    """docs/demo.md: the command, what it trained, and the table it printed."""
    return "\n".join([
        "# What the demo prints", "",
        "Generated by `nnUNetv2_missingmod_demo --markdown docs/demo.md` (the README's demo command, default "
        f"seed {args.seed}). On the CPU a seeded run repeats exactly on the same machine (below); on another "
        "processor the arithmetic differs in the last bits and the table by a little (tests/test_demo.py says "
        "how much and checks it).", "",
        f"{args.num_train} synthetic training cases and {args.num_test} held-out test cases of shape "
        f"{tuple(args.shape)}, nnU-Net's `{args.configuration}` configuration, {TRAINER} for {args.epochs} epochs x "
        f"{args.iterations} iterations, evaluated under all 15 subsets of the modalities without test-time "
        f"mirroring. {minutes:.1f} min on the machine that wrote this page.", "",
        f"Machine: {machine_signature()}", "",
        table.strip(), ""])


def machine_signature() -> str:
    """What decides whether a seeded CPU run repeats bit for bit: the processor and the vector
    instructions torch uses on it, torch's version and its threads."""
    import platform

    import torch
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_missingmod_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", dest="work_folder", default="nnunet_missingmod_demo",
                        help="work folder for raw, preprocessed and results (default: ./nnunet_missingmod_demo)")
    parser.add_argument("-d", dest="dataset_id", type=int, default=990, help="dataset id (default 990)")
    parser.add_argument("--num-train", type=int, default=12, help="training cases (default 12)")
    parser.add_argument("--num-test", type=int, default=4, help="held-out test cases (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 48, 40), metavar=("Z", "Y", "X"),
                        help="image shape in voxels (default 40 48 40)")
    parser.add_argument("-c", dest="configuration", default="2d", choices=("2d", "3d_fullres"),
                        help="nnU-Net configuration (default 2d, see above)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per epoch (default 40)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"training seed (default {DEFAULT_SEED}: the table in docs/demo.md)")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="also write the table as a page (docs/demo.md)")
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
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "2")
    env[SEED_VARIABLE] = str(args.seed)
    lengths = dict(zip(LENGTH_OVERRIDES, (args.epochs, args.iterations, 2)))
    env.update({k: str(v) for k, v in lengths.items()})
    env[DISABLE_TTA_VARIABLE] = "1"  # step 4 does not mirror
    # nnU-Net's final validation scores fold 0's validation cases, which the demo never shows: step 4
    # scores the held-out cases (it cost 19 s of the demo's 4 min here)
    env[SKIP_FINAL_VALIDATION_VARIABLE] = "1"
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc")})
    start = time.time()

    print(f"[1/4] synthetic BraTS-like dataset: {args.num_train} training + {args.num_test} test cases, "
          f"shape {tuple(args.shape)}", flush=True)
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    dataset_folder = write_nnunet_dataset(args.dataset_id, args.num_train, args.num_test, shape=tuple(args.shape),
                                          seed=0, raw_folder=env["nnUNet_raw"], num_processes=2)
    dataset_name = os.path.basename(dataset_folder)

    print(f"[2/4] nnU-Net fingerprint, plans and preprocessing ({args.configuration}) "
          f"[= nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c {args.configuration}, lighter fingerprint]",
          flush=True)
    from nnunet_missingmod.planning import plan_and_preprocess
    with _output_to(os.path.join(logs, "plan_and_preprocess.log"), "plan and preprocess"):
        plan_and_preprocess(args.dataset_id, (args.configuration,), num_processes=2)

    print(f"[3/4] training {TRAINER} for {args.epochs} epochs x {args.iterations} iterations, seed {args.seed} "
          f"({' '.join(f'{k}={v}' for k, v in lengths.items())} {SEED_VARIABLE}={args.seed})", flush=True)
    fold_folder = os.path.join(env["nnUNet_results"], dataset_name, f"{TRAINER}__nnUNetPlans__{args.configuration}",
                               "fold_0")
    _train(["nnUNetv2_train", str(args.dataset_id), args.configuration, "0", "-tr", TRAINER, "-device", args.device],
           env, os.path.join(logs, "train.log"), fold_folder, args.epochs, ("WT", "TC", "ET"))

    print("[4/4] evaluation under all 15 modality subsets on the held-out cases", flush=True)
    evaluation = os.path.join(work, "evaluation")
    _run(["nnUNetv2_evaluate_missing", "-d", str(args.dataset_id), "-c", args.configuration, "-tr", TRAINER, "-f",
          "0", "-i", os.path.join(dataset_folder, "imagesTs"), "-o", evaluation, "-device", args.device,
          "--disable_tta", "--figures", "1"], env, os.path.join(logs, "evaluate.log"))
    with open(os.path.join(evaluation, "table.md")) as f:
        table = f.read()
    minutes = (time.time() - start) / 60
    print("\n" + table)
    if args.markdown:
        partial = args.markdown + ".partial"
        with open(partial, "w") as f:
            f.write(markdown_page(table, args, minutes))
        os.replace(partial, args.markdown)
        print(f"wrote {args.markdown}")
    figure = os.path.join(evaluation, "figures")
    print(f"demo finished in {minutes:.1f} min; reports, heat map and a picture of one case under every subset in "
          f"{evaluation} ({os.path.join(figure, sorted(os.listdir(figure))[0]) if os.path.isdir(figure) else ''}); "
          f"logs in {logs}")


if __name__ == "__main__":
    main()
