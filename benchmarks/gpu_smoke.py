"""The run a BraTS user starts on a GPU, for every trainer family, in a few minutes.

Synthetic cases on the BraTS grid (240 x 240 x 155 at 1 mm), planned and preprocessed by nnU-Net
for 3d_fullres; then per trainer, in a fresh process with nnU-Net's defaults on CUDA
(torch.compile on, fp16 autocast, GradScaler): ``--iterations`` training steps through
``train_step`` with nnU-Net's data loading and augmentation, then one full-size prediction with
nnU-Net's predictor (mirroring on) from the checkpoint the run wrote. Per trainer it records the
compile time (first step minus a later one), seconds per step after warm-up (the step alone, the
batch already loaded), ``torch.cuda.max_memory_allocated``, every loss term at every step, the
GradScaler's scale and skipped steps, torch._dynamo's graph and recompilation counters, and the
prediction's time and memory. JSON to ``--output`` after every trainer (a stopped run keeps what
it measured).

    python benchmarks/gpu_smoke.py --work /tmp/smoke --output benchmarks/results/gpu_smoke.json

On the CPU (``--device cpu``) the same script measures nnU-Net's CPU path at the BraTS plan: fp32,
no compilation, the peak resident memory of training and of prediction instead of the GPU's
(``--memory_limit_gib`` stops a trainer that would exhaust the machine; ``--no_mirroring`` keeps
the prediction to one pass per window; ``nnUNet_n_proc_DA=0`` keeps augmentation out of the timed
steps' cores).

``--lanes N`` compiles N trainers at once (compilation is CPU work) while every later step and the
prediction of one trainer at a time hold the GPU alone (a file lock), so that a short GPU lease
covers every trainer. The CUDA path also runs on the CPU (``--device cpu``,
``nnUNet_missingmod_cuda_path=1``, a small ``--shape``), which is how this script is tested.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurement import load_trainer  # noqa: E402

from nnunet_missingmod.training.loss_monitor import CLIPPED_PREFIX, GRADIENT_NORM_PREFIX  # noqa: E402

DATASET_ID = 977
CONFIGURATION = "3d_fullres"
# Every family, the mission's command first: each later one is skipped when the budget runs out.
TRAINERS = ["MSTKDTrainer", "MAGMSTrainer", "SMMLTrainer", "ModalityDropoutTrainer", "MAGMSTrainerSampledPath",
            "MSTKDFrozenTeacherTrainer", "DedicatedTrainer__T1ce_FLAIR"]
FROZEN_TEACHER = "MSTKDTeacherTrainer"
GIB = 2 ** 30


def resident_gib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (``VmHWM``: its peak) from /proc, in GiB (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return 0.0


def reset_peak_resident() -> bool:
    """Starts ``VmHWM`` afresh (Linux's clear_refs), so that prediction's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_json_atomically(data: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".partial", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".partial", path)


# --- the dataset -------------------------------------------------------------------------------

def prepare_dataset(work: str, num_cases: int, shape, processes: int) -> dict:
    """Synthetic cases (BraTS grid unless ``shape``), nnU-Net's plans and preprocessing, and a
    split with one validation case (nnU-Net's own 5-fold split needs 5 cases)."""
    from nnunet_missingmod.planning import plan_and_preprocess
    from nnunet_missingmod.synthetic import GEOMETRIES, write_nnunet_dataset

    geometry = GEOMETRIES["brats"] if shape is None else {"shape": tuple(shape), "spacing": None}
    start = time.perf_counter()
    raw = write_nnunet_dataset(DATASET_ID, num_cases, 0, "SmokeBraTS", geometry["shape"], seed=0,
                               raw_folder=os.environ["nnUNet_raw"], overwrite=True, num_processes=processes,
                               spacing=geometry["spacing"])
    generated = time.perf_counter()
    plan_and_preprocess(DATASET_ID, (CONFIGURATION,), processes)
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    cases = [f"case_{i:04d}" for i in range(num_cases)]
    with open(os.path.join(preprocessed, "splits_final.json"), "w") as f:
        json.dump([{"train": cases[:-1], "val": cases[-1:]}], f)
    with open(os.path.join(preprocessed, "nnUNetPlans.json")) as f:
        plan = json.load(f)["configurations"][CONFIGURATION]
    return {"raw": raw, "generate_s": generated - start, "plan_and_preprocess_s": time.perf_counter() - generated,
            "image_shape": list(geometry["shape"]), "spacing": geometry["spacing"],
            "plan": {k: plan[k] for k in ("patch_size", "batch_size", "spacing", "median_image_size_in_voxels")}
            | {"features_per_stage": plan["architecture"]["arch_kwargs"]["features_per_stage"]}}


# --- one trainer, in its own process -----------------------------------------------------------

@contextlib.contextmanager
def gpu_held(work: str):
    """The GPU for this process alone (while other lanes may be compiling)."""
    with open(os.path.join(work, "gpu.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_frozen_teacher(device: str, dataset_id: int = DATASET_ID) -> str:
    """An (untrained) MSTKDTeacherTrainer checkpoint for MSTKDFrozenTeacherTrainer: the frozen path
    costs the same whatever the teacher's weights."""
    from nnunetv2.paths import nnUNet_results
    teacher = load_trainer(FROZEN_TEACHER, dataset_id, CONFIGURATION, device)
    teacher.initialize()
    folder = os.path.join(nnUNet_results, "smoke_frozen_teacher")
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    teacher.output_folder = os.path.join(folder, "fold_0")
    teacher.save_checkpoint(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    return folder


def parameter_count(trainer) -> dict:
    from nnunet_missingmod.training.base import unwrap
    counts = {"network": sum(p.numel() for p in unwrap(trainer.network).parameters())}
    for name, aux in getattr(trainer, "auxiliaries", {}).items():
        counts[name] = sum(p.numel() for p in unwrap(aux.module).parameters())
    return counts


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters
    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "calls_captured": int(counters["stats"]["calls_captured"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values()))}


def run_trainer(name: str, work: str, device: str, iterations: int, warmup: int, mirroring: bool) -> dict:
    import torch
    record = {"trainer": name}
    if name == "MSTKDFrozenTeacherTrainer":
        os.environ["nnUNet_missingmod_teacher"] = write_frozen_teacher(device)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    trainer = load_trainer(name, DATASET_ID, CONFIGURATION, device)
    trainer.initialize()
    record.update(compiled=trainer.compiled, grad_scaler=type(trainer.grad_scaler).__name__
                  if trainer.grad_scaler is not None else None, parameters=parameter_count(trainer),
                  patch_size=list(trainer.configuration_manager.patch_size), batch_size=trainer.batch_size)
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    steps, terms = [], {}
    scales = [float(trainer.grad_scaler.get_scale())] if trainer.grad_scaler is not None else []  # before step 1
    started = time.perf_counter()
    for i in range(iterations):
        batch = next(trainer.dataloader_train)
        lane = gpu_held(work) if i >= 1 else contextlib.nullcontext()  # after the compiling step: GPU alone
        with lane:
            if cuda and i == warmup:  # the warm-up's peak (compilation, autotuning, the sampled step) apart
                record["peak_allocated_warmup_gib"] = torch.cuda.max_memory_allocated() / GIB
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            output = trainer.train_step(batch)
            sync()
            steps.append(time.perf_counter() - start)
        if i == 0:
            record["first_step_s"] = steps[0]
            record["dynamo_after_first_step"] = dynamo_counters()
        for key, value in output.items():
            if not key.startswith((GRADIENT_NORM_PREFIX, CLIPPED_PREFIX)):
                terms.setdefault(key, []).append(float(value))
        if trainer.grad_scaler is not None:
            scales.append(float(trainer.grad_scaler.get_scale()))
        record["steps_done"] = i + 1
        if not cuda:  # what a stopped run (budget, memory limit) leaves of a slow CPU run
            record.update(step_s_all=steps, peak_rss_gib=resident_gib(field="VmHWM"))
            write_json_atomically(record, os.path.join(work, f"{name}.json"))
    timed = steps[warmup:] or steps[-1:]
    skipped = [i for i in range(1, len(scales)) if scales[i] < scales[i - 1]]  # the scaler halves on inf/NaN
    record.update(
        train_s=time.perf_counter() - started, step_s=float(np.median(timed)), step_s_all=steps,
        compile_s=steps[0] - float(np.median(timed)), losses=terms,
        losses_finite=bool(all(math.isfinite(v) for values in terms.values() for v in values)),
        scales=scales, skipped_steps=skipped, skipped_steps_after_first=len([i for i in skipped if i > 1]),
        dynamo=dynamo_counters())
    if cuda:
        record["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        record["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    else:
        record["peak_rss_gib"] = resident_gib(field="VmHWM")
    trainer.on_train_end()  # nnU-Net's end of training: checkpoint_final.pth, loaders stopped
    record["checkpoint"] = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    with gpu_held(work):
        record["prediction"] = predict_one_case(os.path.dirname(record["checkpoint"]), work, device, mirroring)
    return record


def predict_one_case(fold_folder: str, work: str, device: str, mirroring: bool) -> dict:
    """nnU-Net's predictor on one full-size case, loaded from the checkpoint the run wrote."""
    import SimpleITK as sitk
    import torch

    from nnunet_missingmod.inference.model import load_predictor
    raw = os.path.join(os.environ["nnUNet_raw"], f"Dataset{DATASET_ID}_SmokeBraTS", "imagesTr")
    images = [os.path.join(raw, f"case_0000_{c:04d}.nii.gz") for c in range(4)]
    output = os.path.join(work, "predictions", os.path.basename(os.path.dirname(fold_folder)) + ".nii.gz")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    predictor = load_predictor(os.path.dirname(fold_folder), folds=[0], device=torch.device(device),
                               use_mirroring=mirroring)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    peak_reset = device == "cuda" or reset_peak_resident()
    start = time.perf_counter()
    predictor.predict_from_files([images], [output], save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    record = {"seconds": time.perf_counter() - start, "mirroring": mirroring}
    if device == "cuda":
        record["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    elif peak_reset:  # this process's peak only: nnU-Net preprocesses and exports in workers of its own
        record["peak_rss_gib"] = resident_gib(field="VmHWM")
    predicted, reference = sitk.ReadImage(output), sitk.ReadImage(images[0])
    record["shape_matches_input"] = predicted.GetSize() == reference.GetSize()
    record["labels"] = sorted(int(v) for v in np.unique(sitk.GetArrayFromImage(predicted)))
    return record


# --- the run -----------------------------------------------------------------------------------

def environment(device: str) -> dict:
    import torch

    import nnunetv2
    info = {"torch": torch.__version__, "nnunetv2": getattr(nnunetv2, "__version__", None), "device": device,
            "cpu_count": os.cpu_count()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / GIB)
    return info


def launch(name: str, args, remaining: float) -> subprocess.Popen:
    with contextlib.suppress(FileNotFoundError):  # an earlier run's record is not this one's
        os.remove(os.path.join(args.work, f"{name}.json"))
    log = open(os.path.join(args.work, f"{name}.log"), "w")
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--work", args.work, "--device",
               args.device, "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    if args.no_mirroring:
        command.append("--no_mirroring")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                               start_new_session=True)  # stopped with its workers (os.killpg)
    process.deadline = time.monotonic() + remaining
    process.trainer = name
    return process


def child_result(name: str, work: str, returncode: int) -> dict:
    path = os.path.join(work, f"{name}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    with open(os.path.join(work, f"{name}.log")) as f:
        tail = f.read()[-3000:]
    return {"trainer": name, "ok": False, "error": f"exit code {returncode}", "log_tail": tail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for nnU-Net's folders, logs and predictions")
    parser.add_argument("--output", help="JSON of the results (default: <work>/gpu_smoke.json)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed (compilation, autotuning)")
    parser.add_argument("--cases", type=int, default=3, help="synthetic training cases (the last validates)")
    parser.add_argument("--shape", type=int, nargs=3, help="a small grid instead of BraTS's (tests on the CPU)")
    parser.add_argument("--lanes", type=int, default=1, help="trainers compiling at once")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for the whole run; trainers not started by then are skipped")
    parser.add_argument("--reuse_dataset", action="store_true",
                        help="keep the dataset, plans and preprocessing already in --work (a rerun)")
    parser.add_argument("--no_mirroring", action="store_true", help="predict without test-time mirroring")
    parser.add_argument("--memory_limit_gib", type=float,
                        help="stop a trainer whose process holds more (the CPU path at BraTS size, 24 GB machines)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = os.path.abspath(args.work)
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[folder] = os.path.join(args.work, folder)
        os.makedirs(os.environ[folder], exist_ok=True)
    os.environ.setdefault("nnUNet_n_proc_DA", str(max(2, min(8, (os.cpu_count() or 2) // max(1, args.lanes)))))

    if args.child:
        try:
            record = run_trainer(args.child, args.work, args.device, args.iterations, args.warmup,
                                 not args.no_mirroring)
            record["ok"] = bool(record["losses_finite"] and record["skipped_steps_after_first"] == 0
                                and record["prediction"]["shape_matches_input"])
        except Exception as error:  # recorded, so that the next trainer still runs
            import traceback
            record = {"trainer": args.child, "ok": False, "error": repr(error)[:2000],
                      "traceback": traceback.format_exc()[-4000:]}
        write_json_atomically(record, os.path.join(args.work, f"{args.child}.json"))
        return

    start = time.monotonic()
    output = args.output or os.path.join(args.work, "gpu_smoke.json")
    results = {"command": " ".join(sys.argv), "environment": environment(args.device),
               "iterations": args.iterations, "warmup": args.warmup, "lanes": args.lanes, "trainers": {}}
    if args.reuse_dataset:
        results["dataset"] = {"reused": True}
    else:
        results["dataset"] = prepare_dataset(args.work, args.cases, args.shape, os.cpu_count() or 2)
    write_json_atomically(results, output)
    print(json.dumps(results["dataset"]), flush=True)
    pending, running = list(args.trainers), []
    while pending or running:
        remaining = args.budget - (time.monotonic() - start)
        while pending and len(running) < args.lanes and remaining > 0:
            running.append(launch(pending.pop(0), args, remaining))
        if remaining <= 0 and pending:
            for name in pending:
                results["trainers"][name] = {"trainer": name, "ok": False, "error": "not started: budget spent"}
            pending = []
        time.sleep(1)
        for process in list(running):
            resident = resident_gib(process.pid)
            over_memory = args.memory_limit_gib is not None and resident > args.memory_limit_gib
            if process.poll() is None and time.monotonic() < process.deadline and not over_memory:
                continue
            stopped = process.poll() is None
            if stopped:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            running.remove(process)
            record = child_result(process.trainer, args.work, process.returncode)
            if stopped:
                record["ok"] = False
                record["error"] = (f"stopped at {resident:.1f} GiB resident, over --memory_limit_gib "
                                   f"{args.memory_limit_gib}" if over_memory else "stopped at the budget") + \
                    f", after {record.get('steps_done', 0)} steps"
            results["trainers"][process.trainer] = record
            results["elapsed_s"] = time.monotonic() - start
            write_json_atomically(results, output)
            summary = {k: record.get(k) for k in ("ok", "error", "compile_s", "step_s", "peak_allocated_gib",
                                                  "peak_rss_gib")}
            print(process.trainer, json.dumps(summary), flush=True)
    print(f"written {output} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
