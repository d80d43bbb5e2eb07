"""Shared fixtures: one small synthetic dataset, planned and preprocessed by nnU-Net's own command,
and one ModalityDropoutTrainer model trained (and resumed) by ``nnUNetv2_train`` on the CPU.

Real commands run in subprocesses with a clean environment (no nnUNet_extTrainer, nothing but
PATH, HOME and the three nnU-Net folders), as a new user's shell would be after installing.
Training length comes from the documented nnUNet_missingmod_* overrides.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

# Tests that need any of these fixtures run nnU-Net's own commands (plan and preprocess, train)
# first; they are marked ``e2e``, and ``python -m pytest -m "not e2e" tests`` is the quick lane.
E2E_FIXTURES = {"raw_dataset", "preprocessed", "trained_model", "predictor", "narrow_plans"}

# nnU-Net reads nnUNet_def_n_proc once, when nnunetv2 is imported (the test modules import it after
# this file), and defaults to 8 processes. The suite's commands run with 2 (clean_env); in-process
# nnU-Net (trainers, predictors, exports) must read the same, or on CI's 2 cores it spawns 8 pools
# of workers (measured: test_a_compiled_scaled_run_resumes_and_predicts 157 s unset, 95 s with 2).
# Same for the augmentation workers, which are read when a trainer starts.
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ.setdefault("nnUNet_n_proc_DA", "2")

# pytest-xdist runs the suite in one worker per core (pyproject.toml). Each worker, and the commands
# its tests start, then gets its share of the cores in torch threads (1 on CI's 2 cores), and idle
# OpenMP threads sleep instead of spinning: measured on 2 cores, two workers with torch's default 2
# threads each spent 37 CPU-minutes where the serial run spent 25, and ran longer than it.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # as xdist counts
WORKER_THREADS = {"OMP_NUM_THREADS": str(max(1, _cores // _workers))} if _workers > 1 else {}
THREAD_SETTINGS = {**WORKER_THREADS, "OMP_WAIT_POLICY": "PASSIVE"}
os.environ.update(THREAD_SETTINGS)

# The files that take longest go first, so that the last file to start does not run alone while the
# other workers wait; the others keep their order. Serially on 2 cores (2026-12-06): demo 167 s (first:
# it needs no shared fixture), CUDA path 236, study command 204, mstkd 85, magms 77, smml 77,
# evaluation at scale 64, official formulas 30 (67 beside another worker).
SLOWEST_FILES = ["test_demo.py", "test_cuda_path.py", "test_study_command.py", "test_mstkd.py", "test_magms.py",
                 "test_smml.py", "test_evaluation_at_scale.py", "test_official_formulas.py"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_ID = 991
DATASET_NAME = f"Dataset{DATASET_ID}_SyntheticBraTS"
CONFIGURATION = "3d_fullres"
TRAINER = "ModalityDropoutTrainer"
SHAPE = (40, 48, 40)


# The suite's time budget on 2 idle cores (issue 28): the report below says where the time goes.
TIME_BUDGET_S = {"full suite": 15 * 60, "quick lane": 3 * 60}
_session_start = time.monotonic()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The run's time against its budget and the ten slowest test phases (setup included, where the
    shared fixtures' cost lands), so that a new end-to-end test that adds minutes shows here."""
    lane = "quick lane" if "not e2e" in (config.getoption("markexpr") or "") else "full suite"
    elapsed = time.monotonic() - _session_start
    phases = sorted(((r.duration, r.when, r.nodeid) for reports in terminalreporter.stats.values()
                     for r in reports if getattr(r, "when", None) and hasattr(r, "duration")), reverse=True)
    budget = TIME_BUDGET_S[lane]
    terminalreporter.write_sep("-", f"time: {elapsed / 60:.1f} min, {lane} budget {budget / 60:.0f} min"
                               + (" (OVER BUDGET)" if elapsed > budget and not config.option.keyword else ""))
    for duration, when, nodeid in phases[:10]:
        terminalreporter.write_line(f"{duration:8.1f} s  {when:<8} {nodeid}")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs nnU-Net's or this package's commands end to end (planning, "
                                       "training, prediction); deselect with -m 'not e2e' for the quick lane")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def clean_env(folders: dict, **extra) -> dict:
    """What a user's fresh shell has: PATH with the environment's scripts, HOME, nnU-Net folders."""
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "nnUNet_def_n_proc": "2",
        "nnUNet_n_proc_DA": "2",
        **THREAD_SETTINGS,
        **folders,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


# No command of the suite takes more than a few minutes on 2 cores; one that hangs (a deadlocked
# augmentation worker) fails its test instead of stalling the whole run.
COMMAND_TIMEOUT_S = 1200


