"""``nnUNetv2_missingmod_study`` on a dataset the study was not written for (the suite's planned
dataset 991), run here, resumed on a "fresh machine" from its archive, and through a real one-node
SLURM cluster. The networks are the narrow plans' (4-16 features) with the whole 40x48x40 volume as
their patch, so each of an evaluation's 30 predictions is one small window: with the narrow plans'
16³ patch an evaluation took 140 s (some 80 windows a prediction), with nnU-Net's own plans 2 s a
prediction.

The SLURM test needs ``sbatch``: ``.ci/run`` starts the cluster (tests/slurm/start_local_slurm.sh)
and sets ``nnunet_missingmod_require_slurm=1``, so that in CI the test fails rather than skips.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, clean_env, load_json, run

STUDY = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_missingmod_study")
REFERENCE = "ModalityDropoutTrainer"
MATCHED = f"{REFERENCE} compute-matched"
PLANS = "nnUNetPlansNarrowWhole"


@pytest.fixture(scope="module")
def study_plans(preprocessed, narrow_plans) -> str:
    """The narrow plans with the whole volume as the patch (``-p nnUNetPlansNarrowWhole``)."""
    plans = json.loads(json.dumps(narrow_plans))
    whole = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))["configurations"][CONFIGURATION]["patch_size"]
    plans["plans_name"] = PLANS
    plans["configurations"][CONFIGURATION]["patch_size"] = whole
    with open(os.path.join(preprocessed, f"{PLANS}.json"), "w") as f:
        json.dump(plans, f, indent=1)
    return PLANS


def study_env(folders) -> dict:
    """Trainings as short as the suite's (no final validation, no test-time mirroring)."""
    return clean_env({k: v for k, v in folders.items() if k != "nnUNet_results"},
                     nnUNet_missingmod_skip_final_validation=1, nnUNet_missingmod_disable_tta=1, nnUNet_n_proc_DA=1)


def arguments(work, trainers, seeds) -> list[str]:
    return ["-d", str(DATASET_ID), "-c", CONFIGURATION, "-p", PLANS, "--work", str(work),
            "-tr", *trainers, "--seeds", *map(str, seeds), "--dedicated", "none", "--epochs", "1", "--iterations", "2",
            "-device", "cpu", "--disable_tta"]