def run(command: list, env: dict, cwd=None, check=True, timeout=COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run([str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{' '.join(map(str, command))} did not finish within {timeout} s:\n"
                             f"{(error.stdout or b'')[-3000:]!r}\n{(error.stderr or b'')[-5000:]!r}") from None
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def run_together(commands: list[tuple[list, dict]], timeout=COMMAND_TIMEOUT_S) -> list[subprocess.CompletedProcess]:
    """Independent commands started at once, as :func:`run` checks them. On 2 cores most of a
    short nnU-Net command is process start-up (imports, trainer lookup, spawn pools), which
    overlaps; the results do not depend on what runs beside."""
    processes = [(command, subprocess.Popen([str(c) for c in command], env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)) for command, env in commands]
    results = []
    for command, process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for _, other in processes:
                other.kill()
            raise AssertionError(f"{' '.join(map(str, command))} did not finish within {timeout} s") from None
        if process.returncode != 0:
            for _, other in processes:
                other.kill()
            raise AssertionError(f"{' '.join(map(str, command))} failed ({process.returncode}):\n"
                                 f"{stdout[-3000:]}\n{stderr[-5000:]}")
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def shared_root(tmp_path_factory) -> str:
    """Where the session's shared work lives: the run's temporary folder, which pytest-xdist's
    workers share (each worker's own folder is a subfolder of it)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


def made_once(folders: dict, name: str, make) -> None:
    """``make()`` run once for the whole run, by the first worker to need it; the other workers wait
    for it and reuse what it wrote (a failed ``make`` is tried again by the next worker, and fails
    there too)."""
    from filelock import FileLock
    root = os.path.dirname(folders["nnUNet_raw"])
    with FileLock(os.path.join(root, f".{name}.lock")):
        done = os.path.join(root, f".{name}.done")
        if not os.path.exists(done):
            make()
            open(done, "w").close()


@pytest.fixture(scope="session")
def nnunet_folders(tmp_path_factory):
    root = os.path.join(shared_root(tmp_path_factory), "nnunet")
    folders = {name: os.path.join(root, name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    # In-process code (predictor, trainers) reads the same folders.
    saved = {k: os.environ.get(k) for k in folders}
    os.environ.update(folders)
    yield folders
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def raw_dataset(nnunet_folders) -> str:
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    folder = os.path.join(nnunet_folders["nnUNet_raw"], DATASET_NAME)
    made_once(nnunet_folders, "raw_dataset", lambda: write_nnunet_dataset(
        DATASET_ID, num_train=6, num_test=2, shape=SHAPE, seed=0, raw_folder=nnunet_folders["nnUNet_raw"]))
    return folder


@pytest.fixture(scope="session")
def preprocessed(nnunet_folders, raw_dataset) -> str:
    made_once(nnunet_folders, "preprocessed", lambda: run(
        ["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", CONFIGURATION, "-np", "2"], clean_env(nnunet_folders)))
    return os.path.join(nnunet_folders["nnUNet_preprocessed"], DATASET_NAME)


@pytest.fixture(scope="session")
def narrow_plans(nnunet_folders, preprocessed) -> dict:
    """The same preprocessed data under a narrow U-Net (4-16 features, a 16³ patch; ``-p
    nnUNetPlansNarrow``): for the checks whose subject does not depend on the width (the CUDA path,
    DDP synchronisation), at a fraction of the full plans' cost."""
    from nnunet_missingmod.planning import NARROW_PLANS, write_narrow_plans
    made_once(nnunet_folders, "narrow_plans", lambda: write_narrow_plans(preprocessed, CONFIGURATION))
    return load_json(os.path.join(preprocessed, f"{NARROW_PLANS}.json"))


def training_env(folders, epochs: int, **extra) -> dict:
    """A short training without nnU-Net's final validation (tests that check it pass
    ``nnUNet_missingmod_skip_final_validation=0``), whose model predicts each case once (no
    test-time mirroring: the suite predicts with --disable_tta anyway)."""
    settings = {"nnUNet_missingmod_num_epochs": epochs, "nnUNet_missingmod_iterations_per_epoch": 2,
                "nnUNet_missingmod_val_iterations_per_epoch": 1, "nnUNet_missingmod_disable_tta": 1,
                "nnUNet_missingmod_skip_final_validation": 1}
    return clean_env(folders, **{**settings, **extra})


@pytest.fixture(scope="session")
def trained_model(nnunet_folders, preprocessed) -> dict:
    """One epoch, then resumed with --c to a second: the model folder."""
    command = ["nnUNetv2_train", DATASET_ID, CONFIGURATION, "0", "-tr", TRAINER, "-device", "cpu"]

    def train():
        run(command, training_env(nnunet_folders, epochs=1))
        run(command + ["--c"], training_env(nnunet_folders, epochs=2, nnUNet_missingmod_skip_final_validation=0))
    made_once(nnunet_folders, "trained_model", train)
    return {"folder": os.path.join(nnunet_folders["nnUNet_results"], DATASET_NAME,
                                   f"{TRAINER}__nnUNetPlans__{CONFIGURATION}")}


@pytest.fixture(scope="session")
def predictor(trained_model):
    from nnunet_missingmod.inference.model import device_from_name, load_predictor

    # with nnU-Net's CPU threads, as the commands set them: tests compare its scores with theirs digit for
    # digit, and a test worker's own thread count (WORKER_THREADS) sums probabilities in another order
    return load_predictor(trained_model["folder"], folds=[0], device=device_from_name("cpu"), use_mirroring=False)


def load_script(name: str):
    """A script of benchmarks/ as a module (they are scripts, not part of the package)."""
    if os.path.join(REPO, "benchmarks") not in sys.path:
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # the scripts import their siblings
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_json(path):
    with open(path) as f:
        return json.load(f)


def training_log(fold_folder: str) -> str:
    """Every nnU-Net training log of one fold, oldest first (a resumed run writes a second one)."""
    return "".join(open(os.path.join(fold_folder, f)).read()
                   for f in sorted(os.listdir(fold_folder)) if f.startswith("training_log"))


@pytest.fixture
def single_process_augmentation(monkeypatch):
    """Augmentation in the test's own process: no workers forked from it."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")


def make_trainer(cls, preprocessed: str, fold: int = 1, dataset_json: dict | None = None, plans: dict | None = None,
                 configuration: str = CONFIGURATION):
    """A trainer built in process, as nnUNetv2_train builds it, on fold 1 by default (the commands
    train fold 0), not initialised."""
    import torch
    plans = dict(plans or load_json(os.path.join(preprocessed, "nnUNetPlans.json")), continue_training=False)
    return cls(plans, configuration, fold, dataset_json or load_json(os.path.join(preprocessed, "dataset.json")),
               torch.device("cpu"))