def dice_rows(work, label: str, seed) -> list[dict]:
    kind = f"ensemble_{seed}" if "+" in str(seed) else f"seed_{seed}"
    with open(os.path.join(work, "evaluation", kind, label.replace(" ", "_"), "per_case.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local_study(nnunet_folders, study_plans, tmp_path_factory) -> dict:
    """The reference alone, one seed, run here with an archive: its work folder, archive and output."""
    folder = tmp_path_factory.mktemp("local_study")
    command = [STUDY, *arguments(folder / "study", [REFERENCE], [1]), "--archive", folder / "archive"]
    return {"work": folder / "study", "archive": folder / "archive", "command": command,
            "output": run(command, study_env(nnunet_folders)).stdout}


def test_the_study_runs_here_on_a_dataset_it_was_not_written_for(local_study, nnunet_folders):
    """Trained and evaluated over the 15 subsets of the dataset's test cases, the report written; the
    same command again trains and evaluates nothing."""
    work = local_study["work"]
    with open(work / "study.json") as f:
        state = json.load(f)
    assert state["setup"] == {"dataset": DATASET_NAME, "configuration": CONFIGURATION, "fold": 0,
                              "plans": PLANS, "epochs": 1, "iterations": 2, "mirroring": False}
    assert sorted(state["done"]) == [f"evaluate {REFERENCE} seed 1", f"train {REFERENCE} seed 1"]
    rows = dice_rows(work, REFERENCE, 1)
    assert len({r["subset"] for r in rows}) == 15 and len({r["case"] for r in rows}) == 2
    report = (work / "report.md").read_text()
    assert f"{DATASET_NAME} (2 test cases" in report and "every model 1 epochs x 2 iterations" in report
    assert "## Which trainer to use" in report and "## The data: contrast" not in report  # no synthetic preset here
    assert os.path.isfile(work / "report" / "comparison.png")

    again = run(local_study["command"], study_env(nnunet_folders)).stdout
    assert "] training " not in again and "] evaluating " not in again, again
    assert "study finished" in again


def test_a_study_resumed_on_a_fresh_machine_from_its_archive(local_study, nnunet_folders, tmp_path):
    """The same command in a new work folder sharing only the archive, which lacks the evaluation (as
    when a machine stopped after a training): the training is taken, trained again only because the
    evaluation needs its network, gives the same weights, and the evaluation and report are the same."""
    steps = [f"train {REFERENCE} seed 1", f"evaluate {REFERENCE} seed 1"]
    shutil.copytree(local_study["archive"], tmp_path / "archive")
    content = load_json(tmp_path / "archive" / "archive.json")
    assert sorted(content["steps"]) == sorted(steps) and content["steps"][steps[0]]["training"]["minutes"] > 0
    del content["steps"][steps[1]]
    with open(tmp_path / "archive" / "archive.json", "w") as f:
        json.dump(content, f)

    command = [STUDY, *arguments(tmp_path / "second", [REFERENCE], [1]), "--archive", tmp_path / "archive"]
    second = run(command, study_env(nnunet_folders)).stdout
    assert "took 1 finished step(s)" in second
    assert "trained again: the same weights as the archived training" in second, second
    evaluation = os.path.join("evaluation", "seed_1", REFERENCE)
    assert ((local_study["work"] / evaluation / "per_case.csv").read_text()
            == (tmp_path / "second" / evaluation / "per_case.csv").read_text())
    # both reports are WORK/report.md, so their figure folders (report/) are named alike
    tables = [(work / "report.md").read_text().split("\n## ", 1)[1]
              for work in (local_study["work"], tmp_path / "second")]
    assert tables[0] == tables[1]
    content = load_json(tmp_path / "archive" / "archive.json")
    assert sorted(content["steps"]) == sorted(steps)
    assert content["steps"][steps[0]]["training"]["repeats_archived_weights"] is True
    archived = sorted((tmp_path / "archive" / evaluation).glob("predictions/*/*.nii.gz"))
    assert len(archived) == 15  # a case per subset
    for path in archived:  # the second machine's predictions, which are the first's
        first = local_study["work"] / evaluation / path.relative_to(tmp_path / "archive" / evaluation)
        assert np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (path, first)))


def test_a_study_refuses_what_it_cannot_run_and_names_it(nnunet_folders, preprocessed, tmp_path):
    env = study_env(nnunet_folders)
    base = ["--work", str(tmp_path / "w"), "-device", "cpu"]
    missing_reference = run([STUDY, "-d", str(DATASET_ID), "-c", CONFIGURATION, *base, "-tr", "SMMLTrainer"], env,
                            check=False)
    assert missing_reference.returncode != 0 and "must include ModalityDropoutTrainer" in missing_reference.stderr
    unplanned = run([STUDY, "-d", str(DATASET_ID), "-c", "2d", *base, "-p", "nnUNetPlansNone"], env, check=False)
    assert unplanned.returncode != 0 and "nnUNetPlansNone.json is missing" in unplanned.stderr
    unknown = run([STUDY, "-d", "4242", "-c", CONFIGURATION, *base], env, check=False)
    assert unknown.returncode != 0 and "-d 4242" in unknown.stderr


def slurm_available() -> bool:
    if shutil.which("sbatch") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0


def wait_for_jobs(job_ids: set[str], timeout: float, logs: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        if not {j.split("_")[0] for j in queued} & job_ids:
            return
        time.sleep(3)
    texts = [open(os.path.join(logs, name)).read()[-1500:] for name in sorted(os.listdir(logs))]
    raise AssertionError(f"SLURM jobs still queued after {timeout} s:\n" + "\n---\n".join(texts))


@pytest.mark.skipif(not slurm_available() and os.environ.get("nnunet_missingmod_require_slurm") != "1",
                    reason="no SLURM here (.ci/run starts a one-node cluster: tests/slurm/start_local_slurm.sh)")
def test_the_study_runs_through_slurm(local_study, nnunet_folders, tmp_path):
    """The local study extended through SLURM by a two-network method and the compute-matched control:
    the trainings, each evaluation a 2-task job array and its merge, then the report, chained by
    afterok and run by a real slurmd; the finished reference is not submitted again, the control
    trains as many epochs as the method took time, and a second submission submits nothing."""
    assert slurm_available(), "nnunet_missingmod_require_slurm=1 but sinfo/sbatch do not answer"
    work, env = tmp_path / "study", study_env(nnunet_folders)
    shutil.copytree(local_study["work"], work)
    command = [STUDY, *arguments(work, [REFERENCE, "SMMLTrainerNoPriors"], [1]), "--run", "slurm", "--eval_parts", "2",
               "--mem", "3G"]
    dry = run(command + ["--dry_run"], env).stdout
    assert dry.count("#SBATCH --array=0-1") == 2 and dry.count("--dependency=afterok:") == 6, dry
    assert "--step 'train SMMLTrainerNoPriors seed 1'" in dry and not os.path.exists(work / "slurm" / "jobs.json")

    run(command, env)
    with open(work / "slurm" / "jobs.json") as f:
        jobs = json.load(f)
    assert sorted(jobs) == sorted(["train SMMLTrainerNoPriors seed 1", f"train {MATCHED} seed 1",
                                   *(f"{kind}evaluate {label} seed 1" for kind in ("", "merge ")
                                     for label in ("SMMLTrainerNoPriors", MATCHED)), "report"])
    wait_for_jobs({j["job_id"] for j in jobs.values()}, timeout=900, logs=str(work / "slurm" / "logs"))
    assert (work / "report.md").is_file(), os.listdir(work / "slurm" / "logs")
    with open(work / "study.json") as f:
        state = json.load(f)
    assert {step for step in jobs if step != "report" and not step.startswith("merge ")} <= set(state["done"])
    matched = state["compute_matched"]
    assert matched["matched_to"] == "SMMLTrainerNoPriors" and matched["epochs"] == max(1, round(matched["ratio"]))
    matched_log = open(os.path.join(work, "logs", f"train_{MATCHED.replace(' ', '_')}_seed_1.log")).read()
    assert f"Epoch {matched['epochs'] - 1}" in matched_log and f"Epoch {matched['epochs']}\n" not in matched_log
    for label in ("SMMLTrainerNoPriors", MATCHED):
        rows = dice_rows(work, label, 1)
        assert len({r["subset"] for r in rows}) == 15 and len({r["case"] for r in rows}) == 2  # both parts merged
    report = (work / "report.md").read_text()
    assert "## At equal compute" in report and f"| {MATCHED} ({matched['epochs']} epochs" in report
    assert "- **At equal compute**" in report

    second = run(command, env)
    assert "submitted 0" in second.stdout and "ended without finishing" not in second.stdout, second.stdout


@pytest.mark.skipif(not slurm_available() and os.environ.get("nnunet_missingmod_require_slurm") != "1",
                    reason="no SLURM here (.ci/run starts a one-node cluster: tests/slurm/start_local_slurm.sh)")
def test_a_failed_job_is_resubmitted_only_when_asked(local_study, nnunet_folders, tmp_path):
    """A finished study whose report job really fails (its setup line exits 3): the next submission
    names it and submits nothing; with --resubmit_failed a new job writes the report; then nothing
    is left to submit and nothing is called failed."""
    assert slurm_available(), "nnunet_missingmod_require_slurm=1 but sinfo/sbatch do not answer"
    work, env = tmp_path / "study", study_env(nnunet_folders)
    shutil.copytree(local_study["work"], work)
    os.remove(work / "report.md")
    command = [STUDY, *arguments(work, [REFERENCE], [1]), "--run", "slurm", "--mem", "1G"]
    logs = str(work / "slurm" / "logs")
    run(command + ["--setup", "exit 3"], env)
    failed = load_json(work / "slurm" / "jobs.json")["report"]["job_id"]
    wait_for_jobs({failed}, timeout=120, logs=logs)
    assert not (work / "report.md").exists()

    again = run(command, env).stdout
    assert "submitted 0" in again and f"report (job {failed}" in again, again
    assert load_json(work / "slurm" / "jobs.json")["report"]["job_id"] == failed
    run(command + ["--resubmit_failed"], env)
    resubmitted = load_json(work / "slurm" / "jobs.json")["report"]["job_id"]
    assert resubmitted != failed
    wait_for_jobs({resubmitted}, timeout=300, logs=logs)
    assert (work / "report.md").is_file(), os.listdir(logs)
    final = run(command, env).stdout
    assert "submitted 0" in final and "ended without finishing" not in final, final
